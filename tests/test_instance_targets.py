"""engine.instances.targets: the three training maps of an instance decoder, and label
downsampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.instances.targets import downsample_labels, instance_targets


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _rim(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _check_ranges(t: np.ndarray, labels: np.ndarray) -> None:
    assert t.shape == (3, *labels.shape)
    assert t.dtype == np.float32
    assert np.all((t >= 0) & (t <= 1))
    inside = labels > 0
    np.testing.assert_array_equal(t[0], inside.astype(np.float32))
    # background: foreground 0, both distances 1
    assert np.all(t[1][~inside] == 1) and np.all(t[2][~inside] == 1)


def test_disk() -> None:
    mask = _disk((21, 21), (10, 10), 6)
    labels = mask.astype(np.int32)
    t = instance_targets(labels)
    _check_ranges(t, labels)
    centre, boundary = t[1], t[2]
    # the middle is the innermost pixel: both distances 0 there, and only there
    assert centre[10, 10] == 0 and boundary[10, 10] == 0
    assert np.count_nonzero(centre[mask] == 0) == 1
    # the centre distance is 1 at the farthest pixel (6 px away) and about 1 on the rim (the
    # rim pixels are between 5 and 6 px from the middle)
    assert centre[mask].max() == pytest.approx(1.0)
    assert np.all(centre[_rim(mask)] >= 5 / 6 - 1e-6)
    # the boundary distance is 1 on the rim and below 1 inside it
    assert np.all(boundary[_rim(mask)] == 1)
    assert np.all(boundary[mask & ~_rim(mask)] < 1)
    # both grow away from the middle along a radius
    assert np.all(np.diff(centre[10, 10:17]) > 0)
    assert np.all(np.diff(boundary[10, 10:17]) > 0)


def test_touching_objects_are_normalised_each_on_its_own() -> None:
    labels = np.zeros((14, 18), dtype=np.int32)
    labels[2:7, 2:7] = 3  # A: 5x5, innermost pixel (4, 4)
    labels[2:11, 7:16] = 8  # B: 9x9, touching A along columns 6 | 7, innermost pixel (6, 11)
    t = instance_targets(labels)
    _check_ranges(t, labels)
    a, b = labels == 3, labels == 8
    for mask, middle in ((a, (4, 4)), (b, (6, 11))):
        assert t[1][mask].min() == 0 and t[1][middle] == 0
        assert t[1][mask].max() == pytest.approx(1.0)  # each at its own corners
        assert t[2][middle] == 0
        assert t[2][mask].max() == 1
    # A's corner (2, 2) is sqrt(8) from its middle: centre distance 1, not sqrt(8) / sqrt(32)
    assert t[1][2, 2] == pytest.approx(1.0)
    # along the seam, each side is on its own object's boundary
    assert np.all(t[2][2:7, 6] == 1) and np.all(t[2][2:11, 7] == 1)
    # A's maps are the same with B gone
    alone = instance_targets(np.where(a, 3, 0).astype(np.int32))
    np.testing.assert_array_equal(t[:, a], alone[:, a])


def test_one_pixel_object() -> None:
    labels = np.zeros((11, 11), dtype=np.int32)
    labels[5, 5] = 1
    labels[0, 0] = 2  # in the corner too
    t = instance_targets(labels)
    _check_ranges(t, labels)
    for y, x in ((5, 5), (0, 0)):
        assert t[:, y, x].tolist() == [1.0, 0.0, 0.0]


def test_ring_centre_is_inside_the_ring() -> None:
    ring = _disk((31, 31), (15, 15), 10) & ~_disk((31, 31), (15, 15), 6)
    labels = ring.astype(np.int32) * 4
    t = instance_targets(labels)
    _check_ranges(t, labels)
    # the one pixel of centre distance 0 lies on the ring, not in the hole (the centroid would)
    zero = (t[1] == 0) & ring
    assert np.count_nonzero(zero) == 1
    y, x = np.argwhere(zero)[0]
    assert ring[y, x]
    assert t[2][y, x] == 0
    # the hole is background (0 / 1 / 1), and the ring's inner edge is boundary
    hole = _disk((31, 31), (15, 15), 6)
    assert np.all(t[0][hole] == 0) and np.all(t[1][hole] == 1)
    inner_edge = ring & ndimage.binary_dilation(hole)
    assert np.all(t[2][inner_edge & _rim(ring)] == 1)
    assert t[1][ring].max() == pytest.approx(1.0)


def test_empty_map() -> None:
    t = instance_targets(np.zeros((6, 7), dtype=np.int32))
    assert t.shape == (3, 6, 7) and t.dtype == np.float32
    assert np.all(t[0] == 0) and np.all(t[1:] == 1)


def test_targets_need_a_2d_map() -> None:
    with pytest.raises(ValueError):
        instance_targets(np.zeros((2, 4, 4), dtype=np.int32))


def test_downsample_labels() -> None:
    labels = np.arange(64, dtype=np.int64).reshape(8, 8)
    small = downsample_labels(labels, 4)
    assert small.shape == (4, 4) and small.dtype == np.int32
    # the label at each 2x2 block's centre pixel (offset 1 inside the block)
    np.testing.assert_array_equal(small, labels[1::2, 1::2])
    np.testing.assert_array_equal(downsample_labels(labels, 8), labels)
    # a non-square map: steps 4 down, 2 across
    tall = np.arange(128).reshape(16, 8)
    np.testing.assert_array_equal(downsample_labels(tall, 4), tall[2::4, 1::2])
    with pytest.raises(ValueError):
        downsample_labels(np.zeros((10, 8), dtype=np.int32), 4)
