"""Long engine jobs (refine many, segment everything) in the background, and their preview.

``EngineJobs`` runs one job at a time on a Python thread of its own with a predictor of its own
over the model the engine thread loaded (the model is shared, read-only at inference; the field
cache is not). Progress is shown in a progress dialog with Cancel; a cancelled job returns nothing.
``PendingResults`` draws a finished job's objects over the slide (new outlines solid, outlines
they replace dashed) until the user accepts them (Enter: one undo step) or discards them (Esc).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPen, QUndoCommand
from PySide6.QtWidgets import QGraphicsPathItem, QProgressDialog

from app.session.annotations import AnnotationStore
from app.session.overlay import Z_PREVIEW, geometry_to_path

# fn(predictor, slide, progress(done, total), cancelled() -> bool) -> result
JobFn = Callable[[Any, Any, Callable[[int, int], None], Callable[[], bool]], Any]

NEW_COLOR = QColor(0, 200, 255)
OLD_COLOR = QColor(255, 160, 0)


def shared_model(window: Any) -> Any:
    """(the WSI-SAM model the engine thread loaded, its predictor); the model is None before
    one has loaded or for a test's fake segmenter."""
    predictor = window.engine.predictor()
    return getattr(predictor, "model", None), predictor


class _JobWorker(QObject):
    progress = Signal(int, int)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.cancel_flag = threading.Event()

    def run(self, job: tuple[JobFn, Any, Callable[[str], Any], str]) -> None:
        fn, predictor, opener, slide_path = job
        slide = None
        try:
            slide = opener(slide_path)
            result = fn(predictor, slide, self.progress.emit, self.cancel_flag.is_set)
        except Exception as exc:
            if type(exc).__name__.endswith("CancelledError"):
                self.cancelled.emit()
                return
            if type(exc).__name__ not in ("PromptError", "SlideError"):
                traceback.print_exc()
            from app.engine_worker import describe_error

            self.failed.emit(describe_error(exc))
            return
        finally:
            if slide is not None and hasattr(slide, "close"):
                slide.close()
        if self.cancel_flag.is_set():
            self.cancelled.emit()
        else:
            self.done.emit(result)


class EngineJobs(QObject):
    """One background engine job at a time, with a progress dialog and Cancel."""

    finished = Signal(object)  # the job's result
    failed = Signal(str)
    cancelled = Signal()
    progressed = Signal(int, int)

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        # A Python thread per job, not a QThread: PySide's per-slot thread states crash the
        # interpreter once OpenVINO has run in them (see app/engine_worker.py).
        self._thread: threading.Thread | None = None
        self._worker = _JobWorker()
        self._worker.progress.connect(self._on_progress)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._running = False
        self._dialog: QProgressDialog | None = None
        self._predictors: dict[int, Any] = {}
        self.show_dialog = True

    def is_running(self) -> bool:
        return self._running

    def start(self, label: str, fn: JobFn) -> bool:
        """Run ``fn`` on the open slide; False (with a message) when it cannot start."""
        window = self._window
        if self._running:
            window.statusBar().showMessage("Another job is running; wait or cancel it", 6000)
            return False
        if window.slide_path is None:
            return False
        model, engine_predictor = shared_model(window)
        if model is None:
            window.statusBar().showMessage("The model is not ready yet", 6000)
            return False
        predictor = self._predictors.get(id(model))
        if predictor is None:
            import engine

            predictor = engine.WsiSamPredictor(
                model,
                magnification=getattr(engine_predictor, "magnification", 10.0),
                adaptive=getattr(engine_predictor, "adaptive", True),
                default_magnification=getattr(engine_predictor, "default_magnification", 40.0),
            )
            self._predictors = {id(model): predictor}
        from app.session.slide_scale import scaled_slide_opener

        self._running = True
        self._worker.cancel_flag.clear()
        if self.show_dialog:
            dialog = QProgressDialog(label, "Cancel", 0, 0, window)
            dialog.setWindowTitle("WSI-SAM")
            dialog.setWindowModality(Qt.WindowModality.WindowModal)
            dialog.setMinimumDuration(300)
            dialog.canceled.connect(self.cancel)
            self._dialog = dialog
        window.statusBar().showMessage(label)
        job = (fn, predictor, scaled_slide_opener, window.slide_path)
        self._thread = threading.Thread(
            target=self._worker.run, args=(job,), name="wsi-sam-job", daemon=True
        )
        self._thread.start()
        return True

    def cancel(self) -> None:
        self._worker.cancel_flag.set()

    def shutdown(self, wait_ms: int = 60_000) -> None:
        self.cancel()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(wait_ms / 1000)

    def _close_dialog(self) -> None:
        if self._dialog is not None:
            self._dialog.canceled.disconnect(self.cancel)
            self._dialog.close()
            self._dialog.deleteLater()
            self._dialog = None

    def _on_progress(self, done: int, total: int) -> None:
        if self._dialog is not None:
            self._dialog.setMaximum(total)
            self._dialog.setValue(done)
        self._window.statusBar().showMessage(f"{done} of {total}")
        self.progressed.emit(done, total)

    def _on_done(self, result: object) -> None:
        self._running = False
        self._close_dialog()
        self.finished.emit(result)

    def _on_failed(self, message: str) -> None:
        self._running = False
        self._close_dialog()
        self._window.statusBar().showMessage(message, 10000)
        self.failed.emit(message)

    def _on_cancelled(self) -> None:
        self._running = False
        self._close_dialog()
        self._window.statusBar().showMessage("Cancelled; nothing was changed", 6000)
        self.cancelled.emit()


