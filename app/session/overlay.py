"""Annotation outlines over the slide, in level-0 scene coordinates with cosmetic pens, so outlines
stay one or two screen pixels wide at every zoom.

Each annotation has a ``QGraphicsPathItem`` that holds its path and style (pen, brush), but the
items are not in the scene: one :class:`OutlineLayer` item draws them all. It keeps, per zoom
level (powers of two), the outlines simplified to about a screen pixel and merged per colour in
cells of about 512 screen pixels, so a repaint draws a few merged paths per visible cell instead
of thousands of items (5,000 outlines at fit-to-window: about 1 s per repaint as items, a few
milliseconds as cells). Objects under about two screen pixels are drawn as dots; the selected
ones are drawn on top with their own style.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPen, QTransform
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsScene,
    QStyleOptionGraphicsItem,
    QWidget,
)

from app.session.annotations import AnnotationStore
from app.session.classes import ClassList

# stacking above the viewer's tiles
Z_ANNOTATIONS = 100.0
Z_PREVIEW = 200.0
Z_PROMPT = 300.0

# A cell of merged outlines is about this many screen pixels wide.
CELL_SCREEN_PX = 512.0
# Coarsest zoom level kept (1/1024: a 100,000 px slide in about 100 screen pixels) and the finest
# (64 screen pixels per slide pixel); from 1 on, outlines are drawn whole, only the cells shrink.
MIN_LOD_EXPONENT = -10
MAX_LOD_EXPONENT = 6
# Objects smaller than this many screen pixels are drawn as dots.
DOT_SCREEN_PX = 2.5
# Outlines are drawn 1 pixel wide: wider cosmetic pens go through Qt's general stroker, about
# ten times slower (selected outlines keep their own, wider pen).
OUTLINE_WIDTH = 1.0
# Rendered cells (images at the current zoom) kept, in bytes.
RASTER_CACHE_BYTES = 96 << 20


def geometry_to_path(geometry: Any) -> QPainterPath:
    """A shapely geometry (level-0 px) as a painter path; holes are kept (odd-even fill)."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    _add_geometry(path, geometry)
    return path


def _add_ring(path: QPainterPath, coords: Any, close: bool) -> None:
    points = list(coords)
    if not points:
        return
    path.moveTo(QPointF(float(points[0][0]), float(points[0][1])))
    for x, y, *_ in points[1:]:
        path.lineTo(QPointF(float(x), float(y)))
    if close:
        path.closeSubpath()


def _add_geometry(path: QPainterPath, geometry: Any) -> None:
    if geometry is None or geometry.is_empty:
        return
    kind = geometry.geom_type
    if kind == "Polygon":
        _add_ring(path, geometry.exterior.coords, True)
        for ring in geometry.interiors:
            _add_ring(path, ring.coords, True)
    elif kind in ("LineString", "LinearRing"):
        _add_ring(path, geometry.coords, kind == "LinearRing")
    elif kind == "Point":
        path.addEllipse(QPointF(geometry.x, geometry.y), 2.0, 2.0)
    elif hasattr(geometry, "geoms"):
        for part in geometry.geoms:
            _add_geometry(path, part)


def class_color(classes: ClassList, annotation: Any) -> QColor:
    path_class = annotation.path_class
    if path_class is None:
        return QColor(*classes.color_for(None))
    entry = classes.find(path_class.name)
    if entry is not None:
        return QColor(*entry.color)
    if path_class.color is not None:
        return QColor(*path_class.color)
    return QColor(*classes.color_for(None))


class OutlineLayer(QGraphicsItem):
    """The one scene item that draws every annotation outline of an :class:`AnnotationOverlay`."""

    def __init__(self, overlay: AnnotationOverlay) -> None:
        super().__init__()
        self._overlay = overlay
        self._rect = QRectF()
        self.setZValue(Z_ANNOTATIONS)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def boundingRect(self) -> QRectF:  # noqa: N802 (Qt's name)
        return self._rect

    def set_rect(self, rect: QRectF) -> None:
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = QRectF(rect)

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        self._overlay.paint_layer(painter, option)


