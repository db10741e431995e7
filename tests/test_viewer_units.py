"""Viewer building blocks without a window: display levels, tile grid, tile cache, scale bar."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_viewer_support import FakeSlide, write_pyramid

from app.viewer.levels import (
    MAX_LEVEL_RATIO,
    TileGrid,
    build_display_levels,
    choose_level,
    read_tile,
)
from app.viewer.scale_bar import nice_scale_length
from app.viewer.tile_cache import TileCache


def test_single_level_slide_gets_synthetic_levels_down_to_one_tile() -> None:
    slide = FakeSlide(size=(100_000, 80_000), downsamples=(1.0,))
    levels = build_display_levels(slide, tile_size=256)
    assert levels[0].slide_level == 0 and levels[0].downsample == 1.0
    assert all(level.synthetic for level in levels[1:])
    downsamples = [level.downsample for level in levels]
    assert all(b / a == 2.0 for a, b in itertools.pairwise(downsamples))
    assert max(levels[-1].width, levels[-1].height) <= 256
    assert max(levels[-2].width, levels[-2].height) > 256
    assert slide.reads == []  # planning levels reads no pixels


def test_real_levels_are_kept_and_large_gaps_filled() -> None:
    slide = FakeSlide(size=(64_000, 32_000), downsamples=(1.0, 4.0, 64.0))
    levels = build_display_levels(slide, tile_size=512)
    real = [level.downsample for level in levels if not level.synthetic]
    assert real == [1.0, 4.0, 64.0]
    ratios = [b.downsample / a.downsample for a, b in itertools.pairwise(levels)]
    assert max(ratios) <= MAX_LEVEL_RATIO
    assert [level.slide_level for level in levels if not level.synthetic] == [0, 1, 2]


def test_choose_level_is_finest_level_not_finer_than_the_view() -> None:
    slide = FakeSlide(size=(40_000, 40_000), downsamples=(1.0, 4.0, 16.0))
    levels = build_display_levels(slide, tile_size=256)
    ds = [level.downsample for level in levels]
    for view_ds in (0.125, 0.9, 1.0, 3.99, 4.0, 7.0, 16.0, 31.9, 1000.0):
        index = choose_level(levels, view_ds)
        assert ds[index] <= max(view_ds, 1.0)
        finer_ok = [i for i, d in enumerate(ds) if d <= view_ds]
        assert index == (max(finer_ok) if finer_ok else 0)


def test_tile_grid_covers_level_exactly() -> None:
    slide = FakeSlide(size=(1000, 700), downsamples=(1.0, 4.0))
    level1 = next(lv for lv in build_display_levels(slide, 256) if lv.slide_level == 1)
    grid = TileGrid(level1, 256)  # 250 x 175
    assert (grid.columns, grid.rows) == (1, 1)
    grid0 = TileGrid(build_display_levels(slide, 256)[0], 256)
    assert (grid0.columns, grid0.rows) == (4, 3)
    assert grid0.tile_size(3, 2) == (1000 - 768, 700 - 512)
    total = sum(
        grid0.tile_size(c, r)[0] * grid0.tile_size(c, r)[1]
        for c in range(grid0.columns)
        for r in range(grid0.rows)
    )
    assert total == 1000 * 700
    assert sorted(grid0.tiles_in(300, 10, 520, 20)) == [(1, 0), (2, 0)]
    assert list(grid0.tiles_in(-500, -500, -1, -1)) == []
    assert list(grid0.tiles_in(5000, 5000, 6000, 6000)) == []


def test_read_tile_uses_slide_level_or_read_scaled(tmp_path) -> None:
    import engine

    path = write_pyramid(tmp_path / "p.tif", (2048, 1536), downsamples=(1, 4))
    with engine.open_slide(path) as slide:
        levels = build_display_levels(slide, 256)
        level1 = next(i for i, level in enumerate(levels) if level.slide_level == 1)
        tile = read_tile(slide, levels[level1], 256, 1, 0)
        expected = slide.read_region((256 * 4, 0), 1, (256, 256))
        np.testing.assert_array_equal(tile, expected)
        synthetic = next(i for i, level in enumerate(levels) if level.synthetic)
        ds = levels[synthetic].downsample
        tile = read_tile(slide, levels[synthetic], 256, 0, 0)
        w, h = levels[synthetic].width, levels[synthetic].height
        assert tile.shape == (min(256, h), min(256, w), 3)
        np.testing.assert_array_equal(tile, slide.read_scaled((0.0, 0.0), ds, (w, h))[:256, :256])


def test_tile_cache_stays_within_its_budget_and_evicts_least_recent() -> None:
    cache: TileCache[str] = TileCache(max_bytes=1000)
    for i in range(10):
        cache.put(i, f"tile{i}", 300)
        assert cache.bytes_used <= 1000
    assert len(cache) == 3 and set(range(7, 10)) == {k for k in range(10) if k in cache}
    assert cache.get(7) == "tile7"  # 7 becomes the most recent
    cache.put(10, "tile10", 300)
    assert 8 not in cache and 7 in cache
    cache.put(11, "huge", 5000)  # larger than the budget: not kept, nothing evicted
    assert 11 not in cache and len(cache) == 3
    cache.put(7, "tile7b", 100)  # replacing updates the byte count
    assert cache.bytes_used == 700 and cache.peek(7) == "tile7b"
    cache.set_max_bytes(350)
    assert cache.bytes_used <= 350
    cache.clear()
    assert cache.bytes_used == 0 and len(cache) == 0
    with pytest.raises(ValueError, match="budget"):
        TileCache(0)


@pytest.mark.parametrize(
    ("um_per_px", "expected_um", "label"),
    [
        (0.5, 50.0, "50 µm"),  # 100 px
        (0.25, 20.0, "20 µm"),  # 80 px (50 µm would be 200 px)
        (2.0, 200.0, "200 µm"),
        (10.0, 1000.0, "1 mm"),
        (40.0, 5000.0, "5 mm"),
    ],
)
def test_scale_bar_picks_round_lengths(um_per_px: float, expected_um: float, label: str) -> None:
    length = nice_scale_length(um_per_px, max_pixels=160)
    assert length.micrometres == pytest.approx(expected_um)
    assert length.label == label
    assert length.pixels == pytest.approx(expected_um / um_per_px)
    assert length.pixels <= 160


def test_scale_bar_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="micrometres per screen pixel"):
        nice_scale_length(0.0)


def test_many_void_qt_calls_and_emits_do_not_crash_the_interpreter() -> None:
    """PySide6 6.12.0 on Python 3.11 drops a reference to None on every void Qt call and to True
    on every emit, and the interpreter aborts after a few thousand: pyproject pins PySide6 below
    6.12, and this checks that the installed PySide6 survives such a loop."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "n = 2 * (sys.getrefcount(None) + sys.getrefcount(True)) + 10_000\n"
        "import app.viewer\n"
        "from PySide6.QtCore import QObject, QRectF, Signal\n"
        "class E(QObject):\n"
        "    s = Signal(int)\n"
        "e, r = E(), QRectF()\n"
        "for i in range(n):\n"
        "    r.setWidth(1.0)\n"
        "    e.s.emit(i)\n"
        "print('alive')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "alive"
