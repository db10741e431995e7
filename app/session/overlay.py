"""Annotation outlines over the slide: one ``QGraphicsPathItem`` per annotation in level-0 scene
coordinates with a cosmetic pen, so outlines stay one or two screen pixels wide at every zoom."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsScene

from app.session.annotations import AnnotationStore
from app.session.classes import ClassList

# stacking above the viewer's tiles
Z_ANNOTATIONS = 100.0
Z_PREVIEW = 200.0
Z_PROMPT = 300.0


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


class AnnotationOverlay:
    """Keeps one outline item per annotation of ``store`` in ``scene``."""

    def __init__(self, view: Any, store: AnnotationStore, classes: ClassList):
        """``view`` is the SlideView; its ``scene()`` is looked up each time (it may change)."""
        self._view = view
        self._store = store
        self._classes = classes
        self._items: dict[str, QGraphicsPathItem] = {}
        self._selected: set[str] = set()
        self.visible = True
        store.added.connect(self._on_added)
        store.removed.connect(self._on_removed)
        store.changed.connect(self._restyle)
        store.reset.connect(self.rebuild)
        classes.changed.connect(self._restyle_all)

    def items(self) -> dict[str, QGraphicsPathItem]:
        return dict(self._items)

    def item(self, annotation_id: str) -> QGraphicsPathItem | None:
        return self._items.get(annotation_id)

    def detach(self) -> None:
        """Take every item out of the scene (before the viewer clears it for a new slide)."""
        for item in self._items.values():
            scene = item.scene()
            if scene is not None:
                scene.removeItem(item)
        self._items.clear()

    def rebuild(self) -> None:
        self.detach()
        self._selected &= set(self._store.ids())
        for annotation_id in self._store.ids():
            self._on_added(annotation_id, 0)

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        for item in self._items.values():
            item.setVisible(visible)

    def set_selected(self, annotation_ids: set[str]) -> None:
        changed = self._selected ^ set(annotation_ids)
        self._selected = set(annotation_ids)
        for annotation_id in changed:
            self._restyle(annotation_id)

    def bounds(self, annotation_id: str) -> QRectF:
        item = self._items.get(annotation_id)
        return item.path().boundingRect() if item is not None else QRectF()

    def _on_added(self, annotation_id: str, _row: int) -> None:
        scene = self._view.scene()
        if not isinstance(scene, QGraphicsScene):
            return
        annotation = self._store.get(annotation_id)
        item = QGraphicsPathItem(geometry_to_path(annotation.geometry))
        item.setZValue(Z_ANNOTATIONS)
        item.setVisible(self.visible)
        item.setData(0, annotation_id)
        scene.addItem(item)
        self._items[annotation_id] = item
        self._restyle(annotation_id)

    def _on_removed(self, annotation_id: str, _row: int) -> None:
        item = self._items.pop(annotation_id, None)
        self._selected.discard(annotation_id)
        if item is not None and item.scene() is not None:
            item.scene().removeItem(item)

    def _restyle_all(self) -> None:
        for annotation_id in self._items:
            self._restyle(annotation_id)

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
