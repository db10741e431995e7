"""Edit > Refine with WSI-SAM (R): refine the selected annotations in place, in the background.

The selected annotations (accepted here, imported from GeoJSON or read from a project) are
refined with their box and their own mask as the prompt (``engine.refine_many``), in the
current mode. The refined outlines are previewed over the old ones (dashed); Enter replaces the
geometries as one undo step, keeping id, class, name, parent and every other property, and
adding the provenance; Esc keeps the old ones. Outlines too large to refine are reported and
left as they were.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import QObject

from app.controllers.engine_jobs import ReplaceGeometriesCommand


def app_version() -> str:
    from app import __version__

    return f"WSI-SAM Studio {__version__}"


class RefineController(QObject):
    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._request: tuple[list[Any], str] | None = None
        window.jobs.finished.connect(self._on_finished)

    def refine_selected(self) -> bool:
        """Start refining the selected annotations; False when there is nothing to refine."""
        window = self._window
        ids = [i for i in window.annotation_dock.selected_ids() if i in window.store]
        originals = [
            window.store.get(i) for i in ids if getattr(window.store.get(i).geometry, "area", 0) > 0
        ]
        if not originals:
            window.statusBar().showMessage("Select one or more annotations to refine", 6000)
            return False
        mode = str(window.mode_combo.currentData() or "wsi-sam")
        geometries = [a.geometry for a in originals]

        def job(predictor: Any, slide: Any, progress: Any, cancelled: Any) -> Any:
            from engine.refine import refine_many

            return (
                "refine",
                refine_many(
                    predictor, slide, geometries, mode, progress=progress, cancel=cancelled
                ),
                predictor.model,
            )

        count = len(originals)
        if not window.jobs.start(f"Refining {count} annotation{'s' if count != 1 else ''}…", job):
            return False
        self._request = (originals, mode)
        return True

    def _on_finished(self, payload: object) -> None:
        if not (isinstance(payload, tuple) and payload[0] == "refine") or self._request is None:
            return
        _, results, model = payload
        originals, mode = self._request
        self._request = None
        window = self._window
        kept = [(a, r) for a, r in zip(originals, results, strict=True) if r.refined]
        skipped = [r.message for r in results if not r.refined]
        if skipped:
            window.statusBar().showMessage(f"{len(skipped)} not refined: {skipped[0]}", 10000)
        if not kept:
            return

        def make() -> list[Any]:
            from app.dialogs.cleanup_settings import saved_cleanup
            from engine.cleanup import clean_geometry
            from engine.provenance import Provenance

            cleanup = saved_cleanup()
            mpp = getattr(window.slide, "mpp", None)
            out = []
            for original, result in kept:
                geometry = clean_geometry(result.geometry, cleanup, mpp) or result.geometry
                measurements, metadata = dict(original.measurements), dict(original.metadata)
                x0, y0, x1, y1 = original.geometry.bounds
                Provenance.create(
                    model,
                    mode,
                    "refine",
                    field=result.field,
                    predicted_iou=result.score,
                    box=(x0, y0, x1, y1),
                    app_version=app_version(),
                ).apply(measurements, metadata)
                out.append(
                    dataclasses.replace(
                        original, geometry=geometry, measurements=measurements, metadata=metadata
                    )
                )
            return out

        window.pending.show(
            make,
            lambda objects: ReplaceGeometriesCommand(window.store, objects),
            [a.geometry for a, _ in kept],
        )
        window.statusBar().showMessage(
            f"{len(kept)} refined outline{'s' if len(kept) != 1 else ''}: Enter replaces, "
            "Esc keeps the old ones",
            10000,
        )
