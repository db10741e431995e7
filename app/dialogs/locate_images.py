"""Locate...: choose the new files of a project's missing images among the files found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

LEAVE = "(leave as it is)"


class LocateImagesDialog(QDialog):
    """One row per missing image: its name, where the project expects it, and a choice among
    the files found (the first is preselected; images with no match are shown, not choosable)."""

    def __init__(
        self, missing: list[Any], matches: dict[str, list[Path]], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Locate missing images")
        self.setObjectName("locateImagesDialog")
        self._missing = missing
        found = sum(1 for image in missing if matches.get(image.entry_id))
        label = QLabel(
            f"{found} of {len(missing)} missing images were found. Choose the file for each; "
            "the project's URIs are updated (project.qpproj is backed up first)."
        )
        label.setWordWrap(True)
        self.table = QTableWidget(len(missing), 3)
        self.table.setObjectName("locateTable")
        self.table.setHorizontalHeaderLabels(["Image", "Expected at", "New file"])
        self.table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self._combos: list[QComboBox] = []
        for row, image in enumerate(missing):
            self.table.setItem(row, 0, QTableWidgetItem(image.name))
            self.table.setItem(row, 1, QTableWidgetItem(str(image.path or image.uri or "")))
            combo = QComboBox()
            paths = matches.get(image.entry_id, [])
            for path in paths:
                combo.addItem(str(path), str(path))
            combo.addItem(LEAVE if paths else "(not found)", None)
            combo.setEnabled(bool(paths))
            self.table.setCellWidget(row, 2, combo)
            self._combos.append(combo)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Update project")
        ok.setEnabled(found > 0)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(900, 120 + 32 * min(len(missing), 12))

    def chosen(self) -> dict[str, Path]:
        """Entry id -> the file chosen (images left as they are are not included)."""
        result: dict[str, Path] = {}
        for image, combo in zip(self._missing, self._combos, strict=True):
            value = combo.currentData()
            if value:
                result[image.entry_id] = Path(value)
        return result


def choose_image_files(
    missing: list[Any], matches: dict[str, list[Path]], parent: QWidget | None = None
) -> dict[str, Path] | None:
    """Show the dialog (modal); the files chosen, or None when cancelled."""
    dialog = LocateImagesDialog(missing, matches, parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return dialog.chosen()
