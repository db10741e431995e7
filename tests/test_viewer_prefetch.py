"""Which tiles the viewer asks for while panning: ahead of the pan, and the levels around."""

from __future__ import annotations

from app.viewer.levels import DisplayLevel, TileGrid, TileKey
from app.viewer.prefetch import PanTracker, ahead_shift, request_plan, tiles_ahead

TILE = 256
# a 100k x 100k slide: levels at downsample 1, 2, 4
LEVELS = [DisplayLevel(float(ds), 100_000 // ds, 100_000 // ds, None) for ds in (1, 2, 4)]
GRIDS = [TileGrid(level, TILE) for level in LEVELS]
# a 1600 x 1000 view at downsample 1, away from the slide's edges
VISIBLE = (20_000.0, 30_000.0, 21_600.0, 31_000.0)


def _cols(keys: list[TileKey]) -> set[int]:
    return {k.col for k in keys}


def test_no_pan_loads_nothing_ahead() -> None:
    assert ahead_shift(VISIBLE, (0.0, 0.0), TILE) == (0.0, 0.0)
    assert tiles_ahead(GRIDS[0], 0, VISIBLE, (0.0, 0.0)) == []


def test_a_pan_to_the_right_loads_the_columns_to_the_right_nearest_first() -> None:
    shift = ahead_shift(VISIBLE, (1200.0, 0.0), TILE)  # 1,200 px/s at downsample 1
    assert shift[0] >= 1.5 * TILE and shift[1] == 0.0
    ahead = tiles_ahead(GRIDS[0], 0, VISIBLE, shift)
    last_visible_col = int(VISIBLE[2] // TILE)
    assert ahead and min(_cols(ahead)) == last_visible_col + 1
    assert all(k.col > last_visible_col for k in ahead)
    # the rows are those of the view; nearest column first
    rows = {k.row for k in ahead}
    assert rows == set(range(int(VISIBLE[1] // TILE), int(VISIBLE[3] // TILE) + 1))
    cols_in_order = [k.col for k in ahead]
    assert cols_in_order == sorted(cols_in_order)


def test_a_pan_to_the_left_and_up_loads_left_and_above() -> None:
    shift = ahead_shift(VISIBLE, (-1500.0, -900.0), TILE)
    assert shift[0] < 0 and shift[1] < 0
    ahead = tiles_ahead(GRIDS[0], 0, VISIBLE, shift)
    first_col, first_row = int(VISIBLE[0] // TILE), int(VISIBLE[1] // TILE)
    assert ahead
    assert all(k.col < first_col or k.row < first_row for k in ahead)
    assert not any(k.col > int(VISIBLE[2] // TILE) for k in ahead)
    # the corner ahead comes after the tiles next to the view
    assert ahead[0].col >= first_col - 1 and ahead[0].row >= first_row - 1


def test_the_strip_ahead_grows_with_speed_up_to_one_view() -> None:
    slow = ahead_shift(VISIBLE, (300.0, 0.0), TILE)[0]
    fast = ahead_shift(VISIBLE, (3000.0, 0.0), TILE)[0]
    very_fast = ahead_shift(VISIBLE, (1e6, 0.0), TILE)[0]
    assert slow == 1.5 * TILE < fast
    assert very_fast == VISIBLE[2] - VISIBLE[0]


def test_plan_order_visible_then_ahead_then_coarser_then_ring_and_finer() -> None:
    level = 1  # drawn from downsample 2: coarser is 2, finer is 0
    plan = request_plan(GRIDS, level, VISIBLE, (2400.0, 0.0))
    visible = {TileKey(level, c, r) for c, r in GRIDS[level].tiles_in(*VISIBLE)}
    n = len(visible)
    assert set(plan[:n]) == visible
    ahead = tiles_ahead(GRIDS[level], level, VISIBLE, ahead_shift(VISIBLE, (2400.0, 0.0), 512))
    assert plan[n : n + len(ahead)] == ahead
    rest = plan[n + len(ahead) :]
    coarser = [k for k in rest if k.level == 2]
    assert coarser and rest.index(coarser[0]) == 0  # placeholders right after the sharp tiles
    # the coarser level covers the area ahead too
    assert max(k.col for k in coarser) * 4 * TILE >= VISIBLE[2]
    # while panning, the finer level is not asked for
    assert not any(k.level == 0 for k in plan)
    still = request_plan(GRIDS, level, VISIBLE)
    assert any(k.level == 0 for k in still)
    assert still.index(next(k for k in still if k.level == 0)) > still.index(
        next(k for k in still if k.level == 2)
    )


def test_pan_tracker_estimates_velocity_and_resets() -> None:
    tracker = PanTracker()
    assert tracker.update(0, 0, 1.0, 0.0) == (0.0, 0.0)
    for i in range(1, 10):  # 20 px per 60 Hz frame
        tracker.update(20.0 * i, 0, 1.0, i / 60)
    vx, vy = tracker.velocity
    assert abs(vx - 1200) < 1 and vy == 0
    # a pause stops the pan
    assert tracker.update(200, 0, 1.0, 10 / 60 + 1.0) == (0.0, 0.0)
    # a zoom is not a pan
    tracker.update(220, 0, 1.0, 10 / 60 + 1.0 + 1 / 60)
    assert tracker.update(240, 0, 2.0, 10 / 60 + 1.0 + 2 / 60) == (0.0, 0.0)


def test_slide_view_requests_ahead_of_the_pan(qtbot) -> None:  # type: ignore[no-untyped-def]
    """The view's own requests follow the plan: after a rightward pan, tiles to the right."""
    import numpy as np

    from app.viewer import SlideView

    class Blank:
        dimensions = (40_000, 40_000)
        level_count = 1
        level_dimensions = ((40_000, 40_000),)
        level_downsamples = (1.0,)
        mpp = None
        magnification = None
        concurrent_reads = True

        def read_region(self, location, level, size):  # type: ignore[no-untyped-def]
            return np.full((size[1], size[0], 3), 200, np.uint8)

        def read_scaled(self, location, downsample, size):  # type: ignore[no-untyped-def]
            return np.full((size[1], size[0], 3), 200, np.uint8)

    view = SlideView(tile_size=256, workers=1)
    qtbot.addWidget(view)
    view.resize(800, 600)
    view.set_slide(Blank())
    view.set_downsample(1.0, None)
    view.centre_on_level0(10_000, 10_000)
    view._loader.shutdown()  # keep the queue as asked, unread
    view._loader._ensure_threads = lambda: None  # type: ignore[method-assign]
    import time

    for _ in range(6):
        view.pan_by(20, 0)
        view._update_requests()
        time.sleep(1 / 60)
    assert view.pan_velocity()[0] > 0
    queued = view.requested_tiles()
    right = view.visible_rect_level0().right()
    level = view.current_level()
    ahead = [k for k in queued if k.level == level and k.col * 256 >= right]
    assert ahead, queued[:20]
    view.set_slide(None)
    view.shutdown()
