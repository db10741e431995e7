"""Edit > Segment everything in region (Ctrl+Shift+A): every object inside a region, in the
background with progress and Cancel.

The region is the selected annotation (its outline; the objects become its children), else the
box drawn with the box tool, else the visible part of the slide. The settings (grid density,
thresholds, area limits in um^2, annotations or detections) are asked for and remembered. The
objects are previewed; Enter adds them all as one undo step, in the current class, with the
cleanup settings applied and their provenance; Esc discards them.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QDialog

from app.controllers.engine_jobs import AddAnnotationsCommand
from app.controllers.refine import app_version


class EverythingController(QObject):
    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._request: dict[str, Any] | None = None
        self.ask_settings = True  # tests set it to False and use the remembered settings
        window.jobs.finished.connect(self._on_finished)

    def region(self) -> tuple[Any, str | None]:
        """(level-0 region geometry, parent id or None) for the next run."""
        from shapely.geometry import box as shapely_box

        window = self._window
        for annotation_id in window.annotation_dock.selected_ids():
            if annotation_id in window.store:
                annotation = window.store.get(annotation_id)
                if getattr(annotation.geometry, "area", 0) > 0:
                    return annotation.geometry, annotation.id
        box = window.prompts.prompt().box
        if box is not None:
            return shapely_box(*box), None
        rect = window.view.visible_rect_level0()
        return shapely_box(rect.left(), rect.top(), rect.right(), rect.bottom()), None

    def run(self, settings: Any = None, output: str | None = None) -> bool:
        """Start segmenting everything in :meth:`region`; False when it did not start."""
        from app.dialogs.cleanup_settings import EverythingDialog, save_everything, saved_everything

        window = self._window
        if window.slide_path is None:
            return False
        remembered, remembered_output = saved_everything()
        if settings is None:
            settings, output = remembered, output or remembered_output
            if self.ask_settings:
                has_mpp = getattr(window.slide, "mpp", None) is not None
                dialog = EverythingDialog(settings, output, has_mpp, window)
                if dialog.exec() != QDialog.DialogCode.Accepted:
                    return False
                settings, output = dialog.chosen()
                save_everything(settings, output)
        output = output or "annotation"
        region, parent_id = self.region()
        mode = str(window.mode_combo.currentData() or "wsi-sam")

        def job(predictor: Any, slide: Any, progress: Any, cancelled: Any) -> Any:
            from engine.everything import segment_everything

            found = segment_everything(
                predictor, slide, region, mode, settings, progress=progress, cancel=cancelled
            )
            return ("everything", found, predictor.model)

        entry = window.classes.current()
        self._request = {
            "mode": mode,
            "parent_id": parent_id,
            "output": output,
            "path_class": entry.to_path_class() if entry is not None else None,
        }
        window.prompts.discard()
        if not window.jobs.start("Segmenting everything in the region…", job):
            self._request = None
            return False
        return True

    def _on_finished(self, payload: object) -> None:
        if not (isinstance(payload, tuple) and payload[0] == "everything"):
            return
        if self._request is None:
            return
        _, found, model = payload
        request, self._request = self._request, None
        window = self._window
        if not found.objects:
            window.statusBar().showMessage("No object found in the region", 8000)
            return

        def make() -> list[Any]:
            import qupath_bridge
            from app.dialogs.cleanup_settings import saved_cleanup
            from engine.cleanup import clean_geometry
            from engine.provenance import Provenance

            cleanup = saved_cleanup()
            mpp = getattr(window.slide, "mpp", None)
            out = []
            for obj in found.objects:
                geometry = clean_geometry(obj.geometry, cleanup, mpp)
                if geometry is None:
                    continue
                annotation = qupath_bridge.Annotation(
                    geometry=geometry,
                    object_type=request["output"],
                    path_class=request["path_class"],
                    parent_id=request["parent_id"],
                )
                Provenance.create(
                    model,
                    request["mode"],
                    "everything",
                    field=obj.field,
                    predicted_iou=obj.score,
                    points=[obj.point],
                    stability=obj.stability,
                    app_version=app_version(),
                ).apply(annotation.measurements, annotation.metadata)
                out.append(annotation)
            return out

        window.pending.show(
            make,
            lambda objects: AddAnnotationsCommand(
                window.store, objects, f"Segment everything: {len(objects)} objects"
            ),
        )
        window.statusBar().showMessage(
            f"{len(found.objects)} objects from {len(found.fields)} fields: Enter adds them, "
            "Esc discards them",
            10000,
        )
