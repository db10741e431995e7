"""Edit > Segment everything in region (Ctrl+Shift+A): every object inside a region, in the
background with progress and Cancel.

The region is the selected annotation (its outline; the objects become its children), else the
box drawn with the box tool, else the visible part of the slide. The settings (the method, grid
density, thresholds, area limits in um^2, annotations or detections) are asked for and
remembered. The method is one of the catalogue's instance decoders (shipped, the user's heads
folder, the open project's ``wsi-sam/heads/``; ``engine.instances.segment``) or SAM's point grid
(``engine.everything``); Model > Automatic segmentation lists the same methods and chooses the
remembered one. The objects are previewed; Enter adds them all as one undo step, in the current
class, with the cleanup settings applied and their provenance; Esc discards them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QDialog, QMenu

from app.controllers.engine_jobs import AddAnnotationsCommand, shared_model
from app.controllers.heads import _same_file
from app.controllers.refine import app_version
from app.dialogs.cleanup_settings import (
    GRID,
    GRID_LABEL,
    save_everything_method,
    saved_everything_method,
)

GRID_TIP = (
    "SAM prompted with a grid of points in each field (zero-shot): any kind of object, "
    "slower, and weaker where objects are many and small"
)


def decoder_label(entry: Any) -> str:
    """A decoder's menu text: "nuclei (40x)", "circles (20x, project)"."""
    magnification = entry.metadata.get("magnification")
    parts = [f"{float(magnification):g}x"] if magnification else []
    if entry.place != "shipped":
        parts.append(entry.place)
    return f"{entry.name} ({', '.join(parts)})" if parts else entry.name


