"""Provenance and cleanup of the masks accepted from a prompt (box / points).

The prompt tool forgets its prompt and result when a mask is accepted, so this records the
prompt, the mode and the engine's answer each time a preview appears; ``finish(annotation)``
then applies the remembered cleanup settings (in um) and writes the provenance (model, heads,
prompt, field, predicted IoU, version, time) into the new annotation's measurements and metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import QObject

from app.controllers.engine_jobs import shared_model
from app.controllers.refine import app_version


class AcceptedMaskProvenance(QObject):
    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._last: tuple[Any, Any, str] | None = None
        window.prompts.previewChanged.connect(self._record)

    def _record(self) -> None:
        prompts = self._window.prompts
        result = prompts.result()
        if result is not None:
            self._last = (dataclasses.replace(prompts.prompt()), result, prompts.mode())

    def finish(self, annotation: Any, score: float) -> Any:
        """The annotation with cleanup applied and its provenance (in place where possible)."""
        from app.dialogs.cleanup_settings import saved_cleanup
        from engine.cleanup import clean_geometry

        window = self._window
        cleaned = clean_geometry(
            annotation.geometry, saved_cleanup(), getattr(window.slide, "mpp", None)
        )
        if cleaned is not None:
            annotation = dataclasses.replace(annotation, geometry=cleaned)
        if self._last is None:
            return annotation
        prompt, result, mode = self._last
        field = getattr(result, "field", None)
        model, _ = shared_model(window)
        if field is None or not hasattr(field, "hr_downsample"):
            return annotation  # a test's fake engine
        from engine.provenance import Provenance

        kind = (
            "box+points"
            if prompt.box is not None and prompt.points
            else ("box" if prompt.box is not None else "points")
        )
        Provenance.create(
            model,
            getattr(result, "mode", mode),
            kind,
            field=field,
            predicted_iou=score,
            box=prompt.box,
            points=prompt.points or None,
            labels=prompt.labels or None,
            app_version=app_version(),
        ).apply(annotation.measurements, annotation.metadata)
        return annotation
