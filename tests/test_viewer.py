"""SlideView in a real (offscreen) window: tiles load off the UI thread, zoom, pan, tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QImage, QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from test_viewer_support import FakeSlide, level_pattern, write_pyramid

import engine
from app.viewer import SlideView
from app.viewer.levels import TileKey
from app.viewer.slide_view import MIN_DOWNSAMPLE

VIEW_SIZE = (640, 480)


@pytest.fixture
def view(qtbot) -> Iterator[SlideView]:
    widget = SlideView()
    qtbot.addWidget(widget)
    widget.resize(*VIEW_SIZE)
    widget.show()
    qtbot.waitExposed(widget)
    yield widget
    widget.set_slide(None)
    widget.shutdown()


@pytest.fixture
def sample(sample_slide: Path) -> Iterator[engine.Slide]:
    slide = engine.open_slide(sample_slide)
    yield slide
    slide.close()


@pytest.fixture(scope="module")
def pyramid_path(tmp_path_factory) -> Path:
    return write_pyramid(
        tmp_path_factory.mktemp("pyramid") / "pyramid.tif", (4096, 3072), downsamples=(1, 4, 16)
    )


def wait_loaded(qtbot, view: SlideView, timeout: int = 15_000) -> None:
    qtbot.waitUntil(
        lambda: not view.missing_visible_tiles() and view.pending_tiles() == 0, timeout=timeout
    )


def image_pixel(image: QImage, x: int, y: int) -> tuple[int, int, int]:
    colour = image.pixelColor(x, y)
    return colour.red(), colour.green(), colour.blue()


# -- the real sample slide -------------------------------------------------------------------


def test_sample_slide_loads_zooms_and_pans(qtbot, view: SlideView, sample) -> None:
    view.set_slide(sample)
    assert view.slide() is sample
    # Fit: the whole slide is visible, on a coarse (synthetic) level of this single-level SVS.
    visible = view.visible_rect_level0()
    width, height = sample.dimensions
    assert visible.contains(QPointF(1, 1)) and visible.contains(QPointF(width - 1, height - 1))
    fitted_level = view.current_level()
    assert fitted_level > 0 and view.display_levels()[fitted_level].synthetic
    with qtbot.waitSignal(view.tilesLoaded, timeout=15_000):
        pass
    wait_loaded(qtbot, view)
    qtbot.waitUntil(lambda: view.overview_image() is not None)
    assert view.tile_cache().bytes_used > 0

    # Zoom in on the tissue: level 0 is drawn and its tiles load.
    view.set_downsample(0.75, QPointF(width / 2, height / 2))
    assert view.current_level() == 0
    assert view.display_levels()[0].slide_level == 0
    assert view.missing_visible_tiles()  # not loaded yet ...
    wait_loaded(qtbot, view)  # ... then loaded
    assert all(key.level == 0 for key in view.visible_tiles())

    # Pan with the arrow keys: the visible rectangle moves right and its new tiles load.
    before = view.visible_rect_level0()
    for _ in range(3):
        QTest.keyClick(view, Qt.Key.Key_Right)
    after = view.visible_rect_level0()
    assert after.x() > before.x() + 50
    assert after.width() == pytest.approx(before.width())
    wait_loaded(qtbot, view)

    # The picture on screen is the slide: a pixel at the view centre matches read_region.
    shot = view.viewport().grab().toImage()
    centre = view.visible_rect_level0().center()
    expected = sample.read_region((round(centre.x()), round(centre.y())), 0, (1, 1))[0, 0]
    got = image_pixel(shot, shot.width() // 2, shot.height() // 2)
    assert np.abs(np.array(got, int) - expected.astype(int)).max() < 60

    # magnification: 20x slide (mpp 0.499) shown at downsample 0.75 -> about 26.7x.
    assert view.magnification() == pytest.approx(sample.magnification / 0.75)
    assert view.scale_bar().isVisible()


def test_fit_and_zoom_limits(view: SlideView, sample) -> None:
    view.set_slide(sample)
    low, high = view.downsample_range()
    assert low == MIN_DOWNSAMPLE
    view.set_downsample(1e-6)
    assert view.downsample() == pytest.approx(low)
    view.set_downsample(1e9)
    assert view.downsample() == pytest.approx(high)
    width, height = sample.dimensions
    assert high >= max(width / VIEW_SIZE[0], height / VIEW_SIZE[1])
    view.fit_to_window()
    visible = view.visible_rect_level0()
    assert visible.width() >= width - 1 and visible.height() >= height - 1
    assert visible.center().x() == pytest.approx(width / 2, abs=view.downsample() * 2)
    with pytest.raises(ValueError, match="downsample"):
        view.set_downsample(float("nan"))


def test_keys_zoom_and_fit(view: SlideView, sample) -> None:
    view.set_slide(sample)
    view.set_downsample(2.0)
    QTest.keyClick(view, Qt.Key.Key_Plus)
    assert view.downsample() == pytest.approx(2.0 / 1.5)
    QTest.keyClick(view, Qt.Key.Key_Minus)
    QTest.keyClick(view, Qt.Key.Key_Minus)
    assert view.downsample() == pytest.approx(2.0 * 1.5)
    QTest.keyClick(view, Qt.Key.Key_0)
    assert view.downsample() == pytest.approx(view._fit_downsample())


def test_wheel_zooms_around_the_cursor(view: SlideView, sample) -> None:
    view.set_slide(sample)
    view.set_downsample(2.0)
    view.centre_on_level0(1000, 1500)
    cursor = QPoint(100, 80)
    under_before = view.mapToScene(cursor)
    event = QWheelEvent(
        QPointF(cursor),
        QPointF(view.viewport().mapToGlobal(cursor)),
        QPoint(0, 0),
        QPoint(0, 240),  # two notches towards the user... away: zoom in
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), event)
    assert view.downsample() == pytest.approx(2.0 / 1.2**2)
    under_after = view.mapToScene(cursor)
    assert abs(under_after.x() - under_before.x()) <= 2 * view.downsample() + 1
    assert abs(under_after.y() - under_before.y()) <= 2 * view.downsample() + 1


# -- a multi-level pyramid written with tifffile, read by OpenSlide ---------------------------


def test_level_follows_zoom_on_a_pyramid(qtbot, view: SlideView, pyramid_path: Path) -> None:
    with engine.open_slide(pyramid_path) as slide:
        assert slide.level_count == 3
        view.resize(200, 150)  # small enough that downsample 20 is not beyond "whole slide"
        view.set_slide(slide)
        for ds, expected_slide_level in (
            (0.5, 0),
            (1.0, 0),
            (1.9, 0),
            (3.0, None),  # synthetic level (downsample 2) between slide levels 0 and 4
            (4.0, 1),
            (7.9, 1),
            (10.0, None),  # synthetic (8)
            (16.0, 2),
            (20.0, 2),
        ):
            view.set_downsample(ds, QPointF(2048, 1536))
            assert view.downsample() == pytest.approx(ds)
            assert view.current_slide_level() == expected_slide_level, ds
            wait_loaded(qtbot, view)
            # Each drawn tile holds that level's pixels (the blue channel identifies the level).
            key = view.visible_tiles()[0]
            image = view.tile_cache().peek(key)
            assert image is not None
            grid_level = view.display_levels()[key.level]
            lw, lh = grid_level.width, grid_level.height
            x, y = key.col * view.tile_size(), key.row * view.tile_size()
            if expected_slide_level is None:  # averaged from the finer slide level
                finer = 0 if ds < 4 else 1
                blue = int(level_pattern(1, 1, finer)[0, 0, 2])
                assert image_pixel(image, 0, 0)[2] == blue
                assert grid_level.synthetic
            else:
                expected = level_pattern(lw, lh, expected_slide_level, slice(y, y + 1))[0, x]
                assert image_pixel(image, 0, 0) == tuple(int(v) for v in expected)
        view.set_slide(None)


def test_cache_stays_within_its_byte_budget(qtbot, pyramid_path: Path) -> None:
    budget = 2 * 1024 * 1024  # eight 256 x 256 RGB32 tiles
    view = SlideView(cache_bytes=budget)
    qtbot.addWidget(view)
    view.resize(*VIEW_SIZE)
    view.show()
    with engine.open_slide(pyramid_path) as slide:
        view.set_slide(slide)
        view.set_downsample(4.0, QPointF(1000, 1000))
        arrived: list[int] = []
        view.tilesLoaded.connect(arrived.append)
        for x in range(1000, 7000, 1500):
            view.centre_on_level0(x, 3000)
            qtbot.waitUntil(
                lambda: view.pending_tiles() == 0 and not view._request_timer.isActive()
            )
            assert view.tile_cache().bytes_used <= budget
        assert sum(arrived) * 256 * 256 * 4 > budget  # more arrived than fits: some were evicted
        # the bound is in bytes: tiles at the slide's edge are smaller than 256 x 256, so a
        # ninth one can fit beside eight full ones
        assert view.tile_cache().bytes_used <= budget
        assert len(view.tile_cache()) < sum(arrived)
        view.set_slide(None)
    view.shutdown()


# -- a huge (fake) slide: zoomed-out views never read level 0 -------------------------------


def test_huge_single_level_slide_is_drawn_from_coarse_reads(qtbot, view: SlideView) -> None:
    slide = FakeSlide(size=(100_000, 100_000), downsamples=(1.0,))
    view.set_slide(slide)
    wait_loaded(qtbot, view)
    assert len(view.visible_tiles()) <= 16
    assert slide.reads, "nothing was read"
    for kind, _, (w, h) in slide.reads:
        # Only tile-sized reads (and the overview), and none at level 0 when zoomed out.
        assert kind == "scaled"
        assert w <= 1024 and h <= 1024
    slide.reads.clear()
    view.set_downsample(1.0, QPointF(50_000, 50_000))
    wait_loaded(qtbot, view)
    # Level-0 tiles (plus the next coarser level, prefetched for the next zoom out).
    assert any(kind == "region" for kind, _, _ in slide.reads)
    assert all(w <= 256 and h <= 256 for _, _, (w, h) in slide.reads)
    view.grab()  # paints without error
    view.set_slide(None)


# -- threads and slide replacement ------------------------------------------------------------


def test_reads_of_one_slide_never_overlap(qtbot, view: SlideView) -> None:
    slide = FakeSlide(size=(20_000, 20_000), delay=0.002)
    view.set_slide(slide)
    view.set_downsample(1.0, QPointF(10_000, 10_000))
    wait_loaded(qtbot, view)
    assert len(slide.reads) > 8
    assert slide.max_concurrent == 1


def test_replacing_the_slide_while_tiles_are_pending(qtbot, view: SlideView) -> None:
    old = FakeSlide(size=(50_000, 50_000), colour=(255, 0, 0), delay=0.02)
    new = FakeSlide(size=(30_000, 30_000), colour=(0, 0, 255))
    view.set_slide(old)
    view.set_downsample(1.0, QPointF(25_000, 25_000))
    qtbot.waitUntil(lambda: len(old.reads) >= 2)
    assert view.pending_tiles() > 0
    view.set_slide(new)
    old.close()  # safe at once: set_slide waited for reads of the old slide
    wait_loaded(qtbot, view)
    qtbot.wait(100)  # let any straggler of the old slide arrive
    assert old.reads_after_close == 0
    keys = list(view.visible_tiles())
    assert keys
    for key in keys:
        image = view.tile_cache().peek(key)
        assert image is not None and image_pixel(image, 0, 0) == (0, 0, 255)
    # Dropping the slide while loads are pending leaves nothing pending.
    view.set_downsample(1.0, QPointF(1000, 1000))
    view.set_slide(None)
    assert view.pending_tiles() == 0
    view.grab()


def test_a_failing_tile_does_not_stall_the_view(qtbot, view: SlideView) -> None:
    slide = FakeSlide(size=(4000, 3000), fail_locations=[(0, 0)])
    view.set_slide(slide)
    view.set_downsample(1.0, QPointF(300, 300))
    qtbot.waitUntil(lambda: view.pending_tiles() == 0 and not view._request_timer.isActive())
    assert TileKey(0, 0, 0) in view.visible_tiles()
    assert TileKey(0, 0, 0) not in view.tile_cache()
    assert len(view.missing_visible_tiles()) == 1  # only the broken one
    view.grab()


# -- mouse and keyboard: tools and panning ---------------------------------------------------


class Recorder:
    def __init__(self, view: SlideView) -> None:
        self.pressed: list[tuple[QPointF, object, object]] = []
        self.moved: list[tuple[QPointF, object]] = []
        self.released: list[tuple[QPointF, object, object]] = []
        view.toolPressed.connect(lambda p, b, m: self.pressed.append((QPointF(p), b, m)))
        view.toolMoved.connect(lambda p, b: self.moved.append((QPointF(p), b)))
        view.toolReleased.connect(lambda p, b, m: self.released.append((QPointF(p), b, m)))


@pytest.mark.parametrize("ds", [0.5, 3.0])
def test_tool_signals_carry_level0_coordinates(view: SlideView, ds: float) -> None:
    slide = FakeSlide(size=(10_000, 8000))
    view.set_slide(slide)
    view.set_interaction_mode("tool")
    view.set_downsample(ds)
    view.centre_on_level0(5000, 4000)
    record = Recorder(view)
    centre = view.viewport().rect().center()
    start = centre + QPoint(-100, -40)
    end = centre + QPoint(120, 60)
    tolerance = ds * 1.5 + 0.5
    viewport = view.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(viewport, end)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    QTest.mouseClick(viewport, Qt.MouseButton.RightButton, Qt.KeyboardModifier.AltModifier, end)

    def expected(p: QPoint) -> tuple[float, float]:
        return 5000 + (p.x() - centre.x()) * ds, 4000 + (p.y() - centre.y()) * ds

    pos, button, modifiers = record.pressed[0]
    assert (pos.x(), pos.y()) == pytest.approx(expected(start), abs=tolerance)
    assert button == Qt.MouseButton.LeftButton
    assert record.moved and record.moved[-1][0].x() == pytest.approx(
        expected(end)[0], abs=tolerance
    )
    pos, button, _ = record.released[0]
    assert (pos.x(), pos.y()) == pytest.approx(expected(end), abs=tolerance)
    assert button == Qt.MouseButton.LeftButton
    pos, button, modifiers = record.pressed[1]
    assert button == Qt.MouseButton.RightButton
    assert modifiers & Qt.KeyboardModifier.AltModifier
    # The tools did not move the view.
    assert view.visible_rect_level0().center().x() == pytest.approx(5000, abs=ds + 1)


def test_cursor_moved_reports_level0(view: SlideView) -> None:
    view.set_slide(FakeSlide(size=(10_000, 8000)))
    view.set_downsample(2.0)
    view.centre_on_level0(5000, 4000)
    seen: list[tuple[float, float]] = []
    view.cursorMoved.connect(lambda x, y: seen.append((x, y)))
    centre = view.viewport().rect().center()
    QTest.mouseMove(view.viewport(), centre + QPoint(50, 0))
    assert seen and seen[-1] == pytest.approx((5100, 4000), abs=4)


def drag(viewport, start: QPoint, end: QPoint, button=Qt.MouseButton.LeftButton) -> None:
    QTest.mousePress(viewport, button, Qt.KeyboardModifier.NoModifier, start)
    steps = 4
    for i in range(1, steps + 1):
        QTest.mouseMove(viewport, start + (end - start) * i / steps)
    QTest.mouseRelease(viewport, button, Qt.KeyboardModifier.NoModifier, end)


def test_drag_pans_in_pan_mode(view: SlideView) -> None:
    view.set_slide(FakeSlide(size=(20_000, 20_000)))
    view.set_downsample(2.0)
    view.centre_on_level0(10_000, 10_000)
    record = Recorder(view)
    centre = view.viewport().rect().center()
    drag(view.viewport(), centre, centre + QPoint(100, 50))
    after = view.visible_rect_level0().center()
    assert (after.x(), after.y()) == pytest.approx((10_000 - 200, 10_000 - 100), abs=5)
    assert not record.pressed and not record.released


def test_space_held_pans_in_tool_mode(view: SlideView) -> None:
    view.set_slide(FakeSlide(size=(20_000, 20_000)))
    view.set_interaction_mode("tool")
    view.set_downsample(2.0)
    view.centre_on_level0(10_000, 10_000)
    record = Recorder(view)
    view.setFocus()
    centre = view.viewport().rect().center()
    QTest.keyPress(view, Qt.Key.Key_Space)
    drag(view.viewport(), centre, centre + QPoint(-80, 40))
    QTest.keyRelease(view, Qt.Key.Key_Space)
    after = view.visible_rect_level0().center()
    assert (after.x(), after.y()) == pytest.approx((10_000 + 160, 10_000 - 80), abs=5)
    assert not record.pressed and not record.released
    # Space released: the mouse belongs to the tool again and the view stays put.
    drag(view.viewport(), centre, centre + QPoint(30, 30))
    assert len(record.pressed) == 1 and len(record.released) == 1
    again = view.visible_rect_level0().center()
    assert (again.x(), again.y()) == pytest.approx((after.x(), after.y()), abs=1)
    # A middle drag pans in tool mode too.
    drag(view.viewport(), centre, centre + QPoint(50, 0), Qt.MouseButton.MiddleButton)
    assert view.visible_rect_level0().center().x() == pytest.approx(after.x() - 100, abs=5)
    with pytest.raises(ValueError, match="interaction mode"):
        view.set_interaction_mode("lasso")


# -- overlays ---------------------------------------------------------------------------------


def test_overview_click_moves_the_view(qtbot, view: SlideView, sample) -> None:
    view.set_slide(sample)
    view.set_downsample(1.0, QPointF(100, 100))
    overview = view.overview_widget()
    assert overview.isVisible()
    qtbot.waitUntil(lambda: view.overview_image() is not None)
    target = overview.image_rect()
    click = QPoint(
        round(target.x() + target.width() * 0.75), round(target.y() + target.height() * 0.25)
    )
    QTest.mouseClick(overview, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, click)
    centre = view.visible_rect_level0().center()
    width, height = sample.dimensions
    step = width / target.width() + 2
    assert centre.x() == pytest.approx(width * 0.75, abs=step)
    assert centre.y() == pytest.approx(height * 0.25, abs=step)
    overview.grab()


def test_scale_bar_follows_mpp_and_zoom(view: SlideView) -> None:
    view.set_slide(FakeSlide(size=(10_000, 8000), mpp=(0.25, 0.25)))
    bar = view.scale_bar()
    view.set_downsample(1.0)
    assert bar.isVisible()
    assert bar.length().micrometres == pytest.approx(20.0)  # 0.25 um/px: 20 um = 80 px
    view.set_downsample(8.0)
    assert bar.length().micrometres == pytest.approx(200.0)  # 2 um/px: 200 um = 100 px
    view.set_slide(FakeSlide(size=(10_000, 8000), mpp=None))
    assert not bar.isVisible()
    assert view.magnification() is None
