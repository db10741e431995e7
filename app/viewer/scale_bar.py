# ruff: noqa: N802  (Qt names its virtual methods and signals in camelCase)
"""Scale bar overlay: a round physical length (10 um, 50 um, 1 mm ...) drawn to scale."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QWidget

# Round lengths in micrometres, shortest first.
NICE_LENGTHS_UM: tuple[float, ...] = tuple(
    mantissa * 10.0**exponent for exponent in range(-1, 6) for mantissa in (1.0, 2.0, 5.0)
)


@dataclass(frozen=True)
class ScaleLength:
    """A bar of ``micrometres`` that is ``pixels`` long on screen, labelled ``label``."""

    micrometres: float
    pixels: float
    label: str


def format_length(micrometres: float) -> str:
    if micrometres >= 1000.0:
        return f"{micrometres / 1000.0:g} mm"
    return f"{micrometres:g} µm"


def nice_scale_length(um_per_screen_pixel: float, max_pixels: float = 160.0) -> ScaleLength:
    """The longest round length that fits in ``max_pixels`` (the shortest one when none fits)."""
    if not um_per_screen_pixel > 0.0:
        raise ValueError(f"micrometres per screen pixel must be > 0, got {um_per_screen_pixel}")
    chosen = NICE_LENGTHS_UM[0]
    for length in NICE_LENGTHS_UM:
        if length / um_per_screen_pixel <= max_pixels:
            chosen = length
    return ScaleLength(chosen, chosen / um_per_screen_pixel, format_length(chosen))


class ScaleBar(QWidget):
    """A small translucent overlay on the viewer; hidden while the scale is unknown (no mpp) or
    when the user turned it off (``set_wanted(False)``)."""

    def __init__(self, parent: QWidget | None = None, max_pixels: float = 160.0) -> None:
        super().__init__(parent)
        self._um_per_pixel: float | None = None
        self._max_pixels = max_pixels
        self._wanted = True
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.resize(int(max_pixels) + 80, 34)
        self.hide()

    def set_um_per_pixel(self, um_per_pixel: float | None) -> None:
        """Micrometres per screen pixel (mpp x view downsample), None when unknown."""
        value = um_per_pixel if um_per_pixel is not None and um_per_pixel > 0 else None
        if value != self._um_per_pixel:
            self._um_per_pixel = value
            self.update()
        self._sync_visibility()

    def set_wanted(self, wanted: bool) -> None:
        self._wanted = wanted
        self._sync_visibility()

    def _sync_visibility(self) -> None:
        self.setVisible(self._wanted and self._um_per_pixel is not None)

    def length(self) -> ScaleLength | None:
        if self._um_per_pixel is None:
            return None
        return nice_scale_length(self._um_per_pixel, self._max_pixels)

    def paintEvent(self, event: QPaintEvent) -> None:
        length = self.length()
        if length is None:
            return
        painter = QPainter(self)
        font = QFont(painter.font())
        font.setPointSizeF(9.0)
        painter.setFont(font)
        text_width = painter.fontMetrics().horizontalAdvance(length.label)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(255, 255, 255, 210))
        painter.drawRoundedRect(
            QRectF(0, 0, max(length.pixels, text_width) + 16, self.height()), 4, 4
        )
        pen = QPen(QColor(0, 0, 0))
        pen.setWidthF(3.0)
        pen.setCapStyle(Qt.PenCapStyle.FlatCap)
        painter.setPen(pen)
        y = self.height() - 8.0
        painter.drawLine(QPointF(8.0, y), QPointF(8.0 + length.pixels, y))
        painter.drawText(
            QRectF(8, 2, text_width + 8, self.height() - 14),
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            length.label,
        )
        painter.end()
