# ruff: noqa: N815  (Qt names signals in camelCase)
"""The segmentation engine on its own thread, so the window never waits for torch.

``EngineClient`` lives in the UI thread; it owns a thread running an ``EngineWorker`` that
loads the model (in the background at start-up, reporting its stages) and answers prompts. Only
the newest pending prompt runs: a prompt submitted while another is being segmented replaces any
prompt still waiting, so a burst of clicks costs one extra segmentation, not one per click.
Results and errors come back as signals tagged with the request id; the caller ignores ids it no
longer wants. The worker opens its own handle on each slide, since slide readers are not safe to
share with the viewer's tile loader.

Pre-encoding has a slot of its own, below prompts: ``request_preencode`` asks for the field around a
view centre to be encoded ahead of any prompt, one patch (HR, then LR) per step. Before each step
the worker looks for a waiting prompt first, so a real prompt waits at most for the patch being
encoded. A newer pre-encode request replaces the old one and ``cancel_preencode`` drops it (the view
moved): the steps not yet started are never run.

``reload(options)`` loads the model again with another encoder backend or precision; when that
fails the model already loaded stays in use (``reloadFailed``).

The engine thread is a Python thread taking commands from a queue, not a ``QThread``: PySide gives a
QThread's slot calls a temporary Python thread state each, and deleting one after OpenVINO ran in
it crashes the interpreter (PySide 6.11, OpenVINO 2026.4, Python 3.11). The worker's signals,
emitted in the engine thread, reach the UI thread's slots queued, as Qt does across threads.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PySide6.QtCore import QObject, Signal

ProgressFn = Callable[[str, int, int], None]  # (what, step, steps)


@dataclass(frozen=True)
class EngineOptions:
    """How the model runs: ``engine.load_wsi_sam``'s ``backend`` and ``precision``."""

    backend: str = "auto"  # "auto" | "torch" | "openvino"
    precision: str = "auto"  # "auto" | "f32" | "bf16" | "fp16"


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


PredictorFactory = Callable[[ProgressFn], Segmenter]  # ignores the engine options (tests' fakes)
OptionsFactory = Callable[[ProgressFn, EngineOptions], Segmenter]


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


@dataclass(frozen=True)
class PreencodeRequest:
    """Encode the field a prompt around level-0 (x, y) of about ``extent`` pixels would use.

    ``mode`` "wsi-sam" needs both patches (HR first, then LR); "sam" only the HR one. With a
    pan ``direction`` (a level-0 vector), the next ``neighbours`` fields that way follow, at the
    same magnification, after the field at (x, y) (parts "hr@1", "lr@1", ...).
    """

    request_id: int
    slide_path: str
    x: float
    y: float
    extent: float | None = None
    mode: str = "wsi-sam"
    direction: tuple[float, float] | None = None
    neighbours: int = 0

    def parts(self) -> tuple[str, ...]:
        own = ("hr", "lr") if self.mode == "wsi-sam" else ("hr",)
        steps = self.neighbours if self.direction is not None else 0
        return own + tuple(f"{part}@{step}" for step in range(1, steps + 1) for part in own)


def split_part(part: str) -> tuple[str, int]:
    """ "hr" -> ("hr", 0); "lr@2" -> ("lr", 2): the patch and which field of the request."""
    patch, _, step = part.partition("@")
    return patch, int(step) if step else 0


def load_default_predictor(
    progress: ProgressFn, options: EngineOptions = EngineOptions()
) -> Segmenter:
    """Load WSI-SAM (weights from the installed weight packages) and wrap it in a predictor."""
    progress("Loading PyTorch", 0, 3)
    import engine

    engine.select_device  # noqa: B018 (imports torch now, so the next stage is the weights)
    progress("Loading WSI-SAM weights", 1, 3)
    model = engine.load_wsi_sam(backend=options.backend, precision=options.precision)
    progress("Preparing predictor", 2, 3)
    predictor = engine.WsiSamPredictor(model)
    progress("Model ready", 3, 3)
    return predictor


