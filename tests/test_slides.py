"""Slides and plain images behind one interface (engine.slides)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine import SlideError, open_slide
from engine.slides import Slide


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Reference area average (rounded to nearest) of an (H, W, 3) uint8 image."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].astype(np.int64)
    total = blocks.reshape(h, factor, w, factor, 3).sum(axis=(1, 3))
    n = factor * factor
    return ((total + n // 2) // n).astype(np.uint8)


def write_pyramid(
    path: Path, level0: np.ndarray, levels: int, mpp: float | None
) -> list[np.ndarray]:
    """A tiled pyramidal TIFF OpenSlide reads as multi-level (reduced levels: subfiletype=1)."""
    arrays = [level0]
    for _ in range(levels - 1):
        arrays.append(block_mean(arrays[-1], 2))
    extra = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for index, array in enumerate(arrays):
            tif.write(
                array,
                tile=(128, 128),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if index else 0,
                **extra,
            )
    return arrays


def count_backend_reads(slide: Slide) -> Callable[[], int]:
    calls = []
    original = slide._backend.read

    def counting(*args: object) -> np.ndarray:
        calls.append(args)
        return original(*args)  # type: ignore[arg-type]

    slide._backend.read = counting  # type: ignore[method-assign]
    return lambda: len(calls)


@pytest.fixture
def slides_dir(test_data: Path) -> Path:
    return test_data / "slides"


@pytest.fixture
def random_image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (300, 420, 3), dtype=np.uint8)


# -- real slides ------------------------------------------------------------------------------


def test_bundled_svs(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.mpp is not None
        assert slide.mpp[0] == pytest.approx(0.499)
        assert slide.objective_power == 20.0
        assert slide.magnification == pytest.approx(10 / 0.499)
        assert slide.properties["aperio.AppMag"] == "20"
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.associated_images["label"].shape[2] == 3
        region = slide.read_region((1000, 1000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        assert region.std() > 5  # tissue, not blank


def test_bundled_svs_edges_are_white(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:
        region = slide.read_region((-10, -20), 0, (40, 40))
        assert (region[:20] == 255).all()
        assert (region[:, :10] == 255).all()
        assert not (region[20:, 10:] == 255).all()
        assert (slide.read_region((5000, 5000), 0, (8, 8)) == 255).all()
        scaled = slide.read_scaled((2220 - 100, 0), 4.0, (50, 10))
        assert (scaled[:, 26:] == 255).all() and not (scaled[:, :24] == 255).all()


def test_bundled_svs_scaled_and_thumbnail(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:
        level0 = slide.read_region((400, 600), 0, (256, 256))
        halved = slide.read_scaled((400, 600), 2.0, (128, 128))
        assert np.array_equal(halved, block_mean(level0, 2))
        thumb = slide.get_thumbnail((300, 300))
        assert thumb.shape[0] == 300 and thumb.shape[1] == round(2220 * 300 / 2967)


@pytest.mark.parametrize(
    ("name", "vendor", "levels", "mpp"),
    [
        ("small.svs", "aperio", 1, 0.499),
        ("boxes.tiff", "generic-tiff", 4, None),  # 72-dpi tags are not a microscope's
        ("small_HE_levels.tiff", "generic-tiff", 4, None),
        ("boxes_0.dcm", "dicom", 1, 0.499),
    ],
)
def test_fixture_slides(slides_dir: Path, name: str, vendor: str, levels: int, mpp: float) -> None:
    with open_slide(slides_dir / name) as slide:
        assert slide.vendor == vendor
        assert slide.level_count == levels
        assert slide.mpp is None if mpp is None else slide.mpp[0] == pytest.approx(mpp)
        width, height = slide.dimensions
        full = slide.read_region((0, 0), 0, (width, height))
        assert full.shape == (height, width, 3)
        assert slide.get_thumbnail((8, 8)).shape[:2] in ((8, 8), (7, 8), (8, 7))


def test_multi_level_fixture_uses_levels(slides_dir: Path) -> None:
    with open_slide(slides_dir / "boxes.tiff") as slide:
        assert slide.level_dimensions[1] == (150, 125)
        assert slide.best_level_for_downsample(1.5) == 0
        assert slide.best_level_for_downsample(2.0) == 1
        assert slide.best_level_for_downsample(5.0) == 2
        assert slide.best_level_for_downsample(1000.0) == 3
        assert slide.best_level_for_downsample(0.25) == 0
        level1 = slide.read_region((0, 0), 1, (150, 125))
        assert np.array_equal(slide.read_scaled((0, 0), 2.0, (150, 125)), level1)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unreadable.svs", "Bogus marker length"),
        ("unopenable.tiff", "52479"),
    ],
)
def test_corrupt_slides_raise_slide_error(slides_dir: Path, name: str, reason: str) -> None:
    path = slides_dir / name
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)
    assert info.value.path == path


def test_unsupported_files_raise_slide_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cases = {
        text: "not a slide or image",
        empty: "empty",
        truncated: "not a slide or image",
        tmp_path / "missing.svs": "no such file",
        tmp_path: "folder",
    }
    for path, reason in cases.items():
        with pytest.raises(SlideError) as info:
            open_slide(path)
        message = str(info.value)
        assert str(path) in message and reason in message, message


def test_closed_slide_and_bad_arguments(sample_slide: Path) -> None:
    slide = open_slide(sample_slide)
    with pytest.raises(ValueError, match="level"):
        slide.read_region((0, 0), 1, (4, 4))
    with pytest.raises(ValueError, match="downsample"):
        slide.read_scaled((0, 0), 0.0, (4, 4))
    with pytest.raises(ValueError, match="size"):
        slide.read_region((0, 0), 0, (-1, 4))
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))


def test_read_error_after_open_is_a_slide_error(sample_slide: Path) -> None:
    with open_slide(sample_slide) as slide:

        def broken(*args: object) -> np.ndarray:
            raise RuntimeError("disk went away")

        slide._backend.read = broken  # type: ignore[method-assign]
        with pytest.raises(SlideError, match="disk went away") as info:
            slide.read_region((0, 0), 0, (4, 4))
        assert info.value.path == sample_slide


# -- synthetic pyramids -----------------------------------------------------------------------


def test_synthetic_pyramid_is_multi_level(tmp_path: Path) -> None:
    level0 = np.random.default_rng(1).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    path = tmp_path / "pyramid.tiff"
    arrays = write_pyramid(path, level0, levels=3, mpp=0.25)
    with open_slide(path) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.level_count == 3
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.magnification == pytest.approx(40.0)
        assert np.array_equal(slide.read_region((0, 0), 0, (900, 700)), arrays[0])
        assert np.array_equal(slide.read_region((8, 4), 1, (100, 60)), arrays[1][2:62, 4:104])
        # An aligned read_scaled is an exact copy of the matching level.
        assert np.array_equal(slide.read_scaled((16, 32), 4.0, (50, 40)), arrays[2][8:48, 4:54])
        # Coarser than the pyramid: synthetic levels over the coarsest real one.
        expected = block_mean(arrays[2], 2)
        assert np.array_equal(slide.read_scaled((0, 0), 8.0, (112, 87)), expected)


def test_single_level_slide_serves_low_magnifications_from_cache(
    tmp_path: Path, random_image: np.ndarray
) -> None:
    path = tmp_path / "flat.tiff"
    tifffile.imwrite(path, random_image, photometric="rgb")
    with open_slide(path) as slide:
        assert slide.level_count == 1
        reads = count_backend_reads(slide)
        first = slide.read_scaled((0, 0), 4.0, (105, 75))
        # Synthetic levels are successive 2x2 averages (each rounded to nearest).
        quarter = block_mean(block_mean(random_image, 2), 2)
        assert np.array_equal(first, quarter)
        after_first = reads()
        assert after_first > 0
        second = slide.read_scaled((0, 0), 4.0, (105, 75))
        assert np.array_equal(first, second)
        assert reads() == after_first  # served from the cache
        # Overlapping reads and a coarser level build on the cached tiles.
        slide.read_scaled((40, 20), 4.0, (30, 30))
        eighth = slide.read_scaled((0, 0), 8.0, (52, 37))
        assert reads() == after_first
        assert np.array_equal(eighth, block_mean(quarter, 2))


def test_cache_is_memory_bounded(tmp_path: Path, random_image: np.ndarray) -> None:
    path = tmp_path / "flat.png"
    Image.fromarray(random_image).save(path)
    with open_slide(path) as slide:
        slide._cache.max_bytes = 1
        slide.read_scaled((0, 0), 2.0, (210, 150))
        slide.read_scaled((0, 0), 8.0, (52, 37))
        assert len(slide._cache) == 1


def test_read_scaled_resamples_unaligned_reads(tmp_path: Path) -> None:
    """Fractional locations and downsamples: right size, right place, smooth content."""
    ramp = np.zeros((200, 300, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(300, dtype=np.uint8)[None, :] // 2  # red rises with x
    ramp[..., 1] = 100
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    with open_slide(path) as slide:
        out = slide.read_scaled((10.5, 20.25), 1.5, (100, 80))
        assert out.shape == (80, 100, 3)
        assert (out[..., 1] == 100).all()
        centre_x = 10.5 + (np.arange(100) + 0.5) * 1.5
        assert np.abs(out[40, :, 0].astype(float) - (centre_x - 0.5) / 2).max() <= 1.0
        up = slide.read_scaled((100.0, 50.0), 0.25, (40, 8))
        assert up.shape == (8, 40, 3)
        up_x = 100 + (np.arange(40) + 0.5) * 0.25
        assert np.abs(up[4, 2:-2, 0].astype(float) - (up_x[2:-2] - 0.5) / 2).max() <= 1.0


# -- plain images -----------------------------------------------------------------------------


def test_png_with_physical_resolution(tmp_path: Path, random_image: np.ndarray) -> None:
    path = tmp_path / "crop.png"
    Image.fromarray(random_image).save(path, dpi=(25400 / 0.5, 25400 / 0.5))
    with open_slide(path) as slide:
        assert slide.vendor == "image"
        assert slide.dimensions == (420, 300)
        assert slide.mpp == pytest.approx((0.5, 0.5), rel=1e-3)
        assert slide.magnification == pytest.approx(20.0, rel=1e-3)
        assert np.array_equal(slide.read_region((0, 0), 0, (420, 300)), random_image)
        assert np.array_equal(slide.read_region((-5, 0), 0, (10, 2))[:, 5:], random_image[:2, :5])


def test_screen_resolution_is_not_a_microscope_resolution(
    tmp_path: Path, random_image: np.ndarray
) -> None:
    path = tmp_path / "screenshot.png"
    Image.fromarray(random_image).save(path, dpi=(72, 72))
    with open_slide(path) as slide:
        assert slide.mpp is None
        assert slide.magnification is None


def test_jpeg_and_greyscale_and_transparency(tmp_path: Path, random_image: np.ndarray) -> None:
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(random_image).save(jpeg, quality=95)
    with open_slide(jpeg) as slide:
        assert slide.vendor == "image" and slide.dimensions == (420, 300)
        assert slide.read_region((0, 0), 0, (420, 300)).shape == (300, 420, 3)

    grey = tmp_path / "grey.png"
    Image.fromarray(random_image[..., 0]).save(grey)
    with open_slide(grey) as slide:
        region = slide.read_region((0, 0), 0, (4, 4))
        assert np.array_equal(region, np.repeat(random_image[:4, :4, :1], 3, axis=2))

    rgba = np.dstack([random_image, np.full(random_image.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    transparent = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(transparent)
    with open_slide(transparent) as slide:
        region = slide.read_region((0, 0), 0, (20, 20))
        assert (region[:10, :10] == 255).all()
        assert np.array_equal(region[10:, 10:], random_image[10:20, 10:20])


def test_stripped_tiff_goes_through_tifffile(tmp_path: Path, random_image: np.ndarray) -> None:
    path = tmp_path / "export.tif"
    tifffile.imwrite(
        path,
        random_image,
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert slide.vendor == "image"
        assert slide.properties["image.backend"] == "tifffile"
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.magnification == pytest.approx(40.0)
        assert np.array_equal(
            slide.read_region((100, 50), 0, (64, 32)), random_image[50:82, 100:164]
        )


def test_sixteen_bit_tiff(tmp_path: Path) -> None:
    image = (np.arange(64 * 64 * 3, dtype=np.uint16).reshape(64, 64, 3) * 97) % 65535
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, image.astype(np.uint16), photometric="rgb", compression="zlib")
    with open_slide(path) as slide:
        region = slide.read_region((0, 0), 0, (64, 64))
        assert np.array_equal(region, (image >> 8).astype(np.uint8))


def test_slide_copy_keeps_working(tmp_path: Path, slides_dir: Path) -> None:
    """A slide with an odd name (spaces, non-ASCII) opens like any other."""
    copy = tmp_path / "biopsy 7 – H&E.svs"
    shutil.copy(slides_dir / "small.svs", copy)
    with open_slide(copy) as slide:
        assert slide.dimensions == (16, 16)
        assert slide.path == copy


def test_a_nearly_exact_level_is_copied_not_resampled() -> None:
    """A scanner's 2.0005x level answers a 2x read (and a 4x one through its cached 2x2
    averages) by copying its pixels, placed to the nearest one, instead of resizing."""
    from pathlib import Path

    import numpy as np

    from engine.slides import LEVEL_SNAP, Slide, _ArrayBackend

    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 255, (2001, 2001, 3), dtype=np.uint8)
    level1 = rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)  # downsample 2.001
    slide = Slide(Path("nearly.tif"), _ArrayBackend([level0, level1], {}, None))
    ds = slide.level_downsamples[1]
    assert 1.0 < ds / 2.0 <= 1.0 + LEVEL_SNAP
    out = slide.read_scaled((400.0, 600.0), 2.0, (300, 200))
    col, row = round(400 / ds), round(600 / ds)
    # a copy of the level's pixels, within a pixel of the exact place
    assert any(
        np.array_equal(out, level1[row + dy : row + dy + 200, col + dx : col + dx + 300])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    # 4x: the level's 2x2 averages, cached, copied
    out4 = slide.read_scaled((0.0, 0.0), 4.0, (64, 64))
    block = level1[:128, :128].astype(np.uint16)
    halved = (
        (block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2] + 2) // 4
    ).astype(np.uint8)
    assert np.array_equal(out4, halved)
    # an exact level still resamples a fractional location (unchanged)
    exact = Slide(Path("exact.tif"), _ArrayBackend([level0[:2000, :2000], level1], {}, None))
    assert exact.level_downsamples[1] == 2.0
    assert exact.read_scaled((1.0, 0.0), 2.0, (10, 10)).shape == (10, 10, 3)
