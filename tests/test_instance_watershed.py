"""engine.instances.watershed: decoder maps -> instances, on probability maps made from the
training targets of known label maps."""

from __future__ import annotations

import numpy as np
import pytest

from engine.instances.targets import instance_targets
from engine.instances.watershed import WatershedSettings, instances_from_maps

SIZE = 64  # maps at the decoder's own side: out_size = SIZE, so sizes are not rescaled


def _disk(centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _two_touching_disks() -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    labels[_disk((32, 21), 10.5)] = 1  # columns 11..31
    labels[_disk((32, 42), 10.5)] = 2  # columns 32..52: touching the first along 31 | 32
    return labels


def _ious(truth: np.ndarray, found: np.ndarray) -> list[float]:
    """Each true object's best IoU with a found object."""
    best = []
    for t in np.unique(truth[truth > 0]):
        a = truth == t
        best.append(
            max(
                ((a & (found == f)).sum() / (a | (found == f)).sum() for f in np.unique(found)
                 if f > 0),
                default=0.0,
            )
        )
    return best


def _run(probabilities: np.ndarray, **kwargs: object) -> np.ndarray:
    settings = WatershedSettings(**kwargs)  # type: ignore[arg-type]
    return instances_from_maps(probabilities.astype(np.float32), settings, out_size=SIZE)


def test_two_touching_disks_come_back_as_two() -> None:
    truth = _two_touching_disks()
    found = _run(instance_targets(truth))
    assert found.shape == truth.shape and found.dtype == np.int32
    assert len(np.unique(found[found > 0])) == 2
    assert all(iou > 0.8 for iou in _ious(truth, found))
    assert np.all(found[truth == 0] == 0)


def test_one_disk_is_one_object() -> None:
    truth = _disk((30, 30), 12).astype(np.int32) * 7
    found = _run(instance_targets(truth))
    assert len(np.unique(found[found > 0])) == 1
    assert _ious(truth, found)[0] > 0.8


def test_no_foreground_gives_zeros() -> None:
    found = _run(instance_targets(np.zeros((SIZE, SIZE), dtype=np.int32)))
    assert found.shape == (SIZE, SIZE) and found.dtype == np.int32
    assert not found.any()


def test_valid_mask_removes_objects_outside_it() -> None:
    truth = np.zeros((SIZE, SIZE), dtype=np.int32)
    truth[_disk((20, 14), 8)] = 1
    truth[_disk((44, 48), 8)] = 2
    valid = np.zeros((SIZE, SIZE), dtype=bool)
    valid[:, :32] = True
    settings = WatershedSettings()
    found = instances_from_maps(instance_targets(truth), settings, out_size=SIZE, valid=valid)
    assert not found[~valid].any()
    assert len(np.unique(found[found > 0])) == 1
    assert _ious(np.where(truth == 1, 1, 0), found)[0] > 0.8
    # a 0/1 mask of another dtype works the same
    again = instances_from_maps(
        instance_targets(truth), settings, out_size=SIZE, valid=valid.astype(np.uint8)
    )
    np.testing.assert_array_equal(again, found)


def _blob_with_seeds(seeds: list[tuple[slice, slice]]) -> np.ndarray:
    """A 10x40 foreground bar with low distances (0.1) only in ``seeds``, high (0.9) elsewhere."""
    maps = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    maps[1:] = 0.9
    maps[0, 10:20, 10:50] = 1.0
    for window in seeds:
        maps[1:, window[0], window[1]] = 0.1
    return maps


def test_small_seeds_are_dropped() -> None:
    big = (slice(12, 17), slice(12, 17))  # 25 px
    tiny = (slice(14, 15), slice(44, 46))  # 2 px
    maps = _blob_with_seeds([big, tiny])
    # with both seeds the bar is cut in two; with the tiny one dropped it is one object
    two = _run(maps, sigma=0.0, min_seed_pixels=1)
    assert len(np.unique(two[two > 0])) == 2
    one = _run(maps, sigma=0.0, min_seed_pixels=4)
    assert len(np.unique(one[one > 0])) == 1
    np.testing.assert_array_equal(one > 0, maps[0] > 0.5)


def test_min_seed_pixels_are_output_map_pixels() -> None:
    # a 3x3 seed at work size 64: 9 px there, 9 / 2^2 = 2.25 px of a 32-px output map
    maps = _blob_with_seeds([(slice(12, 15), slice(12, 15)), (slice(12, 17), slice(40, 45))])
    settings = WatershedSettings(sigma=0.0, min_seed_pixels=4)
    at_own_size = instances_from_maps(maps, settings, out_size=SIZE)
    assert len(np.unique(at_own_size[at_own_size > 0])) == 2
    at_half = instances_from_maps(maps, settings, out_size=SIZE // 2)
    assert len(np.unique(at_half[at_half > 0])) == 1


def test_foreground_without_a_seed_is_still_an_object() -> None:
    # a blob whose only seed is too small is an object of its own, whether or not some other
    # blob of the field has a seed (without one anywhere it used to vanish)
    lone = _blob_with_seeds([(slice(14, 15), slice(44, 46))])
    found = _run(lone, sigma=0.0, min_seed_pixels=4)
    np.testing.assert_array_equal(found > 0, lone[0] > 0.5)
    assert len(np.unique(found[found > 0])) == 1
    with_other = lone.copy()
    with_other[0, 40:50, 10:20] = 1.0
    with_other[1:, 42:47, 12:17] = 0.1  # a second blob, with a good seed
    found = _run(with_other, sigma=0.0, min_seed_pixels=4)
    assert len(np.unique(found[found > 0])) == 2
    np.testing.assert_array_equal(found > 0, with_other[0] > 0.5)


@pytest.mark.parametrize(
    "name", ["foreground_threshold", "centre_threshold", "boundary_threshold"]
)
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_thresholds_must_be_inside_0_1(name: str, value: float) -> None:
    with pytest.raises(ValueError):
        WatershedSettings(**{name: value})  # type: ignore[arg-type]


def test_settings_validation() -> None:
    for work_size in (0, 128, 300, 2048):
        with pytest.raises(ValueError):
            WatershedSettings(work_size=work_size)
    with pytest.raises(ValueError):
        WatershedSettings(sigma=-1.0)
    with pytest.raises(ValueError):
        WatershedSettings(min_seed_pixels=-1.0)
    for work_size in (256, 512, 1024):
        assert WatershedSettings(work_size=work_size).work_size == work_size


def test_settings_round_trip() -> None:
    settings = WatershedSettings(
        foreground_threshold=0.4, centre_threshold=0.3, boundary_threshold=0.6, sigma=2.0,
        min_seed_pixels=8.0, work_size=1024,
    )
    data = settings.to_dict()
    assert data == {
        "foreground_threshold": 0.4, "centre_threshold": 0.3, "boundary_threshold": 0.6,
        "sigma": 2.0, "min_seed_pixels": 8.0, "work_size": 1024,
    }
    assert WatershedSettings.from_dict(data) == settings
    # unknown keys (from a newer file) are ignored; missing ones take their defaults
    assert WatershedSettings.from_dict({**data, "future": 1}) == settings
    assert WatershedSettings.from_dict({}) == WatershedSettings()
    with pytest.raises(ValueError):
        WatershedSettings.from_dict({**data, "centre_threshold": 1.0})
