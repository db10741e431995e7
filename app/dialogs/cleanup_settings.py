"""Cleanup on accept (remembered) and the settings of Segment everything, as dialogs.

Distances are in um and areas in um^2 when the slide has a pixel size, px / px^2 otherwise; the
dialogs say which. Both are remembered in the user's settings, and so is the method of Segment
everything: an instance decoder (its file) or the point grid (:data:`GRID`).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from app.session.settings import app_settings

_CLEANUP_KEYS = ("smooth", "fill_holes_below", "drop_parts_below", "keep_largest_only", "expand")


def saved_cleanup() -> Any:
    """The remembered :class:`engine.cleanup.CleanupSettings` (all off the first time)."""
    from engine.cleanup import CleanupSettings

    settings = app_settings()
    values: dict[str, Any] = {}
    for key in _CLEANUP_KEYS:
        raw = settings.value(f"cleanup/{key}")
        if raw is None:
            continue
        if key == "keep_largest_only":
            values[key] = str(raw).lower() in ("true", "1")
        else:
            try:
                values[key] = float(raw)
            except (TypeError, ValueError):
                continue
    try:
        return CleanupSettings(**values)
    except ValueError:
        return CleanupSettings()


def save_cleanup(cleanup: Any) -> None:
    settings = app_settings()
    for key in _CLEANUP_KEYS:
        settings.setValue(f"cleanup/{key}", getattr(cleanup, key))
    settings.sync()


def _spin(value: float, maximum: float, suffix: str, minimum: float = 0.0) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(2)
    box.setRange(minimum, maximum)
    box.setValue(min(value, maximum))
    box.setSuffix(f" {suffix}")
    return box


class CleanupDialog(QDialog):
    """Edit the cleanup settings; ``applied(settings)`` is called on Apply and OK (preview)."""

    def __init__(self, cleanup: Any, has_pixel_size: bool, applied: Any, parent: QWidget | None):
        super().__init__(parent)
        self.setWindowTitle("Cleanup on accept")
        length = "um" if has_pixel_size else "px"
        area = "um²" if has_pixel_size else "px²"
        form = QFormLayout(self)
        self.smooth = _spin(cleanup.smooth, 1000, length)
        self.fill = _spin(min(cleanup.fill_holes_below, 1e9), 1e9, area)
        self.drop = _spin(cleanup.drop_parts_below, 1e9, area)
        self.largest = QCheckBox("Keep the largest part only")
        self.largest.setChecked(cleanup.keep_largest_only)
        self.expand = _spin(cleanup.expand, 1000, length, minimum=-1000)
        form.addRow("Smoothing radius", self.smooth)
        form.addRow("Fill holes smaller than", self.fill)
        form.addRow("Drop parts smaller than", self.drop)
        form.addRow("", self.largest)
        form.addRow("Expand (negative: contract)", self.expand)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        apply_button = buttons.button(QDialogButtonBox.StandardButton.Apply)
        apply_button.clicked.connect(lambda: applied(self.settings()))
        form.addRow(buttons)
        self._applied = applied

    def settings(self) -> Any:
        from engine.cleanup import CleanupSettings

        return CleanupSettings(
            smooth=self.smooth.value(),
            fill_holes_below=self.fill.value(),
            drop_parts_below=self.drop.value(),
            keep_largest_only=self.largest.isChecked(),
            expand=self.expand.value(),
        )


def saved_everything() -> Any:
    """The remembered :class:`engine.everything.EverythingSettings` and output kind."""
    from engine.everything import EverythingSettings

    settings = app_settings()

    def number(key: str, default: float) -> float:
        try:
            return float(str(settings.value(f"everything/{key}", default)))
        except (TypeError, ValueError):
            return default

    max_area = number("max_area", 0.0)
    try:
        chosen = EverythingSettings(
            points_per_side=int(number("points_per_side", 16)),
            pred_iou_thresh=number("pred_iou_thresh", 0.8),
            stability_score_thresh=number("stability_score_thresh", 0.9),
            min_area=number("min_area", 0.0),
            max_area=max_area if max_area > 0 else None,
        )
    except ValueError:
        chosen = EverythingSettings()
    return chosen, str(settings.value("everything/output", "annotation"))


def save_everything(chosen: Any, output: str) -> None:
    settings = app_settings()
    settings.setValue("everything/points_per_side", chosen.points_per_side)
    settings.setValue("everything/pred_iou_thresh", chosen.pred_iou_thresh)
    settings.setValue("everything/stability_score_thresh", chosen.stability_score_thresh)
    settings.setValue("everything/min_area", chosen.min_area)
    settings.setValue("everything/max_area", chosen.max_area or 0.0)
    settings.setValue("everything/output", output)
    settings.sync()


#: the method value of SAM's point grid (the other methods are decoder files)
GRID = "grid"
GRID_LABEL = "Point grid (any object)"


def saved_everything_method() -> str:
    """The remembered method of Segment everything: a decoder file's path, or :data:`GRID`."""
    return str(app_settings().value("everything/method", GRID) or GRID)


