# ruff: noqa: N815  (Qt names signals in camelCase)
"""The segmentation engine on its own thread, so the window never waits for torch.

``EngineClient`` lives in the UI thread; it owns a ``QThread`` running an ``EngineWorker`` that
loads the model (in the background at start-up, reporting its stages) and answers prompts. Only
the newest pending prompt runs: a prompt submitted while another is being segmented replaces any
prompt still waiting, so a burst of clicks costs one extra segmentation, not one per click.
Results and errors come back as signals tagged with the request id; the caller ignores ids it no
longer wants. The worker opens its own handle on each slide, since slide readers are not safe to
share with the viewer's tile loader.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PySide6.QtCore import QObject, QThread, Signal, Slot

ProgressFn = Callable[[str, int, int], None]  # (what, step, steps)


class Segmenter(Protocol):
    """What the worker needs of a predictor (``engine.WsiSamPredictor`` has it)."""

    def segment(
        self,
        slide: Any,
        box: Any = None,
        points: Any = None,
        labels: Any = None,
        mode: str = "wsi-sam",
        multimask: bool | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class SegmentRequest:
    """One prompt in level-0 pixels of ``slide_path``."""

    request_id: int
    slide_path: str
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mode: str = "wsi-sam"
    multimask: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_default_predictor(progress: ProgressFn) -> Segmenter:
    """Load WSI-SAM (weights from the installed weight packages) and wrap it in a predictor."""
    progress("Loading PyTorch", 0, 3)
    import engine

    engine.select_device  # noqa: B018 (imports torch now, so the next stage is the weights)
    progress("Loading WSI-SAM weights", 1, 3)
    model = engine.load_wsi_sam()
    progress("Preparing predictor", 2, 3)
    predictor = engine.WsiSamPredictor(model)
    progress("Model ready", 3, 3)
    return predictor


def default_slide_opener(path: str) -> Any:
    import engine

    return engine.open_slide(path)


def describe_error(exc: BaseException) -> str:
    """A sentence for the user; the engine's own messages already name what was wrong."""
    name = type(exc).__name__
    if name == "PromptError":
        return f"The prompt cannot be segmented: {exc}"
    if name == "SlideError":
        return f"The slide cannot be read: {exc}"
    if name in ("WeightsError", "FileNotFoundError") or "weight" in str(exc).lower():
        return f"The model weights could not be loaded: {exc}"
    if isinstance(exc, MemoryError):
        return "The computer ran out of memory while segmenting; try a smaller box."
    return f"Segmentation failed ({name}): {exc}"


class EngineWorker(QObject):
    """Runs in the engine thread. Do not call its slots directly from the UI thread."""

    loadProgress = Signal(str, int, int)
    loaded = Signal()
    loadFailed = Signal(str)
    busy = Signal(int, str)  # request id, what it is doing ("Encoding field", "Decoding")
    finished = Signal(int, object)  # request id, SegmentResult
    failed = Signal(int, str)  # request id, message for the user

    def __init__(
        self,
        take_request: Callable[[], SegmentRequest | None],
        mark_done: Callable[[int], None],
        predictor_factory: Callable[[ProgressFn], Segmenter],
        slide_opener: Callable[[str], Any],
    ):
        super().__init__()
        self._take_request = take_request
        self._mark_done = mark_done
        self._factory = predictor_factory
        self._open_slide = slide_opener
        self._predictor: Segmenter | None = None
        self._slides: dict[str, Any] = {}

    @Slot()
    def load(self) -> None:
        try:
            self._predictor = self._factory(self.loadProgress.emit)
        except Exception as exc:
            traceback.print_exc()
            self.loadFailed.emit(describe_error(exc))
            return
        self.loaded.emit()
        self.process()  # prompts that arrived while the model was loading

    @Slot()
    def process(self) -> None:
        if self._predictor is None:
            return  # load() calls back here when the model is ready
        request = self._take_request()
        if request is None:
            return
        try:
            slide = self._slide(request.slide_path)
            box = request.box
            points = [list(p) for p in request.points] or None
            labels = list(request.labels) or None
            is_cached = getattr(self._predictor, "is_cached", None)
            encoding = is_cached is None or not is_cached(
                slide, box=box, points=_opt_array(points), labels=_opt_array(labels)
            )
            self.busy.emit(request.request_id, "Encoding field" if encoding else "Decoding")
            result = self._predictor.segment(
                slide,
                box=box,
                points=_opt_array(points),
                labels=_opt_array(labels),
                mode=request.mode,
                multimask=request.multimask,
            )
        except Exception as exc:
            if type(exc).__name__ not in ("PromptError", "SlideError"):
                traceback.print_exc()
            self._mark_done(request.request_id)
            self.failed.emit(request.request_id, describe_error(exc))
            return
        self._mark_done(request.request_id)
        self.finished.emit(request.request_id, result)

    @Slot(str)
    def forget_slide(self, path: str) -> None:
        slide = self._slides.pop(path, None)
        if slide is not None and hasattr(slide, "close"):
            slide.close()

    @Slot()
    def close_all(self) -> None:
        for path in list(self._slides):
            self.forget_slide(path)

    def _slide(self, path: str) -> Any:
        if path not in self._slides:
            # one open slide at a time is what the app needs; drop handles of earlier slides
            self.close_all()
            self._slides[path] = self._open_slide(path)
        return self._slides[path]


