"""``Prompter``: the dialogs of the main window. Errors are shown without blocking the window;
questions are modal. Tests replace the instance with one that answers programmatically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QColorDialog,
    QFileDialog,
    QInputDialog,
    QMessageBox,
    QWidget,
)

SLIDE_FILTER = (
    "Slides and images (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.svslide *.bif "
    "*.dcm *.png *.jpg *.jpeg *.bmp);;All files (*)"
)
PROJECT_FILTER = "QuPath project (project.qpproj *.qpproj);;All files (*)"
GEOJSON_FILTER = "GeoJSON (*.geojson *.json);;All files (*)"


class Prompter:
    """Dialogs parented to ``parent``."""

    def __init__(self, parent: QWidget | None = None):
        self.parent = parent

    # -- messages --------------------------------------------------------------------------
    def error(self, title: str, text: str) -> None:
        """Tell the user what went wrong, without blocking the event loop."""
        box = QMessageBox(
            QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self.parent
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()

    # -- questions -------------------------------------------------------------------------
    def ask_restore(self, count: int, slide_name: str) -> bool:
        answer = QMessageBox.question(
            self.parent,
            "Restore unsaved annotations?",
            f"{slide_name} has {count} unsaved change{'s' if count != 1 else ''} from an earlier "
            "session that ended without saving.\n\nRestore them? (If you choose No they are "
            "kept aside in the journal folder, not deleted.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    def ask_unsaved(self, slide_name: str) -> str:
        """ "save", "discard" or "cancel"."""
        answer = QMessageBox.question(
            self.parent,
            "Unsaved annotations",
            f"The annotations of {slide_name} have unsaved changes. Save them first?",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save,
        )
        if answer == QMessageBox.StandardButton.Save:
            return "save"
        if answer == QMessageBox.StandardButton.Discard:
            return "discard"
        return "cancel"

    def offer_geojson_instead(self, message: str) -> bool:
        answer = QMessageBox.question(
            self.parent,
            "Cannot save into the QuPath project",
            f"{message}\n\nExport the annotations as a GeoJSON file instead? QuPath can import "
            "it (File > Import objects).",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    def ask_open_slide(self, start_dir: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self.parent, "Open slide", start_dir, SLIDE_FILTER)
        return path or None

    def ask_open_project(self, start_dir: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(
            self.parent, "Open QuPath project", start_dir, PROJECT_FILTER
        )
        return path or None

    def ask_geojson_save_path(self, default_path: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self.parent, "Export annotations as GeoJSON", default_path, GEOJSON_FILTER
        )
        return path or None

    def ask_geojson_open_path(self, start_dir: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(
            self.parent, "Import GeoJSON annotations", start_dir, GEOJSON_FILTER
        )
        return path or None

    def ask_locate(self, title: str, text: str) -> bool:
        """An image is missing: offer Locate... (True when the user wants to search)."""
        box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=self.parent)
        locate = box.addButton("Locate…", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is locate

    def ask_search_folder(self, start_dir: str) -> str | None:
        path = QFileDialog.getExistingDirectory(
            self.parent, "Folder to search for the missing images", start_dir
        )
        return path or None

    def choose_image_files(self, missing: list[Any], matches: dict[str, list[Path]]) -> Any:
        """Entry id -> new file for the missing images (or None when cancelled)."""
        from app.dialogs.locate_images import choose_image_files

        return choose_image_files(missing, matches, self.parent)

    def ask_text(self, title: str, label: str, default: str = "") -> str | None:
        text, ok = QInputDialog.getText(self.parent, title, label, text=default)
        return text if ok else None

    def ask_color(self, initial: tuple[int, int, int]) -> tuple[int, int, int] | None:
        color = QColorDialog.getColor(QColor(*initial), self.parent, "Class colour")
        if not color.isValid():
            return None
        return color.red(), color.green(), color.blue()
