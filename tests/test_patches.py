"""Concentric HR / LR fields and magnification selection (engine.patches)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile
from shapely.geometry import Polygon, box

from engine import open_slide
from engine.patches import (
    PATCH_SIZE,
    Field,
    choose_field,
    make_field,
    rasterize,
    read_field,
)
from engine.slides import Slide


def halve(image: np.ndarray) -> np.ndarray:
    """2x2 area average, rounded to nearest (how pyramids and synthetic levels are made)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    total = image[: 2 * h, : 2 * w].astype(np.int64).reshape(h, 2, w, 2, -1).sum(axis=(1, 3))
    return ((total + 2) // 4).astype(np.uint8).reshape(h, w, *image.shape[2:])


def tissue(height: int, width: int, seed: int) -> np.ndarray:
    """Random non-white content (values < 250), so white padding is unambiguous."""
    return np.random.default_rng(seed).integers(0, 250, (height, width, 3), dtype=np.uint8)


def fake_slide(magnification: float | None) -> Any:
    """What the field selection reads from a slide: its level-0 magnification."""
    return SimpleNamespace(magnification=magnification, dimensions=(100_000, 100_000))


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A 20x (0.5 um/px) three-level tiled TIFF that OpenSlide reads as a pyramid."""
    arrays = [tissue(2048, 2560, seed=3)]
    arrays += [halve(arrays[-1])]
    arrays += [halve(arrays[-1])]
    path = tmp_path_factory.mktemp("pyramid") / "pyramid.tiff"
    with tifffile.TiffWriter(path) as tif:
        for index, array in enumerate(arrays):
            tif.write(
                array,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if index else 0,
                resolution=(2e4, 2e4),
                resolutionunit="CENTIMETER",
            )
    return path, arrays


@pytest.fixture(scope="module")
def flat_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A single-level image without resolution: magnification unknown."""
    image = tissue(1500, 1800, seed=5)
    path = tmp_path_factory.mktemp("flat") / "flat.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    return path, image


# -- geometry of a field ----------------------------------------------------------------------


def test_field_origins_and_transforms() -> None:
    field = Field(centre=(5000.0, 3000.0), hr_downsample=4.0, hr_magnification=10.0)
    assert field.lr_downsample == 8.0
    assert field.lr_magnification == 5.0
    assert field.hr_origin == (5000 - 2048, 3000 - 2048)
    assert field.lr_origin == (5000 - 4096, 3000 - 4096)
    assert field.hr_bounds == (2952.0, 952.0, 7048.0, 5048.0)
    points = np.array([[5000.0, 3000.0], [2952.0, 952.0], [7048.0, 5048.0], [1234.5, 678.9]])
    hr = field.level0_to_hr(points)
    assert np.allclose(hr[:3], [[512, 512], [0, 0], [1024, 1024]])
    assert np.allclose(field.hr_to_level0(hr), points)
    assert np.allclose(field.lr_to_level0(field.level0_to_lr(points)), points)
    assert np.allclose(field.hr_to_lr(hr), field.level0_to_lr(points))
    assert np.allclose(field.lr_to_hr(field.hr_to_lr(hr)), hr)
    assert field.level0_to_hr([5000.0, 3000.0]).shape == (2,)


@pytest.mark.parametrize("hr_downsample", [1.0, 2.0, 4.0, 3.3])
def test_a_box_maps_to_half_plus_256(hr_downsample: float) -> None:
    field = Field(centre=(4096.0, 2048.0), hr_downsample=hr_downsample, hr_magnification=None)
    level0_box = np.array([4000.0, 1900.0, 4400.0, 2100.0])
    hr_box = field.box_level0_to_hr(level0_box)
    lr_box = field.box_level0_to_lr(level0_box)
    assert np.allclose(lr_box, hr_box / 2 + 256)
    assert np.allclose(field.hr_to_lr(hr_box.reshape(2, 2)).reshape(4), lr_box)


def test_field_key_identifies_the_pixels() -> None:
    a = Field((100.0, 200.0), 2.0, 10.0)
    assert a.key == Field((100.0, 200.0), 2.0, None).key
    assert a.key != Field((100.0, 202.0), 2.0, 10.0).key
    assert a.key != Field((100.0, 200.0), 4.0, 10.0).key
    assert len({a.key, Field((100.0, 200.0), 2.0, 10.0).key}) == 1
    with pytest.raises(ValueError):
        Field((0.0, 0.0), 0.0, None)


# -- pixel content ----------------------------------------------------------------------------


def test_hr_patch_is_exactly_lr_centre_on_a_pyramid(pyramid: tuple[Path, list[np.ndarray]]) -> None:
    path, arrays = pyramid
    with open_slide(path) as slide:
        assert slide.level_count == 3
        field = make_field(slide, (1280.0, 1024.0))  # 10x on a 20x slide: HR at level 1
        assert field.hr_downsample == 2.0 and field.hr_magnification == 10.0
        hr, lr = read_field(slide, field)
    assert hr.shape == lr.shape == (PATCH_SIZE, PATCH_SIZE, 3)
    assert hr.dtype == lr.dtype == np.uint8
    assert np.array_equal(halve(hr), lr[256:768, 256:768])
    # and the pixels are the slide's own: HR = level 1 around the centre, LR = level 2
    assert np.array_equal(hr, arrays[1][0:1024, 128:1152])
    assert np.array_equal(lr[256:768, 256:768], arrays[2][0:512, 64:576])


def test_hr_patch_is_exactly_lr_centre_on_a_single_level_slide(
    flat_slide: tuple[Path, np.ndarray],
) -> None:
    path, image = flat_slide
    with open_slide(path) as slide:
        assert slide.magnification is None
        field = make_field(slide, (900.0, 750.0), downsample=1.0)
        hr, lr = read_field(slide, field)
    assert field.hr_magnification is None
    assert np.array_equal(halve(hr), lr[256:768, 256:768])
    assert np.array_equal(hr[:1024, :1024], _crop_white(image, field.hr_origin, 1024))


def test_level0_to_hr_matches_pixel_content(flat_slide: tuple[Path, np.ndarray]) -> None:
    path, image = flat_slide
    with open_slide(path) as slide:
        field = make_field(slide, (700.0, 700.0), downsample=1.0)
        hr, lr = read_field(slide, field)
    rng = np.random.default_rng(0)
    for x, y in rng.integers(250, 1150, (20, 2)):
        col, row = np.floor(field.level0_to_hr([x + 0.5, y + 0.5])).astype(int)
        assert np.array_equal(hr[row, col], image[y, x])
    # LR pixel of a 2x2 level-0 block (the field is on the LR grid, so blocks line up)
    x, y = 600, 800
    col, row = np.floor(field.level0_to_lr([x + 1.0, y + 1.0])).astype(int)
    assert np.array_equal(lr[row, col], halve(image[y : y + 2, x : x + 2])[0, 0])


def test_field_at_a_corner_is_padded_white(pyramid: tuple[Path, list[np.ndarray]]) -> None:
    path, arrays = pyramid
    with open_slide(path) as slide:
        field = make_field(slide, (0.0, 0.0))
        hr, lr = read_field(slide, field)
    assert (hr[:512] == 255).all() and (hr[:, :512] == 255).all()
    assert np.array_equal(hr[512:, 512:], arrays[1][:512, :512])
    assert (lr[:512] == 255).all() and (lr[:, :512] == 255).all()
    assert np.array_equal(lr[512:, 512:], arrays[2][:512, :512])
    assert (hr[512:, 512:] < 250).all()


def test_field_past_the_far_edge_is_padded_white(flat_slide: tuple[Path, np.ndarray]) -> None:
    path, image = flat_slide
    with open_slide(path) as slide:
        field = make_field(slide, (1800.0, 1500.0), downsample=1.0)
        hr, lr = read_field(slide, field)
    assert (hr[512:] == 255).all() and (hr[:, 512:] == 255).all()
    assert np.array_equal(hr[:512, :512], image[-512:, -512:])
    assert (lr[512:] == 255).all()


def test_read_field_on_the_real_svs(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:
        field = choose_field(slide, (1000, 1200, 1300, 1500))
        assert field.hr_magnification == 10.0 and field.hr_downsample == 2.0
        hr, lr = read_field(slide, field)
    assert np.array_equal(halve(hr), lr[256:768, 256:768])
    assert hr.std() > 5


# -- magnification selection ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mpp", "magnification", "hr_downsample"),
    [(0.25, 40.0, 4.0), (0.5, 20.0, 2.0), (0.2431, 41.14, 4.0), (0.499, 20.04, 2.0)],
)
def test_magnification_from_mpp(
    tmp_path: Path, mpp: float, magnification: float, hr_downsample: float
) -> None:
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path,
        tissue(64, 64, seed=1),
        photometric="rgb",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert slide.magnification == pytest.approx(magnification, abs=0.01)
        field = make_field(slide, (32.0, 32.0))
    assert field.hr_downsample == hr_downsample  # nominal: the nearest power of two
    assert field.hr_magnification == 10.0


def test_unknown_magnification_uses_the_setting() -> None:
    slide = fake_slide(None)
    assert make_field(slide, (0, 0)).hr_downsample == 4.0
    assert make_field(slide, (0, 0), default_magnification=20.0).hr_downsample == 2.0
    assert make_field(slide, (0, 0), 5.0, default_magnification=20.0).hr_downsample == 4.0
    assert make_field(slide, (0, 0)).hr_magnification is None
    assert make_field(fake_slide(40.0), (0, 0), 20.0).hr_downsample == 2.0
    assert make_field(fake_slide(30.0), (0, 0)).hr_downsample == 3.0  # not near a power of two
    with pytest.raises(ValueError):
        make_field(slide, (0, 0), 10.0, downsample=2.0)


def test_centre_lands_on_the_lr_grid() -> None:
    field = make_field(fake_slide(40.0), (1003.0, 2013.0))
    assert field.centre == (1000.0, 2016.0)  # multiples of the LR downsample (8)
    assert field.hr_origin[0] % 4 == 0 and field.lr_origin[0] % 8 == 0


def test_fixed_protocol_ignores_object_size() -> None:
    slide = fake_slide(40.0)
    for bbox in [(0, 0, 30, 30), (0, 0, 2000, 2000), (0, 0, 20000, 9000)]:
        field = choose_field(slide, bbox, adaptive=False)
        assert field.hr_downsample == 4.0 and field.hr_magnification == 10.0
        assert field.centre == make_field(slide, ((bbox[0] + bbox[2]) / 2, bbox[3] / 2)).centre


def test_adaptive_steps_down_for_a_large_object() -> None:
    slide = fake_slide(40.0)
    # 3000 level-0 px = 750 HR px at 10x: fits with a margin, stays at 10x
    assert choose_field(slide, (0, 0, 3000, 1000)).hr_magnification == 10.0
    # 5000 px = 1250 HR px at 10x: does not fit -> 5x (625 px)
    field = choose_field(slide, (0, 0, 5000, 1000))
    assert field.hr_magnification == 5.0 and field.hr_downsample == 8.0
    big = choose_field(slide, (0, 0, 40000, 30000))
    assert big.hr_magnification == 0.625
    assert 40000 / big.hr_downsample <= 0.8 * PATCH_SIZE


def test_adaptive_steps_up_for_a_nucleus_but_never_past_level_0() -> None:
    nucleus = (1000, 1000, 1032, 1030)  # ~8 um at 0.25 um/px: 8 HR px at 10x
    field = choose_field(fake_slide(40.0), nucleus)
    assert field.hr_downsample == 1.0 and field.hr_magnification == 40.0
    gland = (0, 0, 160, 160)  # 40 px at 10x -> 20x (80 px) is enough
    assert choose_field(fake_slide(40.0), gland).hr_magnification == 20.0
    on_20x = choose_field(fake_slide(20.04), nucleus)
    assert on_20x.hr_downsample == 1.0 and on_20x.hr_magnification == 20.0
    on_10x = choose_field(fake_slide(10.0), nucleus)
    assert on_10x.hr_downsample == 1.0
    # a lone point has no size: the working magnification is kept
    assert choose_field(fake_slide(40.0), (500, 500, 500, 500)).hr_downsample == 4.0


def test_choose_field_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="box"):
        choose_field(fake_slide(40.0), (10, 10, 0, 0))
    with pytest.raises(ValueError, match="box"):
        choose_field(fake_slide(40.0), (0, 0, 1))