def save_everything_method(method: str) -> None:
    settings = app_settings()
    settings.setValue("everything/method", method)
    settings.sync()


class EverythingDialog(QDialog):
    """Method, grid density, thresholds, area limits and output kind of Segment everything.

    ``methods`` lists (label, value, tooltip) of the methods to offer (decoder paths and
    :data:`GRID`); without it only the grid is offered. The grid's own settings are disabled
    while a decoder is chosen; area limits left at 0 / no limit then take the decoder's own.
    """

    def __init__(
        self,
        chosen: Any,
        output: str,
        has_pixel_size: bool,
        parent: QWidget | None,
        methods: list[tuple[str, str, str]] | None = None,
        method: str = GRID,
    ):
        super().__init__(parent)
        self.setWindowTitle("Segment everything in region")
        area = "um²" if has_pixel_size else "px²"
        form = QFormLayout(self)
        self.method_combo = QComboBox()
        for label, value, tip in methods or [(GRID_LABEL, GRID, "")]:
            self.method_combo.addItem(label, value)
            self.method_combo.setItemData(
                self.method_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        index = self.method_combo.findData(method)
        self.method_combo.setCurrentIndex(index if index >= 0 else self.method_combo.count() - 1)
        self.method_note = QLabel("")
        self.method_note.setWordWrap(True)
        form.addRow("Method", self.method_combo)
        form.addRow("", self.method_note)
        self.points = QSpinBox()
        self.points.setRange(2, 64)
        self.points.setValue(chosen.points_per_side)
        self.iou = _spin(chosen.pred_iou_thresh, 1.5, "")
        self.stability = _spin(chosen.stability_score_thresh, 1.0, "")
        self.min_area = _spin(chosen.min_area, 1e9, area)
        self.max_area = _spin(chosen.max_area or 0.0, 1e9, area)
        self.max_area.setSpecialValueText("no limit")
        self.output = QComboBox()
        self.output.addItem("Annotations", "annotation")
        self.output.addItem("Detections", "detection")
        self.output.setCurrentIndex(1 if output == "detection" else 0)
        form.addRow("Points per side (per field)", self.points)
        form.addRow("Predicted IoU at least", self.iou)
        form.addRow("Stability at least", self.stability)
        form.addRow("Smallest object", self.min_area)
        form.addRow("Largest object", self.max_area)
        form.addRow("Objects as", self.output)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self._method_changed()

    def _method_changed(self, _index: int = 0) -> None:
        grid = self.method() == GRID
        for widget in (self.points, self.iou, self.stability):
            widget.setEnabled(grid)
        self.method_note.setText(
            "SAM prompted with a grid of points in each field: any kind of object, slower."
            if grid
            else "A decoder trained to find every object of its kind, at its own "
            "magnification. Smallest 0 / largest no limit: the decoder's own limits."
        )

    def method(self) -> str:
        """The chosen method: a decoder file's path or :data:`GRID`."""
        return str(self.method_combo.currentData() or GRID)

    def chosen(self) -> tuple[Any, str]:
        from engine.everything import EverythingSettings

        max_area = self.max_area.value()
        settings = EverythingSettings(
            points_per_side=self.points.value(),
            pred_iou_thresh=self.iou.value(),
            stability_score_thresh=self.stability.value(),
            min_area=self.min_area.value(),
            max_area=max_area if max_area > 0 and max_area >= self.min_area.value() else None,
        )
        return settings, str(self.output.currentData())


__all__ = [
    "GRID",
    "GRID_LABEL",
    "CleanupDialog",
    "EverythingDialog",
    "save_cleanup",
    "save_everything",
    "save_everything_method",
    "saved_cleanup",
    "saved_everything",
    "saved_everything_method",
]
