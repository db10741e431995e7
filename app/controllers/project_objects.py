"""A QuPath project's own objects in the window: the detection layer and Locate... for images
that moved.

Annotations (and TMA cores) of a project image go to the annotation store, where they can be
selected, refined, reclassified and saved like the app's own. Detections, cells and tiles can
number in the hundreds of thousands, so they are not list items: :class:`DetectionLayer` draws
them as one scene item that paints only what the view shows, as outlines when they are large
enough on screen and as dots otherwise, with a cap on what one paint draws. The layer can be
hidden (View > Show detections, D) and is exported with the annotations.

When a project's image file is missing, :meth:`ProjectObjectsController.offer_locate` says so
and offers Locate...: search a folder (recursively) for the file name, show the matches, and
update the URIs in ``project.qpproj`` (backed up first, written atomically) through
:func:`qupath_bridge.relink_images`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QGraphicsItem, QGraphicsScene, QStyleOptionGraphicsItem, QWidget

from app.session.overlay import Z_ANNOTATIONS, class_color, geometry_to_path

#: Object types shown in the detection layer rather than the annotation list.
LAYER_TYPES = frozenset({"detection", "cell", "tile"})
#: Below this size on screen (pixels) an object is drawn as a dot.
MIN_OUTLINE_PX = 4.0
#: At most this many outlines per paint; beyond it, the visible objects are drawn as dots.
MAX_OUTLINES = 4000
#: Outline paths kept between paints.
PATH_CACHE = 20000


def split_objects(objects: list[Any]) -> tuple[list[Any], list[Any]]:
    """(annotations for the store, detections for the layer), each in the given order."""
    editable = [obj for obj in objects if obj.object_type not in LAYER_TYPES]
    layer = [obj for obj in objects if obj.object_type in LAYER_TYPES]
    return editable, layer


class DetectionLayer(QGraphicsItem):
    """Many read-only objects as one item in level-0 scene coordinates.

    Each paint selects the objects whose bounds meet the exposed rectangle (numpy over the
    bounds of all objects), draws them as cosmetic outlines when they are at least
    :data:`MIN_OUTLINE_PX` on screen and there are at most :data:`MAX_OUTLINES`, and as dots at
    their centres otherwise. ``last_paint`` tells what the latest paint did.
    """

    def __init__(self, objects: list[Any], colors: list[QColor]) -> None:
        super().__init__()
        self._objects = objects
        count = len(objects)
        self._bounds = np.zeros((count, 4), dtype=np.float64)
        for i, obj in enumerate(objects):
            self._bounds[i] = obj.geometry.bounds
        self._centres = np.column_stack(
            [
                (self._bounds[:, 0] + self._bounds[:, 2]) / 2,
                (self._bounds[:, 1] + self._bounds[:, 3]) / 2,
            ]
        )
        self._sizes = np.maximum(
            self._bounds[:, 2] - self._bounds[:, 0], self._bounds[:, 3] - self._bounds[:, 1]
        )
        self._paths: dict[int, QPainterPath] = {}
        self.pen_width = 1.5
        self.set_colors(colors, repaint=False)
        if count:
            x0, y0 = self._bounds[:, 0].min(), self._bounds[:, 1].min()
            x1, y1 = self._bounds[:, 2].max(), self._bounds[:, 3].max()
            self._rect = QRectF(x0, y0, x1 - x0, y1 - y0).adjusted(-2, -2, 2, 2)
        else:
            self._rect = QRectF()
        self.last_paint: dict[str, Any] = {"outlines": 0, "dots": 0, "ms": 0.0}
        self.setZValue(Z_ANNOTATIONS - 1)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def __len__(self) -> int:
        return len(self._objects)

    def set_colors(self, colors: list[QColor], repaint: bool = True) -> None:
        """Give the objects (in their order) new colours."""
        keys = [color.rgba() for color in colors]
        palette = list(dict.fromkeys(keys))
        index = {key: i for i, key in enumerate(palette)}
        self.set_color_index(
            [QColor.fromRgba(key) for key in palette],
            np.array([index[key] for key in keys], dtype=np.int32),
            repaint,
        )

    def set_color_index(
        self, palette: list[QColor], color_index: np.ndarray, repaint: bool = True
    ) -> None:
        """Recolour: object i takes ``palette[color_index[i]]`` (fast for many objects)."""
        if len(color_index) != len(self._objects):
            raise ValueError(f"{len(color_index)} colours for {len(self._objects)} objects")
        self._palette = list(palette)
        self._color_index = np.asarray(color_index, dtype=np.int32)
        self._all_dots: dict[int, QPolygonF] = {}
        self._color_counts = np.bincount(self._color_index, minlength=len(self._palette))
        if repaint:
            self.update()

    def boundingRect(self) -> QRectF:  # noqa: N802 (Qt's name)
        return self._rect

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        start = time.perf_counter()
        if not self._objects:
            return
        exposed = option.exposedRect
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        b = self._bounds
        visible = (
            (b[:, 2] >= exposed.left())
            & (b[:, 0] <= exposed.right())
            & (b[:, 3] >= exposed.top())
            & (b[:, 1] <= exposed.bottom())
        )
        indices = np.flatnonzero(visible)
        large = indices[self._sizes[indices] * scale >= MIN_OUTLINE_PX]
        if len(large) > MAX_OUTLINES:
            large = large[:0]
        small = np.setdiff1d(indices, large, assume_unique=True)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for color_index, color in enumerate(self._palette):
            pen = QPen(color, self.pen_width)
            pen.setCosmetic(True)
            painter.setPen(pen)
            for i in large[self._color_index[large] == color_index]:
                painter.drawPath(self._path(int(i)))
            dots = small[self._color_index[small] == color_index]
            if len(dots):
                pen.setWidthF(2 * self.pen_width)
                painter.setPen(pen)
                painter.drawPoints(self._dots(color_index, dots))
        self.last_paint = {
            "outlines": len(large),
            "dots": len(small),
            "ms": (time.perf_counter() - start) * 1000.0,
        }

    def _dots(self, color_index: int, indices: np.ndarray) -> QPolygonF:
        """The centres of ``indices`` (all of one colour); when most of that colour's objects
        are shown, all its centres, built once (points outside the view cost little)."""
        every = self._all_dots.get(color_index)
        total = self._color_counts[color_index]
        if len(indices) * 2 >= total:
            if every is None:
                mine = np.flatnonzero(self._color_index == color_index)
                every = _polygon(self._centres[mine])
                self._all_dots[color_index] = every
            return every
        return _polygon(self._centres[indices])

    def _path(self, index: int) -> QPainterPath:
        path = self._paths.get(index)
        if path is None:
            if len(self._paths) >= PATH_CACHE:
                self._paths.clear()
            obj = self._objects[index]
            path = geometry_to_path(obj.geometry)
            if obj.nucleus_geometry is not None:
                path.addPath(geometry_to_path(obj.nucleus_geometry))
            self._paths[index] = path
        return path


def _polygon(points: np.ndarray) -> QPolygonF:
    return QPolygonF([QPointF(x, y) for x, y in points.tolist()])


class ProjectObjectsController(QObject):
    """The window's detection layer and the Locate... flow for missing project images."""

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._objects: list[Any] = []
        self._layer: DetectionLayer | None = None
        self.visible = True

    # ------------------------------------------------------------------ the layer

    def take_layer_objects(self, objects: list[Any]) -> list[Any]:
        """Put the detections of ``objects`` in the layer; return the rest (for the store)."""
        editable, layer = split_objects(objects)
        self.set_objects(layer)
        return editable

    def set_objects(self, objects: list[Any]) -> None:
        self.clear()
        self._objects = list(objects)
        if not self._objects:
            return
        scene = self._window.view.scene()
        if not isinstance(scene, QGraphicsScene):
            return
        classes = self._window.classes
        layer = DetectionLayer(self._objects, [class_color(classes, o) for o in self._objects])
        layer.setVisible(self.visible)
        scene.addItem(layer)
        self._layer = layer

    def objects(self) -> list[Any]:
        """The objects of the layer (exported with the annotations)."""
        return list(self._objects)

    def layer(self) -> DetectionLayer | None:
        return self._layer

    def clear(self) -> None:
        if self._layer is not None and self._layer.scene() is not None:
            self._layer.scene().removeItem(self._layer)
        self._layer = None
        self._objects = []

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        if self._layer is not None:
            self._layer.setVisible(visible)

    # ------------------------------------------------------------------ Locate...

    def offer_locate(self, index: int | None = None) -> bool:
        """Say that an image is missing and offer Locate...; True when the image (``index``, or
        the first missing one) was relinked and opened."""
        window = self._window
        images = list(window.project_images)
        missing = [i for i, image in enumerate(images) if not image.exists]
        if not missing:
            return False
        target = index if index is not None else missing[0]
        image = images[target]
        where = image.path or image.uri
        others = len(missing) - (1 if target in missing else 0)
        more = f" ({others} more of the project's images are missing too)" if others else ""
        text = (
            f"The project's image {image.name!r} is not on this computer "
            f"(expected at {where}){more}.\n\nLocate it? WSI-SAM Studio searches a folder for "
            "the file name and updates the project (project.qpproj is backed up first)."
        )
        if not window.prompter.ask_locate("Image not found", text):
            return False
        return self.locate(target)

    def locate(self, index: int | None = None) -> bool:
        """Search a folder for the missing images, let the user pick, relink; then open the
        image ``index`` (or the first image found)."""
        import qupath_bridge

        window = self._window
        project = window.project
        if project is None:
            return False
        missing = qupath_bridge.missing_images(project.images)
        if not missing:
            window.statusBar().showMessage("Every image of the project is found", 8000)
            return False
        folder = window.prompter.ask_search_folder(str(Path(project.path).parent))
        if not folder:
            return False
        try:
            matches = qupath_bridge.find_images(missing, folder)
        except qupath_bridge.BridgeError as exc:
            window.prompter.error("Cannot search", str(exc))
            return False
        if not any(matches.values()):
            names = ", ".join(image.name for image in missing[:3])
            window.prompter.error(
                "Image not found", f"No file named like {names} was found in {folder}."
            )
            return False
        chosen = window.prompter.choose_image_files(missing, matches)
        if not chosen:
            return False
        try:
            backup = qupath_bridge.relink_images(project, chosen)
        except qupath_bridge.BridgeError as exc:
            window.prompter.error("Cannot update the project", str(exc))
            return False
        window.project_images = list(project.images)
        window.project_dock.set_images(window.project_images)
        window.statusBar().showMessage(
            f"Relinked {len(chosen)} image(s); the old project file is in {backup}", 10000
        )
        if index is None or not window.project_images[index].exists:
            found = [i for i, image in enumerate(window.project_images) if image.exists]
            if not found:
                return False
            index = found[0]
        return bool(window.open_project_image(index))