class EverythingController(QObject):
    """Edit > Segment everything in region and Model > Automatic segmentation."""

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._request: dict[str, Any] | None = None
        self.ask_settings = True  # tests set it to False and use the remembered settings
        self.last_message = ""  # what the latest finished run found, and by which method
        window.jobs.finished.connect(self._on_finished)
        self.menu = QMenu("&Automatic segmentation", window)
        self.menu.setToolTipsVisible(True)
        self.menu.aboutToShow.connect(self.refresh_menu)
        self._group = QActionGroup(self)
        for action in window.menuBar().actions():
            if action.text().replace("&", "") == "Model" and action.menu() is not None:
                action.menu().addMenu(self.menu)
                break

    # -- the methods ------------------------------------------------------------------------
    def method_choices(self) -> list[tuple[str, str, str]]:
        """(label, value, tooltip) of each method: the catalogue's decoders, then the grid."""
        choices = [
            (decoder_label(entry), str(entry.path), entry.describe())
            for entry in self._window.heads.catalogue().decoders
        ]
        choices.append((GRID_LABEL, GRID, GRID_TIP))
        return choices

    def method(self, choices: list[tuple[str, str, str]] | None = None) -> str:
        """The remembered method when it is still there (a decoder file), else :data:`GRID`."""
        remembered = saved_everything_method()
        if remembered == GRID:
            return GRID
        for _label, value, _tip in choices if choices is not None else self.method_choices():
            if value != GRID and _same_file(value, remembered):
                return value
        return GRID

    def choose_method(self, method: str) -> None:
        """Remember ``method`` (a decoder path or :data:`GRID`) for Segment everything."""
        save_everything_method(method)
        label = GRID_LABEL if method == GRID else Path(method).stem
        self._window.statusBar().showMessage(f"Segment everything will use: {label}", 6000)

    def refresh_menu(self) -> None:
        """Fill Model > Automatic segmentation: the methods, the remembered one checked."""
        self.menu.clear()
        for action in self._group.actions():
            self._group.removeAction(action)
        choices = self.method_choices()
        current = self.method(choices)
        for label, value, tip in choices:
            if value == GRID:
                self.menu.addSeparator()
            action = QAction(label, self.menu)  # owned by the menu: clear() deletes it
            action.setCheckable(True)
            action.setChecked(value == current)
            action.setData(value)
            action.setToolTip(tip)
            action.triggered.connect(
                functools.partial(lambda v, _c=False: self.choose_method(v), value)
            )
            self._group.addAction(action)
            self.menu.addAction(action)

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

    def run(
        self, settings: Any = None, output: str | None = None, method: str | None = None
    ) -> bool:
        """Start segmenting everything in :meth:`region`; False when it did not start.

        ``method``: a decoder file or :data:`GRID`; None takes the remembered one.
        """
        from app.dialogs.cleanup_settings import EverythingDialog, save_everything, saved_everything

        window = self._window
        if window.slide_path is None:
            return False
        remembered, remembered_output = saved_everything()
        if settings is None:
            settings, output = remembered, output or remembered_output
            if self.ask_settings:
                has_mpp = getattr(window.slide, "mpp", None) is not None
                choices = self.method_choices()
                dialog = EverythingDialog(
                    settings,
                    output,
                    has_mpp,
                    window,
                    methods=choices,
                    method=method or self.method(choices),
                )
                if dialog.exec() != QDialog.DialogCode.Accepted:
                    return False
                settings, output = dialog.chosen()
                method = dialog.method()
                save_everything(settings, output)
                save_everything_method(method)
        method = method or self.method()
        output = output or "annotation"
        decoder = None
        if method != GRID:
            decoder = self.load_decoder(method)
            if decoder is None:
                return False
        region, parent_id = self.region()
        mode = str(window.mode_combo.currentData() or "wsi-sam")

        def job(predictor: Any, slide: Any, progress: Any, cancelled: Any) -> Any:
            if decoder is not None:
                from engine.instances.refine import field_refiner
                from engine.instances.segment import InstanceSettings, segment_instances

                limits = InstanceSettings(
                    min_area=settings.min_area if settings.min_area > 0 else None,
                    max_area=settings.max_area,
                )
                magnification = getattr(predictor, "default_magnification", 40.0)
                found = segment_instances(
                    predictor.model.sam,
                    decoder,
                    slide,
                    region,
                    limits,
                    default_magnification=magnification,
                    progress=progress,
                    cancel=cancelled,
                    # as the decoder's cross-validation recommends (SELECTION_RULE.md)
                    refine=field_refiner(predictor.model, decoder, slide, magnification, mode),
                )
            else:
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
            "decoder": decoder,
        }
        window.prompts.discard()
        if not window.jobs.start("Segmenting everything in the region…", job):
            self._request = None
            return False
        return True

    def load_decoder(self, path: str) -> Any:
        """The instance decoder ``path`` for the loaded model's encoder; None (after one
        message saying why) when it cannot be used or the model is not loaded yet."""
        from engine.instances.checkpoint import DecoderError, read_decoder

        window = self._window
        model, _ = shared_model(window)
        if model is None:
            window.statusBar().showMessage("The model is not ready yet", 6000)
            return None
        info = getattr(getattr(model, "sam", None), "checkpoint_info", None)
        try:
            return read_decoder(path, encoder_sha256=getattr(info, "sha256", None))
        except DecoderError as exc:
            window.prompter.error("This decoder cannot be used", str(exc))
            return None

    def _on_finished(self, payload: object) -> None:
        if not (isinstance(payload, tuple) and payload[0] == "everything"):
            return
        if self._request is None:
            return
        _, found, model = payload
        request, self._request = self._request, None
        window = self._window
        decoder = request["decoder"]
        refined_with = None
        if decoder is not None:
            from engine.instances.refine import refinement_wanted

            method = f"decoder {decoder.name} ({decoder.magnification:g}x)"
            if refinement_wanted(decoder) and model is not None:
                from engine.provenance import heads_identity

                refined_with = heads_identity(model, request["mode"])[0]
        else:
            method = f"the point grid ({'SAM' if request['mode'] == 'sam' else 'WSI-SAM'})"
        if not found.objects:
            self.last_message = f"No object found in the region by {method}"
            window.statusBar().showMessage(self.last_message, 8000)
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
                if decoder is not None:
                    provenance = Provenance.from_decoder(
                        decoder.name,
                        decoder.sha256 or "",
                        field=obj.field,
                        score=obj.score,
                        refined_with=refined_with,
                        app_version=app_version(),
                    )
                else:
                    provenance = Provenance.create(
                        model,
                        request["mode"],
                        "everything",
                        field=obj.field,
                        predicted_iou=obj.score,
                        points=[obj.point],
                        stability=obj.stability,
                        app_version=app_version(),
                    )
                provenance.apply(annotation.measurements, annotation.metadata)
                out.append(annotation)
            return out

        window.pending.show(
            make,
            lambda objects: AddAnnotationsCommand(
                window.store, objects, f"Segment everything: {len(objects)} objects"
            ),
        )
        count, fields = len(found.objects), len(found.fields)
        self.last_message = (
            f"{count} object{'s' if count != 1 else ''} found by {method} in {fields} "
            f"field{'s' if fields != 1 else ''}"
        )
        window.statusBar().showMessage(
            f"{self.last_message}: Enter adds them, Esc discards them", 10000
        )