# -- targets ----------------------------------------------------------------------------------


def test_rasterize_hr_and_lr_targets() -> None:
    field = Field(centre=(4096.0, 4096.0), hr_downsample=2.0, hr_magnification=10.0)
    outer = box(4096 - 400, 4096 - 200, 4096 + 400, 4096 + 200)
    hole = box(4096 - 40, 4096 - 40, 4096 + 40, 4096 + 40)
    shape = Polygon(outer.exterior.coords, [hole.exterior.coords])
    hr = rasterize(shape, field, "hr")
    lr = rasterize(shape, field, "lr")
    assert hr.shape == lr.shape == (PATCH_SIZE, PATCH_SIZE) and hr.dtype == bool
    expected = np.zeros((PATCH_SIZE, PATCH_SIZE), dtype=bool)
    expected[412:612, 312:712] = True
    expected[492:532, 492:532] = False
    assert np.array_equal(hr, expected)
    assert hr.sum() == shape.area / 4
    # level-0 edges on the LR grid: the LR target is the HR target halved
    assert np.array_equal(lr[256:768, 256:768], halve(hr[..., None].astype(np.uint8))[..., 0] > 0)
    assert lr.sum() == shape.area / 16
    with pytest.raises(ValueError, match="which"):
        rasterize(shape, field, "mid")  # type: ignore[arg-type]


def _crop_white(image: np.ndarray, origin: tuple[float, float], size: int) -> np.ndarray:
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    x0, y0 = int(origin[0]), int(origin[1])
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def test_slide_type_is_what_the_fields_use(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:
        assert isinstance(slide, Slide)
        assert make_field(slide, (100.0, 100.0)).hr_magnification == 10.0