class AnnotationOverlay:
    """Keeps one outline item (path and style) per annotation of ``store``, drawn by one
    :class:`OutlineLayer` in the view's scene."""

    def __init__(self, view: Any, store: AnnotationStore, classes: ClassList):
        """``view`` is the SlideView; its ``scene()`` is looked up each time (it may change)."""
        self._view = view
        self._store = store
        self._classes = classes
        self._items: dict[str, QGraphicsPathItem] = {}
        self._selected: set[str] = set()
        self.visible = True
        self._layer = OutlineLayer(self)
        # per annotation: (x0, y0, x1, y1) bounds; the largest half-extent seen
        self._bounds: dict[str, tuple[float, float, float, float]] = {}
        self._max_half = 0.0
        # zoom exponent -> cell -> ids (by their centre); (exponent, cell) -> colour -> path
        self._cells: dict[int, dict[tuple[int, int], list[str]]] = {}
        self._merged: dict[tuple[int, tuple[int, int]], dict[int, QPainterPath]] = {}
        self._simplified: dict[tuple[str, int], QPainterPath] = {}
        # (exponent, cell, scale) -> (image, level-0 origin of the image): cells rendered at the
        # view's zoom, so that a pan only copies images
        self._raster: OrderedDict[tuple[Any, ...], tuple[QImage, QPointF]] = OrderedDict()
        self._raster_bytes = 0
        self.last_paint: dict[str, Any] = {"cells": 0, "rendered": 0}
        self._batch = False
        store.added.connect(self._on_added)
        store.removed.connect(self._on_removed)
        store.changed.connect(self._restyle)
        store.reset.connect(self.rebuild)
        classes.changed.connect(self._restyle_all)

    def items(self) -> dict[str, QGraphicsPathItem]:
        return dict(self._items)

    def item(self, annotation_id: str) -> QGraphicsPathItem | None:
        return self._items.get(annotation_id)

    def layer(self) -> OutlineLayer:
        return self._layer

    def detach(self) -> None:
        """Take the outlines out of the scene (before the viewer clears it for a new slide)."""
        scene = self._layer.scene()
        if scene is not None:
            scene.removeItem(self._layer)
        self._items.clear()
        self._bounds.clear()
        self._max_half = 0.0
        self._forget_cells()

    def rebuild(self) -> None:
        self.detach()
        self._selected &= set(self._store.ids())
        self._batch = True  # one bounding rect and one update for the lot
        try:
            for annotation_id in self._store.ids():
                self._on_added(annotation_id, 0)
        finally:
            self._batch = False
        self._attach()
        self._update_rect(whole=True)
        self._layer.update()

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        for item in self._items.values():
            item.setVisible(visible)
        self._layer.setVisible(visible)

    def set_selected(self, annotation_ids: set[str]) -> None:
        changed = self._selected ^ set(annotation_ids)
        self._selected = set(annotation_ids)
        for annotation_id in changed:
            self._restyle(annotation_id)

    def bounds(self, annotation_id: str) -> QRectF:
        item = self._items.get(annotation_id)
        return item.path().boundingRect() if item is not None else QRectF()

    def _attach(self) -> bool:
        scene = self._view.scene()
        if not isinstance(scene, QGraphicsScene):
            return False
        if self._layer.scene() is not scene:
            if self._layer.scene() is not None:
                self._layer.scene().removeItem(self._layer)
            scene.addItem(self._layer)
            self._layer.setVisible(self.visible)
        return True

    def _on_added(self, annotation_id: str, _row: int) -> None:
        if not self._attach():
            return
        annotation = self._store.get(annotation_id)
        item = QGraphicsPathItem(geometry_to_path(annotation.geometry))
        item.setZValue(Z_ANNOTATIONS)
        item.setVisible(self.visible)
        item.setData(0, annotation_id)
        self._items[annotation_id] = item
        rect = item.path().boundingRect()
        bounds = (rect.left(), rect.top(), rect.right(), rect.bottom())
        self._bounds[annotation_id] = bounds
        self._max_half = max(self._max_half, rect.width() / 2, rect.height() / 2)
        for exponent, cells in self._cells.items():
            cells.setdefault(self._cell_of(bounds, exponent), []).append(annotation_id)
        self._restyle(annotation_id)
        if not self._batch:
            self._update_rect()

    def _on_removed(self, annotation_id: str, _row: int) -> None:
        self._invalidate(annotation_id)
        item = self._items.pop(annotation_id, None)
        self._selected.discard(annotation_id)
        bounds = self._bounds.pop(annotation_id, None)
        if bounds is not None:
            for exponent, cells in self._cells.items():
                members = cells.get(self._cell_of(bounds, exponent))
                if members is not None and annotation_id in members:
                    members.remove(annotation_id)
        for key in [k for k in self._simplified if k[0] == annotation_id]:
            del self._simplified[key]
        if item is not None:
            self._layer.update()

    # -- drawing ---------------------------------------------------------------------------
    def _update_rect(self, whole: bool = False) -> None:
        if not self._bounds:
            self._layer.set_rect(QRectF())
            return
        if whole:
            x0 = min(b[0] for b in self._bounds.values())
            y0 = min(b[1] for b in self._bounds.values())
            x1 = max(b[2] for b in self._bounds.values())
            y1 = max(b[3] for b in self._bounds.values())
            self._layer.set_rect(QRectF(x0, y0, x1 - x0, y1 - y0).adjusted(-4, -4, 4, 4))
            return
        rect = self._layer.boundingRect()
        x0, y0, x1, y1 = self._bounds[next(reversed(self._bounds))]
        added = QRectF(x0, y0, x1 - x0, y1 - y0).adjusted(-4, -4, 4, 4)
        self._layer.set_rect(rect.united(added) if not rect.isNull() else added)

    @staticmethod
    def _cell_size(exponent: int) -> float:
        return CELL_SCREEN_PX / (2.0**exponent)

    def _cell_of(self, bounds: tuple[float, float, float, float], exponent: int) -> tuple[int, int]:
        size = self._cell_size(exponent)
        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        return math.floor(cx / size), math.floor(cy / size)

    def _forget_cells(self) -> None:
        self._cells.clear()
        self._merged.clear()
        self._simplified.clear()
        self._forget_raster()

    def _forget_raster(self, exponent: int | None = None, cell: Any = None) -> None:
        if exponent is None:
            self._raster.clear()
            self._raster_bytes = 0
            return
        for key in [k for k in self._raster if k[0] == exponent and k[1] == cell]:
            image, _origin = self._raster.pop(key)
            self._raster_bytes -= image.sizeInBytes()

    def _invalidate(self, annotation_id: str) -> None:
        """Drop the merged paths that hold ``annotation_id`` (it changed or went)."""
        bounds = self._bounds.get(annotation_id)
        if bounds is None:
            return
        for exponent in self._cells:
            cell = self._cell_of(bounds, exponent)
            self._merged.pop((exponent, cell), None)
            self._forget_raster(exponent, cell)

    def _cells_for(self, exponent: int) -> dict[tuple[int, int], list[str]]:
        cells = self._cells.get(exponent)
        if cells is None:
            cells = {}
            for annotation_id, bounds in self._bounds.items():
                cells.setdefault(self._cell_of(bounds, exponent), []).append(annotation_id)
            self._cells[exponent] = cells
        return cells

    def _path_at(self, annotation_id: str, exponent: int) -> QPainterPath:
        """The outline simplified to about a screen pixel at zoom ``2**exponent`` (a dot when
        it is smaller than DOT_SCREEN_PX)."""
        item = self._items[annotation_id]
        if exponent >= 0:
            return item.path()  # (the merged paths of finer levels share these)
        key = (annotation_id, exponent)
        path = self._simplified.get(key)
        if path is None:
            scale = 2.0**exponent
            x0, y0, x1, y1 = self._bounds[annotation_id]
            if max(x1 - x0, y1 - y0) * scale < DOT_SCREEN_PX:
                path = QPainterPath()
                side = 1.0 / scale
                path.addRect(QRectF((x0 + x1 - side) / 2, (y0 + y1 - side) / 2, side, side))
            else:
                geometry = self._store.get(annotation_id).geometry
                simple = geometry.simplify(0.75 / scale, preserve_topology=False)
                path = geometry_to_path(simple if not simple.is_empty else geometry)
            self._simplified[key] = path
        return path

    def _merged_paths(self, exponent: int, cell: tuple[int, int]) -> dict[int, QPainterPath]:
        key = (exponent, cell)
        merged = self._merged.get(key)
        if merged is None:
            merged = {}
            for annotation_id in self._cells_for(exponent).get(cell, []):
                rgba = self._items[annotation_id].pen().color().rgba()
                path = merged.get(rgba)
                if path is None:
                    path = merged[rgba] = QPainterPath()
                    path.setFillRule(Qt.FillRule.OddEvenFill)
                path.addPath(self._path_at(annotation_id, exponent))
            self._merged[key] = merged
        return merged

    def paint_layer(self, painter: QPainter, option: QStyleOptionGraphicsItem) -> None:
        if not self._items:
            return
        transform = painter.worldTransform()
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(transform)
        exponent = min(MAX_LOD_EXPONENT, max(MIN_LOD_EXPONENT, math.floor(math.log2(scale))))
        size = self._cell_size(exponent)
        margin = self._max_half + 4
        exposed = option.exposedRect.adjusted(-margin, -margin, margin, margin)
        cells = self._cells_for(exponent)
        axis_aligned = transform.type().value <= QTransform.TransformationType.TxScale.value
        drawn = rendered = 0
        for cy in range(math.floor(exposed.top() / size), math.floor(exposed.bottom() / size) + 1):
            for cx in range(
                math.floor(exposed.left() / size), math.floor(exposed.right() / size) + 1
            ):
                if (cx, cy) not in cells:
                    continue
                drawn += 1
                if not axis_aligned:  # (never in the viewer) draw the paths themselves
                    self._draw_cell(painter, exponent, (cx, cy))
                    continue
                key = (exponent, (cx, cy), round(scale, 9))
                cached = self._raster.get(key)
                if cached is None:
                    cached = self._render_cell(exponent, (cx, cy), scale, margin)
                    rendered += 1
                else:
                    self._raster.move_to_end(key)
                image, origin = cached
                if image.isNull():
                    continue
                # images are drawn 1:1 on device pixels
                corner = transform.map(origin)
                painter.save()
                painter.resetTransform()
                painter.drawImage(QPointF(round(corner.x()), round(corner.y())), image)
                painter.restore()
        for annotation_id in self._selected:
            item = self._items.get(annotation_id)
            if item is not None:
                painter.setPen(item.pen())
                painter.setBrush(item.brush())
                painter.drawPath(item.path())
        self.last_paint = {"cells": drawn, "rendered": rendered}

    def _pen(self, rgba: int) -> QPen:
        pen = QPen(QColor.fromRgba(rgba), OUTLINE_WIDTH)
        pen.setCosmetic(True)
        return pen

    def _draw_cell(self, painter: QPainter, exponent: int, cell: tuple[int, int]) -> None:
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for rgba, path in self._merged_paths(exponent, cell).items():
            painter.setPen(self._pen(rgba))
            painter.drawPath(path)

    def _render_cell(
        self, exponent: int, cell: tuple[int, int], scale: float, margin: float
    ) -> tuple[QImage, QPointF]:
        """The outlines of ``cell`` drawn at ``scale`` into an image (transparent elsewhere)."""
        size = self._cell_size(exponent)
        origin = QPointF(cell[0] * size - margin, cell[1] * size - margin)
        side = max(1, math.ceil((size + 2 * margin) * scale) + 2)
        image = QImage(side, side, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.scale(scale, scale)
        painter.translate(-origin.x(), -origin.y())
        self._draw_cell(painter, exponent, cell)
        painter.end()
        key = (exponent, cell, round(scale, 9))
        self._raster[key] = (image, origin)
        self._raster_bytes += image.sizeInBytes()
        while self._raster_bytes > RASTER_CACHE_BYTES and len(self._raster) > 1:
            _key, (old, _origin) = self._raster.popitem(last=False)
            self._raster_bytes -= old.sizeInBytes()
        return image, origin

    def _restyle_all(self) -> None:
        for annotation_id in self._items:
            self._restyle(annotation_id)
        self._merged.clear()
        self._forget_raster()
        self._layer.update()

    def _restyle(self, annotation_id: str) -> None:
        item = self._items.get(annotation_id)
        if item is None:
            return
        color = class_color(self._classes, self._store.get(annotation_id))
        selected = annotation_id in self._selected
        pen = QPen(color.lighter(130) if selected else color, 4.0 if selected else 2.0)
        pen.setCosmetic(True)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        item.setPen(pen)
        fill = QColor(color)
        fill.setAlpha(70 if selected else 0)
        item.setBrush(QBrush(fill) if selected else QBrush(Qt.BrushStyle.NoBrush))
        item.setZValue(Z_ANNOTATIONS + (1 if selected else 0))
        if not self._batch:
            self._invalidate(annotation_id)
            self._layer.update()
