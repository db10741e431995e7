"""One slide's batch job as plain data, and the runner that does it on a worker.

A :class:`SlideJob` says everything a worker needs, as picklable data: the slide, its key in the
batch, the engine settings, the work (prompts, refine or segment everything), and the ``io``
object that reads the slide's prompts and writes its output (see :mod:`engine.batch`).
:func:`run_job` never raises for a problem of the slide itself (unreadable file, bad prompts,
unwritable output): the :class:`SlideOutcome` says ``failed`` with a one-line error and the batch
goes on. Problems of single objects (a prompt off the slide, an empty mask, an outline too large
to refine) are counted in the outcome's note and the other objects are kept.

The model is loaded once per worker process and settings (:func:`cached_predictor`) and kept
for the next slides; each thread has its own predictor (field cache) over the shared model, and
the field cache is emptied after each slide.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from engine.everything import EverythingSettings
    from engine.slides import Slide
    from engine.wsi_predictor import WsiSamPredictor
    from engine.wsi_sam import WsiSam

__all__ = [
    "EngineSettings",
    "JobIO",
    "MadeObject",
    "PromptSpec",
    "SlideJob",
    "SlideOutcome",
    "Work",
    "cached_predictor",
    "run_job",
]

log = logging.getLogger(__name__)

WorkKind = Literal["prompts", "refine", "everything"]
Status = Literal["done", "failed"]


@dataclass(frozen=True)
class EngineSettings:
    """How the model runs: what :func:`engine.load_wsi_sam` and the predictor are given.

    ``threads`` (the engine's intra-op threads per task) changes speed, not results, and is left
    out of :meth:`identity`; ``None`` means the worker's CPUs divided by its task threads.
    """

    mode: str = "wsi-sam"
    heads: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    magnification: float = 10.0
    adaptive: bool = True
    default_magnification: float = 40.0
    threads: int | None = None

    def identity(self) -> dict[str, Any]:
        """What makes results differ (the manifest's settings hash covers it)."""
        out = dataclasses.asdict(self)
        out.pop("threads")
        return out

    def model_key(self) -> tuple[Any, ...]:
        return (
            self.heads if self.mode == "wsi-sam" else "none",
            self.checkpoint,
            self.device,
            self.backend,
            self.precision,
            self.threads,
        )


@dataclass(frozen=True)
class Work:
    """What to do on each slide.

    Attributes:
        kind: "prompts" (one object per box / point set), "refine" (each outline refined) or
            "everything" (every object inside each region).
        everything: the segment-everything settings (kind "everything").
    """

    kind: WorkKind = "prompts"
    everything: EverythingSettings | None = None
    #: kind "everything" with an instance decoder: its file (else the point grid) and sha256
    instances: str | None = None
    instances_sha256: str = ""
    #: an object classifier (:mod:`engine.objects`) applied to the objects made: its file and
    #: sha256; ``drop_ignored`` leaves out the objects it classifies as a class ending in "*"
    classifier: str | None = None
    classifier_sha256: str = ""
    drop_ignored: bool = False

    def identity(self) -> dict[str, Any]:
        settings = None if self.everything is None else dataclasses.asdict(self.everything)
        out: dict[str, Any] = {"kind": self.kind, "everything": settings}
        if self.instances is not None:
            out["instances"] = {"path": self.instances, "sha256": self.instances_sha256}
        if self.classifier is not None:
            out["classifier"] = {
                "path": self.classifier,
                "sha256": self.classifier_sha256,
                "drop_ignored": self.drop_ignored,
            }
        return out


@dataclass(frozen=True)
class PromptSpec:
    """One prompt, as the io object read it (level-0 pixels).

    Attributes:
        box: x0, y0, x1, y1, or None.
        points: x, y of each point; labels: 1 positive, 0 negative (same length).
        geometry: the outline to refine (work "refine") or the region (work "everything").
        carry: plain data the io object wants back with the objects made from this prompt
            (its class, name, id, ...); the runner does not read it.
        problem: why this prompt cannot be used (the runner counts it, makes nothing from it).
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    geometry: BaseGeometry | None = None
    carry: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


@dataclass
class MadeObject:
    """One object the engine made, handed to the io object to write.

    Attributes:
        geometry: Polygon or MultiPolygon in level-0 pixels.
        measurements, metadata: the object's provenance (:class:`engine.provenance.Provenance`).
        carry: the ``carry`` of the prompt it came from.
        index: (prompt index, object index within that prompt's objects): stable between runs
            of the same inputs and settings, for stable object ids.
    """

    geometry: BaseGeometry
    measurements: dict[str, float]
    metadata: dict[str, str]
    carry: dict[str, Any]
    index: tuple[int, int]


class JobIO(Protocol):
    """Reads a slide's prompts and writes its output (implemented outside the engine).

    Both methods raise for a problem of the slide (the runner records it, the batch goes on).
    """

    def load_prompts(self, job: SlideJob) -> list[PromptSpec]: ...

    def write_output(self, job: SlideJob, objects: list[MadeObject]) -> tuple[str, list[str]]:
        """Write atomically; return (the sha256 of the file written, "" when it is not one the
        manifest can check; the ids of the objects written)."""
        ...


@dataclass(frozen=True)
class SlideJob:
    """One slide's work: plain data (plus the io object, pickled by reference).

    Attributes:
        key: the slide's unique name in the batch (its output's stem, the manifest's key).
        slide: the slide file.
        prompts: the file the prompts are read from, or None (a project's own annotations).
        output: where the output goes (a file, or the project's sidecar), for the summary.
        settings, work: how and what.
        io: reads prompts and writes outputs (:class:`JobIO`).
        target: plain data the io object reads to know where to write (its own format).
        input_sha256: the fingerprint of the inputs (slide, prompts), recorded in the manifest.
        replace_ids: ids of objects an earlier run wrote for this slide (to replace them).
    """

    key: str
    slide: str
    prompts: str | None
    output: str
    settings: EngineSettings
    work: Work
    io: JobIO
    target: dict[str, Any] = field(default_factory=dict)
    input_sha256: str = ""
    replace_ids: tuple[str, ...] = ()


@dataclass
class SlideOutcome:
    """The summary row of one slide (and what the manifest records).

    ``ids`` are the ids of the objects written; ``worker`` names the process that ran it;
    ``detail`` is the traceback of an unexpected error (kept in the manifest, not the summary).
    """

    key: str
    slide: str
    status: Status
    objects_in: int = 0
    objects_out: int = 0
    seconds: float = 0.0
    error: str = ""
    note: str = ""
    output: str = ""
    output_sha256: str = ""
    input_sha256: str = ""
    ids: list[str] = field(default_factory=list)
    worker: str = ""
    detail: str = ""


# --- the model, once per worker process --------------------------------------------------------

_models: dict[tuple[Any, ...], WsiSam] = {}
_models_lock = threading.Lock()
_local = threading.local()


def _worker_info() -> tuple[str, int | None, int]:
    """(worker name for logs, worker index when it is a number, task threads of the worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return f"pid {os.getpid()}", None, 1
    name = worker.name
    index = name if isinstance(name, int) else (int(name) if str(name).isdigit() else None)
    return f"{name} (pid {os.getpid()})", index, max(1, int(worker.state.nthreads))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _resolve_device(device: str, worker_index: int | None) -> str:
    """``auto`` on a machine with several GPUs: worker i takes GPU i mod n."""
    if device != "auto" or worker_index is None:
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{worker_index % count}" if count > 1 else device


def _load_model(settings: EngineSettings, device: str, threads: int) -> WsiSam:
    import torch

    from engine.build import load_wsi_sam

    torch.set_num_threads(threads)
    model = load_wsi_sam(
        heads=settings.heads if settings.mode == "wsi-sam" else "none",
        checkpoint=settings.checkpoint,
        device=device,
        backend=settings.backend,
        precision=settings.precision,
    )
    encoder = model.sam.encoder_backend
    if encoder.name == "openvino":
        # OpenVINO would use every core of the machine in each worker: give it its share.
        from engine.backends.openvino_backend import OpenVinoImageEncoder

        model.sam.encoder_backend = OpenVinoImageEncoder(
            model.sam.image_encoder,
            model.sam.checkpoint_info.sha256,
            encoder.precision,
            threads=threads,
        )
    return model


def cached_predictor(settings: EngineSettings) -> WsiSamPredictor:
    """This thread's predictor for ``settings``, over the model this process keeps loaded.

    The first call in a process loads the model (seconds); later ones reuse it.
    """
    from engine.wsi_predictor import WsiSamPredictor

    _, index, nthreads = _worker_info()
    threads = settings.threads or max(1, _cpu_count() // nthreads)
    device = _resolve_device(settings.device, index)
    key = (*settings.model_key(), device, threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            started = time.perf_counter()
            model = _load_model(settings, device, threads)
            _models[key] = model
            log.info("model loaded in %.1f s: %s", time.perf_counter() - started, key)
    predictors: dict[tuple[Any, ...], WsiSamPredictor] = getattr(_local, "predictors", {})
    _local.predictors = predictors
    pkey = (*key, settings.magnification, settings.adaptive, settings.default_magnification)
    predictor = predictors.get(pkey)
    if predictor is None:
        predictor = WsiSamPredictor(
            model,
            magnification=settings.magnification,
            adaptive=settings.adaptive,
            default_magnification=settings.default_magnification,
        )
        predictors[pkey] = predictor
    return predictor


def loaded_models() -> int:
    """How many models this process holds (for tests and the benchmark)."""
    return len(_models)


# --- the runner --------------------------------------------------------------------------------

_USER_ERRORS = {
    "SlideError",
    "PromptError",
    "BridgeError",
    "WeightsError",
    "BackendError",
    "HeadsError",
    "DecoderError",
    "ClassifierError",
    "ObjectError",
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(p.strip() for p in str(exc).strip().splitlines() if p.strip())
    names = {c.__name__ for c in type(exc).__mro__}
    if names & _USER_ERRORS or isinstance(exc, OSError):
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
            text = f"{exc.filename}: {exc.strerror or text}"
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Notes:
    """Problems of single objects, counted by reason."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def text(self) -> str:
        return "; ".join(f"{n} x {reason}" for reason, n in self.counts.items())


def _provenance(
    model: WsiSam, mode: str, kind: str, **kwargs: Any
) -> tuple[dict[str, float], dict[str, str]]:
    from engine.provenance import Provenance

    made = Provenance.create(model, mode, kind, **kwargs)
    return made.measurements(), made.metadata()


def _run_prompts(
    predictor: WsiSamPredictor,
    slide: Slide,
    specs: Sequence[PromptSpec],
    mode: str,
    notes: _Notes,
) -> list[MadeObject]:
    from engine.wsi_predictor import PromptError

    made: list[MadeObject] = []
    for index, spec in enumerate(specs):
        if spec.problem:
            notes.add(spec.problem)
            continue
        points = [list(p) for p in spec.points] or None
        labels = list(spec.labels) or None
        try:
            result = predictor.segment(slide, box=spec.box, points=points, labels=labels, mode=mode)
        except PromptError as exc:
            notes.add(f"prompt not used: {_one_line(exc)}")
            continue
        if result.geometry is None:
            notes.add("empty mask")
            continue
        kind = "box+points" if spec.box and points else ("box" if spec.box else "points")
        measurements, metadata = _provenance(
            predictor.model,
            mode,
            kind,
            field=result.field,
            predicted_iou=result.score,
            box=spec.box,
            points=points,
            labels=labels,
        )
        made.append(MadeObject(result.geometry, measurements, metadata, spec.carry, (index, 0)))
    return made


def _run_refine(
    predictor: WsiSamPredictor,
    slide: Slide,
    specs: Sequence[PromptSpec],
    mode: str,
    notes: _Notes,
) -> list[MadeObject]:
    from engine.refine import refine_many

    usable = [(i, s) for i, s in enumerate(specs) if not s.problem and s.geometry is not None]
    for spec in specs:
        if spec.problem or spec.geometry is None:
            notes.add(spec.problem or "nothing to refine")
    results = refine_many(predictor, slide, [s.geometry for _, s in usable], mode=mode)
    made: list[MadeObject] = []
    for (index, spec), result in zip(usable, results, strict=True):
        if not result.refined or result.field is None:
            notes.add(result.message or "not refined")
            continue
        measurements, metadata = _provenance(
            predictor.model,
            mode,
            "refine",
            field=result.field,
            predicted_iou=result.score,
            box=spec.geometry.bounds if spec.geometry is not None else None,
        )
        made.append(MadeObject(result.geometry, measurements, metadata, spec.carry, (index, 0)))
    return made


_DECODERS: dict[tuple[str, str], Any] = {}


def _decoder(path: str, encoder_sha256: str) -> Any:
    """The instance decoder of ``path``, loaded once per worker process."""
    from engine.instances.checkpoint import read_decoder

    key = (path, encoder_sha256)
    with _models_lock:
        if key not in _DECODERS:
            _DECODERS[key] = read_decoder(path, encoder_sha256=encoder_sha256)
        return _DECODERS[key]


def _run_everything(
    predictor: WsiSamPredictor,
    slide: Slide,
    specs: Sequence[PromptSpec],
    mode: str,
    work: Work,
    notes: _Notes,
) -> list[MadeObject]:
    from engine.everything import drop_duplicates, segment_everything
    from engine.provenance import Provenance
    from engine.wsi_predictor import PromptError

    settings = work.everything
    decoder = None
    refined_with = None
    if work.instances is not None:
        from engine.instances.refine import refinement_wanted

        decoder = _decoder(work.instances, predictor.model.sam.checkpoint_info.sha256)
        if refinement_wanted(decoder):
            from engine.provenance import heads_identity

            refined_with = heads_identity(predictor.model, mode)[0]
    found: list[tuple[int, Any, PromptSpec]] = []
    for index, spec in enumerate(specs):
        if spec.problem or spec.geometry is None:
            notes.add(spec.problem or "a region without area")
            continue
        try:
            if decoder is not None:
                from engine.instances.refine import field_refiner
                from engine.instances.segment import InstanceSettings, segment_instances

                limits = InstanceSettings(
                    min_area=settings.min_area if settings and settings.min_area > 0 else None,
                    max_area=settings.max_area if settings else None,
                )
                result = segment_instances(
                    predictor.model.sam,
                    decoder,
                    slide,
                    spec.geometry,
                    limits,
                    default_magnification=predictor.default_magnification,
                    # as the decoder's cross-validation recommends (SELECTION_RULE.md)
                    refine=field_refiner(
                        predictor.model, decoder, slide, predictor.default_magnification, mode
                    ),
                )
            else:
                result = segment_everything(predictor, slide, spec.geometry, mode, settings)
        except PromptError as exc:
            notes.add(f"region not used: {_one_line(exc)}")
            continue
        found.extend((index, obj, spec) for obj in result.objects)
    # overlapping regions see some objects twice: each is written once
    keep = drop_duplicates([obj for _, obj, _ in found])
    made: list[MadeObject] = []
    numbers: dict[int, int] = {}
    for position in keep:
        index, obj, spec = found[position]
        number = numbers[index] = numbers.get(index, -1) + 1
        if decoder is not None:
            provenance = Provenance.from_decoder(
                decoder.name,
                decoder.sha256 or "",
                field=obj.field,
                score=obj.score,
                refined_with=refined_with,
            )
            measurements, metadata = provenance.measurements(), provenance.metadata()
        else:
            measurements, metadata = _provenance(
                predictor.model,
                mode,
                "everything",
                field=obj.field,
                predicted_iou=obj.score,
                points=[obj.point],
                labels=[1],
                stability=obj.stability,
            )
        made.append(MadeObject(obj.geometry, measurements, metadata, spec.carry, (index, number)))
    return made


_CLASSIFIERS: dict[tuple[str, str], Any] = {}


def _classifier(path: str, sha256: str) -> Any:
    """The object classifier of ``path``, loaded (validated, refitted) once per worker process;
    a :class:`~engine.objects.classifier.ClassifierError` when the file changed since the batch
    started."""
    import hashlib

    from engine.objects.classifier import ClassifierError, ObjectClassifier

    key = (path, sha256)
    with _models_lock:
        if key not in _CLASSIFIERS:
            with open(path, "rb") as handle:
                data = handle.read()
            if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                raise ClassifierError(f"{path}: the classifier changed since the batch started")
            _CLASSIFIERS[key] = ObjectClassifier.from_json(data, path)
        return _CLASSIFIERS[key]


def _classify(
    predictor: WsiSamPredictor,
    slide: Slide,
    made: list[MadeObject],
    classifier: Any,
    work: Work,
    notes: _Notes,
) -> list[MadeObject]:
    """Each object with the classifier's class (``carry`` "class", "color") and probability
    (measurement), those classified as "not an object" left out when ``work.drop_ignored``."""
    from engine.objects.classifier import PROBABILITY_MEASUREMENT, is_ignored
    from engine.objects.features import object_features

    classifier.check_encoder(predictor.model.sam.checkpoint_info.sha256)
    if not made:
        return made
    features = object_features(
        predictor,
        slide,
        [m.geometry for m in made],
        classifier.settings,
        context="lr" in classifier.feature_set.split("+"),
    )
    predicted = classifier.predict(features.matrix(classifier.feature_set))
    out: list[MadeObject] = []
    for obj, name, probability in zip(made, predicted.classes, predicted.probability, strict=True):
        if work.drop_ignored and is_ignored(str(name)):
            notes.add(f"classified {name} (dropped)")
            continue
        color = classifier.colors.get(str(name))
        carry = {**obj.carry, "class": str(name), "color": list(color) if color else None}
        measurements = {**obj.measurements, PROBABILITY_MEASUREMENT: float(probability)}
        out.append(dataclasses.replace(obj, carry=carry, measurements=measurements))
    return out


def run_job(job: SlideJob) -> SlideOutcome:
    """Do one slide's work; return its summary row (never raises for the slide's problems)."""
    worker, _, _ = _worker_info()
    started = time.perf_counter()
    outcome = SlideOutcome(
        job.key,
        job.slide,
        "failed",
        output=job.output,
        input_sha256=job.input_sha256,
        worker=worker,
    )
    notes = _Notes()
    predictor = None
    try:
        from engine.slides import open_slide

        with open_slide(job.slide) as slide:
            specs = job.io.load_prompts(job)
            outcome.objects_in = len(specs)
            classifier = None
            if job.work.classifier is not None:  # a changed file fails before the work
                classifier = _classifier(job.work.classifier, job.work.classifier_sha256)
            predictor = cached_predictor(job.settings)
            mode = job.settings.mode
            if job.work.kind == "prompts":
                made = _run_prompts(predictor, slide, specs, mode, notes)
            elif job.work.kind == "refine":
                made = _run_refine(predictor, slide, specs, mode, notes)
            elif job.work.kind == "everything":
                made = _run_everything(predictor, slide, specs, mode, job.work, notes)
            else:
                raise ValueError(f"unknown work {job.work.kind!r}")
            if classifier is not None:
                made = _classify(predictor, slide, made, classifier, job.work, notes)
        outcome.output_sha256, outcome.ids = job.io.write_output(job, made)
        outcome.objects_out = len(made)
        outcome.status = "done"
    except Exception as exc:  # the slide's problem: recorded, the batch goes on
        outcome.error = _one_line(exc)
        names = {c.__name__ for c in type(exc).__mro__}
        if not (names & _USER_ERRORS or isinstance(exc, OSError)):
            outcome.detail = traceback.format_exc(limit=20)
            log.warning("slide %s failed: %s", job.slide, outcome.detail)
    finally:
        if predictor is not None:
            predictor.clear_cache()  # another slide's fields are of no use
    outcome.note = notes.text()
    outcome.seconds = time.perf_counter() - started
    return outcome