class ReplaceGeometriesCommand(QUndoCommand):
    """Replace annotations by refined copies (same id, class, name, parent, properties); undo
    puts the originals back. One undo step for any number of annotations."""

    def __init__(self, store: AnnotationStore, replacements: list[Any]):
        count = len(replacements)
        super().__init__(f"Refine {count} annotation{'s' if count != 1 else ''}")
        self._store = store
        self._new = list(replacements)
        self._old: list[Any] = []

    def _swap(self, items: list[Any]) -> list[Any]:
        previous = []
        for annotation in items:
            if annotation.id not in self._store:
                continue
            old, row = self._store.remove(annotation.id)
            self._store.add(annotation, row)
            previous.append(old)
        return previous

    def redo(self) -> None:
        self._old = self._swap(self._new)

    def undo(self) -> None:
        self._swap(self._old)


class AddAnnotationsCommand(QUndoCommand):
    """Add many objects as one undo step."""

    def __init__(self, store: AnnotationStore, annotations: list[Any], text: str):
        super().__init__(text)
        self._store = store
        self._items = list(annotations)

    def redo(self) -> None:
        for annotation in self._items:
            self._store.add(annotation)

    def undo(self) -> None:
        for annotation in reversed(self._items):
            if annotation.id in self._store:
                self._store.remove(annotation.id)


class PendingResults(QObject):
    """A finished job's objects, drawn over the slide until accepted or discarded.

    ``make(cleanup)`` builds the objects (so a change of the cleanup settings redraws them);
    ``commit(objects)`` returns the undo command that accepting pushes.
    """

    changed = Signal()

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._items: list[QGraphicsPathItem] = []
        self._make: Callable[[], list[Any]] | None = None
        self._commit: Callable[[list[Any]], QUndoCommand] | None = None
        self._old: list[Any] = []
        self.objects: list[Any] = []

    def is_active(self) -> bool:
        return self._make is not None

    def show(
        self,
        make: Callable[[], list[Any]],
        commit: Callable[[list[Any]], QUndoCommand],
        old_geometries: list[Any] | None = None,
    ) -> None:
        self.discard()
        self._make, self._commit = make, commit
        self._old = list(old_geometries or [])
        self.refresh()

    def refresh(self) -> None:
        """Build the objects again (e.g. new cleanup settings) and redraw them."""
        self._clear_items()
        if self._make is None:
            return
        self.objects = self._make()
        scene = self._window.view.scene()
        if scene is None:
            return
        for geometry in self._old:
            self._items.append(self._draw(scene, geometry, OLD_COLOR, dashed=True))
        for obj in self.objects:
            self._items.append(self._draw(scene, obj.geometry, NEW_COLOR, dashed=False))
        self.changed.emit()

    @staticmethod
    def _draw(scene: Any, geometry: Any, color: QColor, dashed: bool) -> QGraphicsPathItem:
        item = QGraphicsPathItem(geometry_to_path(geometry))
        pen = QPen(color, 2.0, Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine)
        pen.setCosmetic(True)
        item.setPen(pen)
        if not dashed:
            fill = QColor(color)
            fill.setAlpha(50)
            item.setBrush(QBrush(fill))
        item.setZValue(Z_PREVIEW)
        scene.addItem(item)
        return item

    def accept(self) -> bool:
        """Push the objects as one undo step; False when nothing is pending."""
        if self._make is None or self._commit is None:
            return False
        objects = self.objects
        command = self._commit(objects) if objects else None
        self.discard()
        if command is not None:
            self._window.undo_stack.push(command)
        return True

    def discard(self) -> bool:
        active = self._make is not None
        self._make = self._commit = None
        self._old = []
        self.objects = []
        self._clear_items()
        if active:
            self.changed.emit()
        return active

    def _clear_items(self) -> None:
        for item in self._items:
            scene = item.scene()
            if scene is not None:
                scene.removeItem(item)
        self._items = []
