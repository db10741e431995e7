# ruff: noqa: N802, N815  (Qt names its virtual methods and signals in camelCase)
"""SlideView: a tiled, zoomable whole-slide viewer on a QGraphicsView.

Scene coordinates are level-0 slide pixels, so overlay items added to ``view.scene()`` line up at
every zoom. Tiles are not scene items: they are drawn in ``drawBackground`` from an LRU cache and
loaded off the UI thread by a TileLoader. While sharper tiles load, cached tiles of coarser levels
(or, failing those, a low-resolution overview of the whole slide) are drawn scaled up in their
place, so the view is never blank.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence

from PySide6.QtCore import QPoint, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QColor,
    QCursor,
    QFocusEvent,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QRegion,
    QResizeEvent,
    QShowEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QFrame, QGraphicsScene, QGraphicsView, QWidget

from app.viewer.levels import (
    DisplayLevel,
    SlideLike,
    TileGrid,
    TileKey,
    build_display_levels,
    choose_level,
)
from app.viewer.overview import OverviewWidget
from app.viewer.prefetch import PanTracker, request_plan, tiles_by_distance
from app.viewer.scale_bar import ScaleBar
from app.viewer.tile_cache import DEFAULT_CACHE_BYTES, TileCache
from app.viewer.tile_loader import OVERVIEW_KEY, LoadedTile, TileLoader

INTERACTION_MODES = ("pan", "tool")

MIN_DOWNSAMPLE = 1.0 / 8.0  # most zoomed in: 8 screen px per level-0 px
ZOOM_OUT_MARGIN = 1.5  # most zoomed out: the whole slide at 1/1.5 of the window
WHEEL_STEP = 1.2  # zoom factor per wheel notch (120 eighths of a degree)
KEY_ZOOM_STEP = 1.5
KEY_PAN_FRACTION = 0.15

_OUTSIDE_COLOUR = QColor(96, 96, 96)
_EMPTY_COLOUR = QColor(255, 255, 255)


class SlideView(QGraphicsView):
    """A whole-slide viewer. See the module docstring; the public API is below."""

    cursorMoved = Signal(float, float)  # level-0 x, y under the cursor
    viewChanged = Signal()  # after zoom / pan / resize
    toolPressed = Signal(QPointF, object, object)  # level-0 pos, Qt.MouseButton, modifiers
    toolMoved = Signal(QPointF, object)  # level-0 pos, Qt.MouseButtons
    toolReleased = Signal(QPointF, object, object)  # level-0 pos, button, modifiers
    tilesLoaded = Signal(int)  # tiles that arrived since the last emission
    overviewChanged = Signal()  # the low-resolution overview image arrived or went away
    slideChanged = Signal()  # after set_slide

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        tile_size: int = 256,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        workers: int = 2,
    ) -> None:
        super().__init__(parent)
        if tile_size < 16:
            raise ValueError(f"tile size must be at least 16 px, got {tile_size}")
        self._tile_size = tile_size
        self._slide: SlideLike | None = None
        self._levels: list[DisplayLevel] = []
        self._grids: list[TileGrid] = []
        self._downsample = 1.0
        self._fitted = False  # refit on resize until the user zooms or pans
        self._mode = "pan"
        self._space_held = False
        self._pan_last: QPointF | None = None
        self._pan_button = Qt.MouseButton.NoButton
        self._cache: TileCache[QImage] = TileCache(cache_bytes)
        self._failed: set[TileKey] = set()
        self._overview_image: QImage | None = None
        self._latencies: deque[float] = deque(maxlen=100_000)
        self._arrived = 0
        self._dirty: list[QRectF] = []  # level-0 rects to repaint once the arrivals are in
        self._pan = PanTracker()  # the pan velocity, for loading ahead of it

        self.setScene(QGraphicsScene(self))
        self.scene().setSceneRect(QRectF(0, 0, 1, 1))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setCacheMode(QGraphicsView.CacheModeFlag.CacheNone)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.viewport().setMouseTracking(True)
        self._apply_cursor()

        self._loader = TileLoader(workers, self)
        self._loader.tileReady.connect(self._on_tile_ready)
        self._request_timer = QTimer(self)
        self._request_timer.setSingleShot(True)
        self._request_timer.setInterval(0)
        self._request_timer.timeout.connect(self._update_requests)
        self._arrival_timer = QTimer(self)
        self._arrival_timer.setSingleShot(True)
        self._arrival_timer.setInterval(0)
        self._arrival_timer.timeout.connect(self._flush_arrivals)

        self._scale_bar = ScaleBar(self)
        self._overview = OverviewWidget(self, self)
        self._overview.hide()
        self._overview_wanted = True

    # -- slide -----------------------------------------------------------------------------
    def set_slide(self, slide: SlideLike | None) -> None:
        """Show ``slide`` (or nothing). The view does not own the slide: the caller closes it.

        Pending tile loads of the previous slide are dropped; when this returns no worker reads
        the previous slide any more, so it may be closed straight away.
        """
        levels = build_display_levels(slide, self._tile_size) if slide is not None else []
        self._loader.set_source(slide, levels, self._tile_size)
        self._slide = slide
        self._levels = levels
        self._grids = [TileGrid(level, self._tile_size) for level in levels]
        self._cache.clear()
        self._failed.clear()
        self._pan.reset()
        self._overview_image = None
        self._dirty = []
        self._arrived = 0
        if slide is None:
            self.scene().setSceneRect(QRectF(0, 0, 1, 1))
        else:
            width, height = slide.dimensions
            self.scene().setSceneRect(QRectF(0, 0, width, height))
        self.overviewChanged.emit()
        self._sync_overlays()
        self.fit_to_window()
        self.slideChanged.emit()
        self.viewport().update()

    def slide(self) -> SlideLike | None:
        return self._slide

    def display_levels(self) -> list[DisplayLevel]:
        """The levels tiles are drawn from, finest first (slide levels plus synthetic ones)."""
        return list(self._levels)

    def tile_size(self) -> int:
        return self._tile_size

    # -- interaction mode --------------------------------------------------------------------
    def set_interaction_mode(self, mode: str) -> None:
        """ "pan": a left drag pans; "tool": mouse events become tool* signals (Space held or a
        middle drag pans)."""
        if mode not in INTERACTION_MODES:
            raise ValueError(f"interaction mode must be one of {INTERACTION_MODES}, got {mode!r}")
        self._mode = mode
        self._apply_cursor()

    def interaction_mode(self) -> str:
        return self._mode

    # -- zoom and position -----------------------------------------------------------------
    def downsample(self) -> float:
        """Level-0 pixels per screen pixel (the zoom; smaller is closer)."""
        return self._downsample

    def downsample_range(self) -> tuple[float, float]:
        """(most zoomed in, most zoomed out) downsample for the current slide and window."""
        return MIN_DOWNSAMPLE, max(MIN_DOWNSAMPLE, self._fit_downsample() * ZOOM_OUT_MARGIN)

    def set_downsample(self, ds: float, anchor_level0: QPointF | None = None) -> None:
        """Zoom to ``ds`` (clamped to downsample_range), keeping ``anchor_level0`` where it is
        on screen (the view centre when None)."""
        self._fitted = False
        self._apply_downsample(ds, anchor_level0)

    def zoom_by(self, factor: float, anchor_view_pos: QPoint | None = None) -> None:
        """Magnify by ``factor`` (> 1 zooms in) around a viewport position (the centre if None)."""
        if factor <= 0 or not math.isfinite(factor):
            raise ValueError(f"zoom factor must be a positive number, got {factor}")
        anchor = None
        if anchor_view_pos is not None:
            anchor = self._view_to_level0(QPointF(anchor_view_pos))
        self.set_downsample(self._downsample / factor, anchor)

    def fit_to_window(self) -> None:
        """Show the whole slide, centred."""
        if self._slide is None:
            self._apply_downsample(1.0, None)
            return
        self._apply_downsample(self._fit_downsample(), None)
        width, height = self._slide.dimensions
        self.centerOn(width / 2, height / 2)
        self._fitted = True
        self._after_view_change()

    def centre_on_level0(self, x: float, y: float) -> None:
        self._fitted = False
        self.centerOn(x, y)
        self._after_view_change()

    def visible_rect_level0(self) -> QRectF:
        """The level-0 rectangle the viewport shows (it may extend beyond the slide)."""
        inverse, _ = self.viewportTransform().inverted()
        return inverse.mapRect(QRectF(self.viewport().rect()))

    def current_level(self) -> int:
        """Index into display_levels() of the level tiles are drawn from at this zoom."""
        if not self._levels:
            return 0
        ratio = max(1.0, self.devicePixelRatioF())
        return choose_level(self._levels, self._downsample / ratio)

    def current_slide_level(self) -> int | None:
        """The slide's own level drawn now, None when it is a synthetic (read_scaled) level."""
        if not self._levels:
            return None
        return self._levels[self.current_level()].slide_level

    def magnification(self) -> float | None:
        """Display magnification (level-0 magnification / downsample) when the slide knows it."""
        if self._slide is None:
            return None
        objective = self._slide.magnification
        if objective is None:
            return None
        return float(objective) / self._downsample

    def um_per_screen_pixel(self) -> float | None:
        if self._slide is None or self._slide.mpp is None:
            return None
        mpp_x, mpp_y = self._slide.mpp
        return 0.5 * (mpp_x + mpp_y) * self._downsample

    # -- tiles -----------------------------------------------------------------------------
    def pending_tiles(self) -> int:
        """Tiles requested and not yet delivered (0 when the view is fully loaded)."""
        return self._loader.pending()

    def tile_cache(self) -> TileCache[QImage]:
        return self._cache

    def overview_image(self) -> QImage | None:
        """The whole slide at low resolution (at most 1024 px), None until it has loaded."""
        return self._overview_image

    def tile_latencies(self) -> list[float]:
        """Seconds from request to arrival of the tiles delivered so far (for benchmarks)."""
        return list(self._latencies)

    def clear_tile_latencies(self) -> None:
        self._latencies.clear()

    def visible_tiles(self) -> list[TileKey]:
        """Tiles of the current level that intersect the viewport, nearest the centre first."""
        if self._slide is None:
            return []
        visible = self.visible_rect_level0()
        level = self.current_level()
        return self._tiles_by_distance(level, visible, visible.center())

    def missing_visible_tiles(self) -> list[TileKey]:
        return [key for key in self.visible_tiles() if key not in self._cache]

    # -- overlays --------------------------------------------------------------------------
    def overview_widget(self) -> OverviewWidget:
        """The minimap drawn in the top-right corner of the view."""
        return self._overview

    def scale_bar(self) -> ScaleBar:
        return self._scale_bar

    def set_overview_visible(self, visible: bool) -> None:
        self._overview_wanted = visible
        self._sync_overlays()

    def set_scale_bar_visible(self, visible: bool) -> None:
        self._scale_bar.set_wanted(visible)

    def place_overlays(self) -> None:
        if not hasattr(self, "_overview"):
            return  # still in __init__
        area = self.viewport().geometry()
        margin = 10
        self._scale_bar.move(
            area.left() + margin, area.bottom() - margin - self._scale_bar.height()
        )
        self._overview.move(area.right() - margin - self._overview.width(), area.top() + margin)

    def shutdown(self) -> None:
        """Stop the loader threads (they start again on the next request)."""
        self._loader.shutdown()

    # -- Qt event handlers -----------------------------------------------------------------
    def drawBackground(self, painter: QPainter, rect: QRectF | QRect) -> None:
        rect = QRectF(rect)
        painter.fillRect(rect, _OUTSIDE_COLOUR)
        slide = self._slide
        if slide is None or not self._levels:
            return
        width, height = slide.dimensions
        area = rect.intersected(QRectF(0, 0, width, height))
        if area.isEmpty():
            return
        painter.save()
        painter.fillRect(area, _EMPTY_COLOUR)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        level = self.current_level()
        grid = self._grids[level]
        loaded: list[tuple[QRectF, QImage]] = []
        missing: list[QRectF] = []
        for col, row in grid.tiles_in(area.left(), area.top(), area.right(), area.bottom()):
            target = QRectF(*grid.tile_rect_level0(col, row))
            image = self._cache.get(TileKey(level, col, row))
            if image is None:
                missing.append(target)
            else:
                loaded.append((target, image))
        if missing:
            self._draw_fallback(painter, level, missing)
        for target, image in loaded:
            painter.drawImage(target, image)
        painter.restore()

    def _draw_fallback(self, painter: QPainter, level: int, missing: Sequence[QRectF]) -> None:
        """Fill the tiles still loading with the overview and cached tiles of coarser levels."""
        device = painter.transform()
        region = QRegion()
        bounds = QRectF()
        for target in missing:
            region += device.mapRect(target).toAlignedRect()
            bounds = bounds.united(target)
        painter.save()
        painter.resetTransform()
        painter.setClipRegion(region, Qt.ClipOperation.IntersectClip)
        painter.setTransform(device)
        if self._overview_image is not None and self._slide is not None:
            width, height = self._slide.dimensions
            image = self._overview_image
            sx, sy = image.width() / width, image.height() / height
            source = QRectF(
                bounds.x() * sx, bounds.y() * sy, bounds.width() * sx, bounds.height() * sy
            )
            painter.drawImage(bounds, image, source)
        for coarser in range(len(self._levels) - 1, level, -1):
            grid = self._grids[coarser]
            for col, row in grid.tiles_in(
                bounds.left(), bounds.top(), bounds.right(), bounds.bottom()
            ):
                cached = self._cache.get(TileKey(coarser, col, row))
                if cached is not None:
                    painter.drawImage(QRectF(*grid.tile_rect_level0(col, row)), cached)
        painter.restore()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._after_view_change()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fitted:
            self.fit_to_window()
        else:
            low, high = self.downsample_range()
            if not low <= self._downsample <= high:
                self._apply_downsample(self._downsample, None)
        self.place_overlays()
        self._after_view_change()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._sync_overlays()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._loader.shutdown()
        super().closeEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if self._slide is None:
            return
        steps = event.angleDelta().y() / 120.0
        if steps == 0:
            event.ignore()
            return
        self.zoom_by(WHEEL_STEP**steps, event.position().toPoint())
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self._slide is None:
            super().mousePressEvent(event)
            return
        button = event.button()
        pans = button == Qt.MouseButton.MiddleButton or (
            button == Qt.MouseButton.LeftButton and (self._mode == "pan" or self._space_held)
        )
        if (
            pans
            and self._mode == "pan"
            and not self._space_held
            and button == Qt.MouseButton.LeftButton
        ):
            # Let selectable overlay items (annotations) take a click first.
            super().mousePressEvent(event)
            if self.scene().mouseGrabberItem() is not None:
                return
        if pans:
            self._pan_last = event.position()
            self._pan_button = button
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if self._mode == "tool":
            self.toolPressed.emit(self._view_to_level0(event.position()), button, event.modifiers())
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        # A quick second click is still a click for the tools (points are often clicked fast).
        if self._slide is not None and self._mode == "tool" and not self._space_held:
            self.mousePressEvent(event)
            return
        super().mouseDoubleClickEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._slide is None:
            super().mouseMoveEvent(event)
            return
        pos = event.position()
        level0 = self._view_to_level0(pos)
        self.cursorMoved.emit(level0.x(), level0.y())
        if self._pan_last is not None:
            delta = pos - self._pan_last
            dx, dy = round(delta.x()), round(delta.y())
            self._pan_last = QPointF(self._pan_last.x() + dx, self._pan_last.y() + dy)
            self.pan_by(-dx, -dy)
            event.accept()
            return
        if self._mode == "tool":
            self.toolMoved.emit(level0, event.buttons())
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._pan_last is not None and event.button() == self._pan_button:
            self._pan_last = None
            self._pan_button = Qt.MouseButton.NoButton
            self._apply_cursor()
            event.accept()
            return
        if self._slide is not None and self._mode == "tool":
            self.toolReleased.emit(
                self._view_to_level0(event.position()), event.button(), event.modifiers()
            )
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self._space_held = True
                self._apply_cursor()
            event.accept()
            return
        if self._slide is not None:
            step_x = self.viewport().width() * KEY_PAN_FRACTION
            step_y = self.viewport().height() * KEY_PAN_FRACTION
            moves = {
                Qt.Key.Key_Left: (-step_x, 0.0),
                Qt.Key.Key_Right: (step_x, 0.0),
                Qt.Key.Key_Up: (0.0, -step_y),
                Qt.Key.Key_Down: (0.0, step_y),
            }
            if key in moves:
                dx, dy = moves[Qt.Key(key)]
                self.pan_by(round(dx), round(dy))
                event.accept()
                return
            if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
                self.zoom_by(KEY_ZOOM_STEP, self._cursor_anchor())
                event.accept()
                return
            if key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
                self.zoom_by(1.0 / KEY_ZOOM_STEP, self._cursor_anchor())
                event.accept()
                return
            if key in (Qt.Key.Key_0, Qt.Key.Key_Home):
                self.fit_to_window()
                event.accept()
                return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self._space_held = False
                if self._pan_last is not None and self._pan_button == Qt.MouseButton.LeftButton:
                    self._pan_last = None
                self._apply_cursor()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        # A Space released while another widget had focus must not leave the view panning.
        self._space_held = False
        self._apply_cursor()
        super().focusOutEvent(event)

    def pan_by(self, dx: int, dy: int) -> None:
        """Move the view by (dx, dy) screen pixels (positive: towards the right / bottom)."""
        self._fitted = False
        hbar, vbar = self.horizontalScrollBar(), self.verticalScrollBar()
        hbar.setValue(hbar.value() + dx)
        vbar.setValue(vbar.value() + dy)

    # -- internals -------------------------------------------------------------------------
    def _fit_downsample(self) -> float:
        if self._slide is None:
            return 1.0
        width, height = self._slide.dimensions
        viewport = self.viewport()
        return max(width / max(1, viewport.width()), height / max(1, viewport.height()))

    def _apply_downsample(self, ds: float, anchor_level0: QPointF | None) -> None:
        if not math.isfinite(ds) or ds <= 0:
            raise ValueError(f"downsample must be a positive number, got {ds}")
        low, high = self.downsample_range()
        ds = min(max(ds, low), high)
        centre = self._view_to_level0(QPointF(self.viewport().rect().center()) + QPointF(0.5, 0.5))
        old = self._downsample
        self._downsample = ds
        self.setTransform(QTransform.fromScale(1.0 / ds, 1.0 / ds))
        if anchor_level0 is not None:
            # The anchor keeps its place on screen: the centre moves towards it by ds/old.
            ratio = ds / old
            centre = QPointF(
                anchor_level0.x() + (centre.x() - anchor_level0.x()) * ratio,
                anchor_level0.y() + (centre.y() - anchor_level0.y()) * ratio,
            )
        self.centerOn(centre)
        self._scale_bar.set_um_per_pixel(self.um_per_screen_pixel())
        self._after_view_change()

    def _view_to_level0(self, pos: QPointF) -> QPointF:
        inverse, _ = self.viewportTransform().inverted()
        return inverse.map(pos)

    def _cursor_anchor(self) -> QPoint | None:
        pos = self.viewport().mapFromGlobal(QCursor.pos())
        return pos if self.viewport().rect().contains(pos) else None

    def _apply_cursor(self) -> None:
        if self._mode == "pan" or self._space_held:
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        else:
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)

    def _sync_overlays(self) -> None:
        self._overview.setVisible(self._overview_wanted and self._slide is not None)
        self._scale_bar.set_um_per_pixel(self.um_per_screen_pixel())
        self.place_overlays()

    def _after_view_change(self) -> None:
        if not self._request_timer.isActive():
            self._request_timer.start()
        self.viewChanged.emit()

    def _tiles_by_distance(self, level: int, area: QRectF, centre: QPointF) -> list[TileKey]:
        rect = (area.left(), area.top(), area.right(), area.bottom())
        return tiles_by_distance(self._grids[level], level, rect, (centre.x(), centre.y()))

    def pan_velocity(self) -> tuple[float, float]:
        """The pan velocity the tile requests assume (level-0 pixels per second)."""
        return self._pan.velocity

    def requested_tiles(self) -> list[TileKey]:
        """The tiles queued for loading now, best first (for tests and benchmarks)."""
        return self._loader.queued_keys()

    def _update_requests(self) -> None:
        """Ask the loader for what the view needs now, best first; everything else is dropped.

        After the visible tiles come the tiles ahead of the pan and the coarser and finer
        levels around the current one (:func:`app.viewer.prefetch.request_plan`).
        """
        if self._slide is None:
            self._loader.request([])
            return
        wanted: list[TileKey] = []
        if self._overview_image is None and OVERVIEW_KEY not in self._failed:
            wanted.append(OVERVIEW_KEY)
        visible = self.visible_rect_level0()
        centre = visible.center()
        velocity = self._pan.update(centre.x(), centre.y(), self._downsample, time.perf_counter())
        rect = (visible.left(), visible.top(), visible.right(), visible.bottom())
        seen: set[TileKey] = set()
        for key in request_plan(self._grids, self.current_level(), rect, velocity):
            if key not in seen and key not in self._cache and key not in self._failed:
                seen.add(key)
                wanted.append(key)
        self._loader.request(wanted)

    def _on_tile_ready(self, loaded: LoadedTile) -> None:
        if loaded.generation != self._loader.generation or self._slide is None:
            return  # a tile of a slide that is no longer shown
        self._loader.delivered(loaded.generation)
        key = loaded.key
        if loaded.image is None:
            self._failed.add(key)
            return
        self._latencies.append(time.perf_counter() - loaded.requested_at)
        if key == OVERVIEW_KEY:
            self._overview_image = loaded.image
            self.overviewChanged.emit()
            self._dirty.append(self.scene().sceneRect())
        else:
            self._cache.put(key, loaded.image, loaded.image.sizeInBytes())
            self._dirty.append(QRectF(*self._grids[key.level].tile_rect_level0(key.col, key.row)))
            self._arrived += 1
        if not self._arrival_timer.isActive():
            self._arrival_timer.start()

    def _flush_arrivals(self) -> None:
        if self._dirty:
            to_view = self.viewportTransform()
            bounds = self.viewport().rect()
            region = QRegion()
            for rect in self._dirty:
                box = to_view.mapRect(rect).toAlignedRect().adjusted(-1, -1, 1, 1)
                if box.intersects(bounds):
                    region = region.united(box.intersected(bounds))
            self._dirty = []
            if not region.isEmpty():
                self.viewport().update(region)
        if self._arrived:
            count, self._arrived = self._arrived, 0
            self.tilesLoaded.emit(count)
