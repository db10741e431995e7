# ruff: noqa: N802  (Qt names its virtual methods and signals in camelCase)
"""Overview (minimap): a thumbnail of the whole slide with the visible rectangle on it.

Clicking or dragging on it centres the viewer there. It can sit in a dock or, as SlideView does by
default, in a corner of the viewer itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

if TYPE_CHECKING:
    from app.viewer.slide_view import SlideView


class OverviewWidget(QWidget):
    """Thumbnail of ``view``'s slide; the red rectangle is what ``view`` shows."""

    def __init__(self, view: SlideView, parent: QWidget | None = None, max_side: int = 200) -> None:
        super().__init__(parent)
        self._view = view
        self._max_side = max_side
        self._dragging = False
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        view.viewChanged.connect(self.update)
        view.overviewChanged.connect(self._on_overview_changed)
        self._on_overview_changed()

    def sizeHint(self) -> QSize:
        slide = self._view.slide()
        if slide is None:
            return QSize(self._max_side, self._max_side // 2)
        width, height = slide.dimensions
        scale = self._max_side / max(width, height)
        return QSize(max(16, round(width * scale)), max(16, round(height * scale)))

    def _on_overview_changed(self) -> None:
        self.updateGeometry()
        if self.parent() is self._view:
            self.resize(self.sizeHint())
            self._view.place_overlays()
        self.update()

    def image_rect(self) -> QRectF:
        """Where the slide is drawn inside the widget (aspect ratio kept, centred)."""
        slide = self._view.slide()
        if slide is None:
            return QRectF()
        width, height = slide.dimensions
        scale = min(self.width() / width, self.height() / height)
        w, h = width * scale, height * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def widget_to_level0(self, pos: QPointF) -> QPointF:
        slide = self._view.slide()
        target = self.image_rect()
        if slide is None or target.isEmpty():
            return QPointF()
        width, height = slide.dimensions
        return QPointF(
            (pos.x() - target.x()) * width / target.width(),
            (pos.y() - target.y()) * height / target.height(),
        )

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(40, 40, 40, 220))
        slide = self._view.slide()
        target = self.image_rect()
        if slide is None or target.isEmpty():
            painter.end()
            return
        image = self._view.overview_image()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        if image is None:
            painter.fillRect(target, QColor(255, 255, 255))
        else:
            painter.drawImage(target, image)
        width, height = slide.dimensions
        visible = self._view.visible_rect_level0()
        sx, sy = target.width() / width, target.height() / height
        frame = QRectF(
            target.x() + visible.x() * sx,
            target.y() + visible.y() * sy,
            visible.width() * sx,
            visible.height() * sy,
        ).intersected(target.adjusted(0, 0, -1, -1))
        pen = QPen(QColor(230, 30, 30))
        pen.setWidthF(1.5)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if frame.width() < 3 or frame.height() < 3:  # too small to see: mark the centre
            centre = frame.center()
            painter.drawLine(
                QPointF(centre.x() - 5, centre.y()), QPointF(centre.x() + 5, centre.y())
            )
            painter.drawLine(
                QPointF(centre.x(), centre.y() - 5), QPointF(centre.x(), centre.y() + 5)
            )
        else:
            painter.drawRect(frame)
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._dragging = True
            self._navigate(event.position())
            event.accept()
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._dragging:
            self._navigate(event.position())
            event.accept()
        else:
            super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._dragging and event.button() == Qt.MouseButton.LeftButton:
            self._dragging = False
            event.accept()
        else:
            super().mouseReleaseEvent(event)

    def _navigate(self, pos: QPointF) -> None:
        if self._view.slide() is None:
            return
        level0 = self.widget_to_level0(pos)
        self._view.centre_on_level0(level0.x(), level0.y())
