"""Saving and importing the window's annotations: into the QuPath project (or, without QuPath,
the project's ``wsi-sam`` sidecar, with a GeoJSON export offered), as QuPath GeoJSON, and
GeoJSON imported onto the open slide (one undo step).

Every failure is told to the user in a dialog and loses nothing: the annotations stay in the
window and in its crash journal until a save succeeds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from app.errors import plain_error
from app.session.classes import ClassEntry
from app.session.undo import AddAnnotationCommand


class SaveController:
    """File > Save, Export GeoJSON and Import GeoJSON for ``window`` (a MainWindow)."""

    def __init__(self, window: Any) -> None:
        self._window = window

    def save(self) -> bool:
        w = self._window
        if w.project is not None and w.project_image is not None:
            return self.save_to_project()
        return self.ask_export_geojson()

    def ask_export_geojson(self) -> bool:
        w = self._window
        if w.slide_path is None:
            w.prompter.error("Nothing to export", "Open a slide first.")
            return False
        default = str(Path(w.slide_path).with_suffix(".geojson"))
        path = w.prompter.ask_geojson_save_path(default)
        return self.export_geojson(path) if path else False

    def export_geojson(self, path: str | os.PathLike[str]) -> bool:
        w = self._window
        import qupath_bridge

        try:
            objects = w.store.annotations() + w.project_objects.objects()
            qupath_bridge.write_geojson(path, objects)
        except Exception as exc:
            w.prompter.error("Export failed", f"{path}\n\n{plain_error(exc)}")
            return False
        self.mark_saved(str(path))
        return True

    def save_to_project(self) -> bool:
        """Write the annotations into the QuPath project (needs QuPath). Without QuPath they go
        to the project's ``wsi-sam`` sidecar file (shown again on the next open), the user is
        told why, and offered a GeoJSON export to import into QuPath by hand."""
        w = self._window
        import qupath_bridge

        annotations = w.store.annotations()
        removed = sorted(set(w._loaded_ids) - set(w.store.ids()))  # deleted by the user
        try:
            project = qupath_bridge.open_project(w.project.path, mode="r+")
            try:
                project.write_annotations(
                    self._matching_image(project), annotations, replace_ids=removed
                )
            finally:
                project.close()
        except qupath_bridge.QuPathNotFoundError as exc:
            try:
                sidecar = w.project.write_sidecar(w.project_image, annotations, replace_ids=removed)
            except Exception as sidecar_exc:
                if w.prompter.offer_geojson_instead(
                    f"{plain_error(exc)}\n\nKeeping them in the project folder failed too: "
                    f"{plain_error(sidecar_exc)}"
                ):
                    return self.ask_export_geojson()
                return False
            w._loaded_ids = w.store.ids()
            self.mark_saved(str(sidecar))
            if w.prompter.offer_geojson_instead(
                f"{plain_error(exc)}\n\nYour {len(annotations)} annotations are saved in "
                f"{sidecar} inside the project; WSI-SAM Studio shows them again when you reopen "
                "this image, and writes them into QuPath's data once QuPath is found."
            ):
                self.ask_export_geojson()
            return True
        except Exception as exc:  # a read-only or damaged project: offer the export
            if w.prompter.offer_geojson_instead(
                f"Saving into the project failed: {plain_error(exc)}"
            ):
                return self.ask_export_geojson()
            return False
        w._loaded_ids = w.store.ids()
        self.mark_saved(str(w.project.path))
        return True

    def _matching_image(self, project: Any) -> Any:
        w = self._window
        wanted = w.project_image.entry_id
        for image in project.images:
            if image.entry_id == wanted:
                return image
        raise ValueError(f"the image {w.project_image.name!r} is no longer in the project")

    def mark_saved(self, where: str) -> None:
        w = self._window
        if w.journal is not None:
            w.journal.clear()
        w._unsaved = False
        w.undo_stack.setClean()
        w._update_title()
        w.statusBar().showMessage(f"Saved {len(w.store)} annotations to {where}", 10000)
        w.saved.emit(where)

    def ask_import_geojson(self) -> None:
        w = self._window
        if w.slide_path is None:
            w.prompter.error("No slide", "Open a slide before importing annotations.")
            return
        path = w.prompter.ask_geojson_open_path(str(Path(w.slide_path).parent))
        if path:
            self.import_geojson(path)

    def import_geojson(self, path: str | os.PathLike[str]) -> int:
        w = self._window
        import qupath_bridge

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", qupath_bridge.DuplicateIdWarning)
                annotations = qupath_bridge.read_geojson(path)
        except Exception as exc:
            w.prompter.error("Cannot import GeoJSON", f"{path}\n\n{plain_error(exc)}")
            return 0
        for warning in caught:  # repeated ids were given fresh ones: say so
            if issubclass(warning.category, qupath_bridge.DuplicateIdWarning):
                w.prompter.error("Repeated ids in GeoJSON", str(warning.message))
            else:
                warnings.warn(warning.message, warning.category, stacklevel=1)
        new = []
        taken = set(w.store.ids())
        for annotation in annotations:  # read_geojson gives repeated ids fresh ones already
            if annotation.id not in taken:
                taken.add(annotation.id)
                new.append(annotation)
        skipped = len(annotations) - len(new)
        if skipped:
            w.statusBar().showMessage(
                f"{skipped} of the {len(annotations)} annotations in {Path(path).name} are "
                "in the list already (same id) and were not imported again",
                10000,
            )
        w.classes.merge(
            ClassEntry.from_path_class(a.path_class)
            for a in new
            if a.path_class is not None and a.path_class.color is not None
        )
        w.undo_stack.beginMacro(f"Import {len(new)} annotations")
        for annotation in new:
            w.undo_stack.push(AddAnnotationCommand(w.store, annotation))
        w.undo_stack.endMacro()
        return len(new)