def default_slide_opener(path: str) -> Any:
    import engine

    return engine.open_slide(path)


def describe_backend(predictor: Any) -> str:
    """What runs the encoder, e.g. "OpenVINO CPU bf16"; "" when the predictor does not say."""
    for owner in (predictor, getattr(predictor, "model", None)):
        label = getattr(owner, "backend_label", None)
        if isinstance(label, str):
            return label
    sam = getattr(getattr(predictor, "model", None), "sam", None)
    label = getattr(sam, "backend_label", None)
    return label if isinstance(label, str) else ""


def describe_error(exc: BaseException) -> str:
    """A sentence for the user; the engine's own messages already name what was wrong."""
    name = type(exc).__name__
    if name == "BackendError":
        return f"This backend or precision cannot run on this computer: {exc}"
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
    """Runs in the engine thread (its methods are called there); its signals go to the UI."""

    loadProgress = Signal(str, int, int)
    loaded = Signal(str, object)  # what runs the encoder (describe_backend), EngineOptions
    loadFailed = Signal(str)
    reloadFailed = Signal(str, object)  # message, the options that failed; the old model stays
    busy = Signal(int, str)  # request id, what it is doing ("Encoding field", "Decoding", ...)
    finished = Signal(int, object)  # request id, SegmentResult
    failed = Signal(int, str)  # request id, message for the user
    preencoded = Signal(int, str, bool)  # request id, "hr" | "lr", whether it encoded anything

    def __init__(
        self,
        take_request: Callable[[], SegmentRequest | None],
        mark_done: Callable[[int], None],
        predictor_factory: OptionsFactory,
        slide_opener: Callable[[str], Any],
        take_preencode: Callable[[], tuple[PreencodeRequest, str] | None] = lambda: None,
        preencode_done: Callable[[PreencodeRequest, str, bool], None] = lambda r, p, a: None,
    ):
        super().__init__()
        self._take_request = take_request
        self._mark_done = mark_done
        self._factory = predictor_factory
        self._open_slide = slide_opener
        self._take_preencode = take_preencode
        self._preencode_done = preencode_done
        self._predictor: Segmenter | None = None
        self._slides: dict[str, Any] = {}
        # the field of the pre-encode request in progress, so its LR step encodes the same one
        self._preencode_field: tuple[int, Any] | None = None

    @property
    def predictor(self) -> Segmenter | None:
        """The segmenter loaded last (None before the first load)."""
        return self._predictor

    def load(self, options: EngineOptions) -> None:
        try:
            predictor = self._factory(self.loadProgress.emit, options)
        except Exception as exc:
            if type(exc).__name__ != "BackendError":
                traceback.print_exc()
            message = describe_error(exc)
            if self._predictor is not None:
                self.reloadFailed.emit(message, options)
            else:
                self.loadFailed.emit(message)
            self.process()  # prompts that waited for the reload run on the model kept
            return
        self._predictor = predictor  # the previous model (and its field cache) goes
        self._preencode_field = None
        self.loaded.emit(describe_backend(predictor), options)
        self.process()  # prompts that arrived while the model was loading

    def process(self) -> None:
        """Run what is waiting: every prompt before any pre-encode step, one step at a time."""
        if self._predictor is None:
            return  # load() calls back here when the model is ready
        while True:
            request = self._take_request()
            if request is not None:
                self._segment(request)
                continue
            step = self._take_preencode()
            if step is None:
                return
            self._preencode(*step)

    def clear_cache(self) -> None:
        """Forget every encoded field (the next prompt anywhere encodes again)."""
        clear = getattr(self._predictor, "clear_cache", None)
        if callable(clear):
            clear()
        self._preencode_field = None

    def _segment(self, request: SegmentRequest) -> None:
        assert self._predictor is not None
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

    def _preencode(self, request: PreencodeRequest, part: str) -> None:
        """One pre-encode step; a predictor without ``preencode`` (a fake) has nothing to do."""
        predictor: Any = self._predictor
        encoded = False
        complete = True
        if all(hasattr(predictor, name) for name in ("field_at", "preencode", "is_field_cached")):
            try:
                slide = self._slide(request.slide_path)
                if self._preencode_field is None or self._preencode_field[0] != request.request_id:
                    chosen = predictor.field_at(slide, request.x, request.y, extent=request.extent)
                    self._preencode_field = (request.request_id, chosen)
                chosen = self._preencode_field[1]
                patch, step = split_part(part)
                if step:  # a neighbour in the pan direction, where the predictor knows them
                    find = getattr(predictor, "neighbour_field", None)
                    assert request.direction is not None
                    chosen = None if find is None else find(slide, chosen, request.direction, step)
                need_lr = request.mode == "wsi-sam"
                if chosen is not None and not predictor.is_field_cached(
                    slide, chosen, need_lr=need_lr
                ):
                    self.busy.emit(
                        request.request_id,
                        "Pre-encoding view" if not step else "Pre-encoding ahead",
                    )
                    encoded = bool(predictor.preencode(slide, chosen, patch))
                complete = chosen is None or predictor.is_field_cached(
                    slide, chosen, need_lr=need_lr
                )
            except Exception:
                # a background nicety: the prompt itself will encode (and report any error)
                traceback.print_exc()
        self._preencode_done(request, part, complete)
        self.preencoded.emit(request.request_id, part, encoded)

    def run_on_model(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(predictor)`` here, in the engine thread (e.g. load other heads into the
        model); without a model yet it is not run (the caller re-applies on ``loaded``)."""
        if self._predictor is not None:
            fn(self._predictor)
        self.process()

    def forget_slide(self, path: str) -> None:
        slide = self._slides.pop(path, None)
        if slide is not None and hasattr(slide, "close"):
            slide.close()

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
    """UI-thread handle on the engine thread.

    Args:
        predictor_factory: builds the segmenter in the engine thread and ignores the engine
            options (tests' fakes); ``options_factory`` is given them too. With neither, the
            real WSI-SAM is loaded with ``options``.
        options: the encoder backend and precision of the first load.
    """

    # worker-side signals, forwarded
    loadProgress = Signal(str, int, int)
    loaded = Signal()
    loadFailed = Signal(str)
    reloadFailed = Signal(str)  # a reload failed; the model loaded before stays in use
    busy = Signal(int, str)
    finished = Signal(int, object)
    failed = Signal(int, str)
    preencoded = Signal(int, str, bool)  # request id, "hr" | "lr", whether it encoded anything
    idle = Signal()  # nothing running, nothing waiting

    def __init__(
        self,
        predictor_factory: PredictorFactory | None = None,
        slide_opener: Callable[[str], Any] | None = None,
        parent: QObject | None = None,
        *,
        options: EngineOptions | None = None,
        options_factory: OptionsFactory | None = None,
    ):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: SegmentRequest | None = None
        self._preencode: PreencodeRequest | None = None
        self._preencode_parts: list[str] = []  # steps of self._preencode not yet run
        self._preencode_running: int | None = None
        # results the worker has emitted that the UI thread has not handled yet: until they
        # arrive the client is not idle (a fast worker can finish a step before the UI sees
        # the one before it)
        self._undelivered = 0
        self._next_id = 0
        self._running_id: int | None = None
        self._state = "not started"  # "loading" | "ready" | "failed"
        self._loads_queued = 0  # loads asked of the worker and not answered yet
        self._options = options or EngineOptions()
        self._loaded_options: EngineOptions | None = None
        self._backend_label = ""
        factory: OptionsFactory
        if options_factory is not None:
            factory = options_factory
        elif predictor_factory is not None:
            plain = predictor_factory
            factory = lambda progress, _options: plain(progress)  # noqa: E731
        else:
            factory = load_default_predictor
        # (method name, arguments) for the worker; None ends the thread
        self._commands: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wsi-sam-engine", daemon=True)
        self._worker = EngineWorker(
            self._take_request,
            self._mark_done,
            factory,
            slide_opener or default_slide_opener,
            self._take_preencode_step,
            self._preencode_step_done,
        )
        self._worker.loadProgress.connect(self.loadProgress)
        self._worker.loaded.connect(self._on_loaded)
        self._worker.loadFailed.connect(self._on_load_failed)
        self._worker.reloadFailed.connect(self._on_reload_failed)
        self._worker.busy.connect(self._on_busy)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.preencoded.connect(self._on_preencoded)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread and load the model in the background."""
        if self._state != "not started":
            return
        self._state = "loading"
        self._thread.start()
        self._loads_queued += 1
        self._send("load", self._options)

    def state(self) -> str:
        return self._state

    def is_ready(self) -> bool:
        return self._state == "ready"

    def options(self) -> EngineOptions:
        """The options asked for last (loading, loaded, or to be used by ``start``)."""
        return self._options

    def loaded_options(self) -> EngineOptions | None:
        """The options of the model in use; None before one has loaded."""
        return self._loaded_options

    def predictor(self) -> Any:
        """The segmenter the engine thread loaded (None before it has): for jobs that share its
        model in a thread of their own (refine, segment everything); prompts go through
        ``submit``."""
        return self._worker.predictor

    def backend_label(self) -> str:
        """What runs the encoder of the model in use (e.g. "OpenVINO CPU bf16"), or ""."""
        return self._backend_label

    def reload(self, options: EngineOptions) -> None:
        """Load the model again with ``options`` (before ``start``: just remember them)."""
        self._options = options
        if self._state == "not started":
            return
        self._state = "loading"  # prompts wait for the new model (or the old one, if it fails)
        self._loads_queued += 1
        self._send("load", options)

    def clear_cache(self) -> None:
        """Forget the encoded fields, e.g. to measure a prompt on a cold field."""
        self._send("clear_cache")

    def run_on_model(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(predictor)`` in the engine thread, after the commands sent before it."""
        self._send("run_on_model", fn)

    def shutdown(self, wait_ms: int = 60_000) -> None:
        with self._lock:
            self._pending = None
            self._preencode = None
        if self._thread.is_alive():
            self._commands.put(None)
            # a patch being encoded finishes first; a daemon thread never holds up the exit
            self._thread.join(wait_ms / 1000)

    # -- prompts ---------------------------------------------------------------------------
    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def submit(self, request: SegmentRequest) -> int:
        """Queue ``request``; any request still waiting is dropped (it is stale now)."""
        with self._lock:
            self._pending = request
        self._send("process")
        return request.request_id

    def cancel_pending(self) -> None:
        with self._lock:
            self._pending = None

    def is_busy(self) -> bool:
        """Whether anything runs or waits: a prompt or a pre-encode step."""
        with self._lock:
            return (
                self._running_id is not None
                or self._pending is not None
                or self._preencode is not None
                or self._preencode_running is not None
                or self._undelivered > 0
            )

    def forget_slide(self, path: str) -> None:
        self._send("forget_slide", path)

    # -- pre-encoding ----------------------------------------------------------------------
    def request_preencode(self, request: PreencodeRequest) -> int:
        """Encode ``request``'s field when no prompt waits; replaces an earlier pre-encode."""
        with self._lock:
            self._preencode = request
            self._preencode_parts = list(request.parts())
        self._send("process")
        return request.request_id

    def cancel_preencode(self) -> None:
        """Drop the pre-encode request (its view is stale); a patch being encoded finishes."""
        with self._lock:
            self._preencode = None
            self._preencode_parts = []

    def preencode_request(self) -> PreencodeRequest | None:
        """The pre-encode request that still has steps to run (or runs one now)."""
        with self._lock:
            return self._preencode

    def _send(self, method: str, *args: Any) -> None:
        self._commands.put((method, args))

    def _run(self) -> None:
        """The engine thread: run the worker's commands in order until told to stop."""
        worker = self._worker
        while True:
            command = self._commands.get()
            if command is None:
                worker.close_all()
                return
            method, args = command
            try:
                getattr(worker, method)(*args)
            except Exception:  # the worker reports its own errors; keep the thread alive
                traceback.print_exc()

    def _take_request(self) -> SegmentRequest | None:
        # called in the worker thread
        with self._lock:
            request, self._pending = self._pending, None
            self._running_id = request.request_id if request is not None else None
            return request

    def _take_preencode_step(self) -> tuple[PreencodeRequest, str] | None:
        # called in the worker thread, after it found no prompt waiting
        with self._lock:
            if self._pending is not None or self._preencode is None or not self._preencode_parts:
                return None
            self._preencode_running = self._preencode.request_id
            return self._preencode, self._preencode_parts[0]

    def _preencode_step_done(self, request: PreencodeRequest, part: str, complete: bool) -> None:
        # called in the worker thread; a request replaced or cancelled meanwhile stays dropped
        with self._lock:
            self._preencode_running = None
            self._undelivered += 1  # the worker emits ``preencoded`` next
            if self._preencode is not request:
                return
            if part in self._preencode_parts:
                self._preencode_parts.remove(part)
            if complete:  # this field is all there: its other steps have nothing to do
                step = split_part(part)[1]
                self._preencode_parts = [
                    p for p in self._preencode_parts if split_part(p)[1] != step
                ]
            if not self._preencode_parts:
                self._preencode = None
                self._preencode_parts = []

    # -- from the worker -------------------------------------------------------------------
    def _load_answered(self, state: str) -> None:
        self._loads_queued = max(0, self._loads_queued - 1)
        # with another load queued behind this one, the engine is still loading
        self._state = state if self._loads_queued == 0 else "loading"

    def _on_loaded(self, backend_label: str, options: EngineOptions) -> None:
        self._load_answered("ready")
        self._backend_label = backend_label
        self._loaded_options = options
        self.loaded.emit()
        self._maybe_idle()

    def _on_load_failed(self, message: str) -> None:
        self._load_answered("failed")
        self.loadFailed.emit(message)

    def _on_reload_failed(self, message: str, options: EngineOptions) -> None:
        self._load_answered("ready")
        if options == self._options and self._loaded_options is not None:
            self._options = self._loaded_options  # nothing newer asked for: back to the kept one
        self.reloadFailed.emit(message)
        self._maybe_idle()

    def _on_busy(self, request_id: int, what: str) -> None:
        self.busy.emit(request_id, what)

    def _on_finished(self, request_id: int, result: object) -> None:
        self._delivered()
        self.finished.emit(request_id, result)
        self._maybe_idle()

    def _on_failed(self, request_id: int, message: str) -> None:
        self._delivered()
        self.failed.emit(request_id, message)
        self._maybe_idle()

    def _on_preencoded(self, request_id: int, part: str, encoded: bool) -> None:
        self._delivered()
        self.preencoded.emit(request_id, part, encoded)
        self._maybe_idle()

    def _mark_done(self, request_id: int) -> None:
        # called in the worker thread, before it reports the result
        with self._lock:
            self._undelivered += 1  # the worker emits ``finished`` or ``failed`` next
            if self._running_id == request_id:
                self._running_id = None

    def _delivered(self) -> None:
        with self._lock:
            self._undelivered = max(0, self._undelivered - 1)

    def _maybe_idle(self) -> None:
        if self.is_ready() and not self.is_busy():
            self.idle.emit()