def _opt_array(values: list[Any] | None) -> Any:
    if values is None:
        return None
    import numpy as np

    return np.asarray(values)


class EngineClient(QObject):
    """UI-thread handle on the engine thread."""

    # worker-side signals, forwarded
    loadProgress = Signal(str, int, int)
    loaded = Signal()
    loadFailed = Signal(str)
    busy = Signal(int, str)
    finished = Signal(int, object)
    failed = Signal(int, str)
    idle = Signal()  # nothing running, nothing waiting

    # to the worker (queued across threads)
    _wake = Signal()
    _load = Signal()
    _forget = Signal(str)

    def __init__(
        self,
        predictor_factory: Callable[[ProgressFn], Segmenter] | None = None,
        slide_opener: Callable[[str], Any] | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: SegmentRequest | None = None
        self._next_id = 0
        self._running_id: int | None = None
        self._state = "not started"  # "loading" | "ready" | "failed"
        self._thread = QThread()
        self._thread.setObjectName("wsi-sam-engine")
        self._worker = EngineWorker(
            self._take_request,
            self._mark_done,
            predictor_factory or load_default_predictor,
            slide_opener or default_slide_opener,
        )
        self._worker.moveToThread(self._thread)
        self._thread.finished.connect(self._worker.deleteLater)
        self._wake.connect(self._worker.process)
        self._load.connect(self._worker.load)
        self._forget.connect(self._worker.forget_slide)
        self._worker.loadProgress.connect(self.loadProgress)
        self._worker.loaded.connect(self._on_loaded)
        self._worker.loadFailed.connect(self._on_load_failed)
        self._worker.busy.connect(self._on_busy)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread and load the model in the background."""
        if self._state != "not started":
            return
        self._state = "loading"
        self._thread.start()
        self._load.emit()

    def state(self) -> str:
        return self._state

    def is_ready(self) -> bool:
        return self._state == "ready"

    def shutdown(self, wait_ms: int = 60_000) -> None:
        with self._lock:
            self._pending = None
        if self._thread.isRunning():
            self._thread.quit()
            self._thread.wait(wait_ms)

    # -- prompts ---------------------------------------------------------------------------
    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def submit(self, request: SegmentRequest) -> int:
        """Queue ``request``; any request still waiting is dropped (it is stale now)."""
        with self._lock:
            self._pending = request
        self._wake.emit()
        return request.request_id

    def cancel_pending(self) -> None:
        with self._lock:
            self._pending = None

    def is_busy(self) -> bool:
        with self._lock:
            return self._running_id is not None or self._pending is not None

    def forget_slide(self, path: str) -> None:
        self._forget.emit(path)

    def _take_request(self) -> SegmentRequest | None:
        # called in the worker thread
        with self._lock:
            request, self._pending = self._pending, None
            self._running_id = request.request_id if request is not None else None
            return request

    # -- from the worker -------------------------------------------------------------------
    def _on_loaded(self) -> None:
        self._state = "ready"
        self.loaded.emit()
        if not self.is_busy():
            self.idle.emit()

    def _on_load_failed(self, message: str) -> None:
        self._state = "failed"
        self.loadFailed.emit(message)

    def _on_busy(self, request_id: int, what: str) -> None:
        self.busy.emit(request_id, what)

    def _on_finished(self, request_id: int, result: object) -> None:
        self.finished.emit(request_id, result)
        self._maybe_idle()

    def _on_failed(self, request_id: int, message: str) -> None:
        self.failed.emit(request_id, message)
        self._maybe_idle()

    def _mark_done(self, request_id: int) -> None:
        # called in the worker thread, before it reports the result
        with self._lock:
            if self._running_id == request_id:
                self._running_id = None

    def _maybe_idle(self) -> None:
        if not self.is_busy():
            self.idle.emit()
