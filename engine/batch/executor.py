"""The Dask executor of a batch: an embedded ``LocalCluster`` or an existing scheduler.

:func:`open_client` starts (or joins) the cluster; :func:`run_batch` skips the slides the
manifest says are complete, submits one task per remaining slide (:func:`engine.batch.run_job`,
``retries=`` for errors of the task itself; a task on a worker that dies is rescheduled by the
scheduler, up to its ``allowed-failures``), records each outcome in the manifest as it arrives,
keeps ``summary.csv`` current and shows a progress bar. Only this process writes the manifest and
the summary; the workers write the per-slide outputs (atomically) and return the summary rows.

Ctrl+C cancels the tasks, writes the summary (unfinished slides ``pending``) and re-raises:
every output already written is complete, and the next run skips those slides.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.batch.jobs import SlideJob, SlideOutcome, run_job
from engine.batch.manifest import SUMMARY_NAME, Manifest, write_summary

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "BatchReport",
    "ClusterOptions",
    "default_workers",
    "open_client",
    "run_batch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """Where the tasks run.

    Attributes:
        scheduler: the address of an existing Dask scheduler (``tcp://host:8786``, or a
            scheduler file's path ending in ``.json``); None starts a ``LocalCluster``.
        workers: worker processes of the local cluster (None: :func:`default_workers`).
        threads_per_worker: tasks a worker runs at once (each with its own field cache).
        dashboard: serve the Dask dashboard (when bokeh is installed) on a free port.
        memory_limit: per local worker ("auto": the machine's memory shared equally).
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    dashboard: bool = True
    memory_limit: str = "auto"


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def default_workers(device: str = "auto") -> int:
    """One worker per GPU on a GPU machine; on a CPU, one per 4 cores (at least one): the
    encoder uses several cores well, and each worker holds its own model (about 1 GB)."""
    gpus = gpu_count() if device in ("auto", "cuda") else 0
    if gpus:
        return gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // 4)


@contextlib.contextmanager
def open_client(options: ClusterOptions) -> Iterator[Client]:
    """A ``distributed.Client`` on a new local cluster or on ``options.scheduler``."""
    from distributed import Client, LocalCluster

    if options.scheduler:
        if options.scheduler.endswith(".json"):
            client = Client(scheduler_file=options.scheduler, timeout="30s")
        else:
            client = Client(options.scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    dashboard = options.dashboard and importlib.util.find_spec("bokeh") is not None
    cluster = LocalCluster(
        n_workers=options.workers or default_workers(),
        threads_per_worker=options.threads_per_worker,
        processes=True,
        dashboard_address=":0" if dashboard else None,
        memory_limit=options.memory_limit,
        silence_logs=logging.ERROR,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def dashboard_link(client: Client) -> str | None:
    """The dashboard's address when the scheduler serves one: the dashboard needs bokeh in the
    scheduler's environment (without it the scheduler's HTTP server still answers, with no
    dashboard), which is only known here for a scheduler in this environment."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # an old or unusual scheduler: no link, not an error
        return None
    if "dashboard" not in services:
        return None
    if importlib.util.find_spec("bokeh") is None and _local_scheduler(client):
        return None
    link = client.dashboard_link
    return str(link) if link else None


def _local_scheduler(client: Client) -> bool:
    address = str(getattr(client.scheduler, "address", ""))
    return address.startswith(("inproc://", "tcp://127.0.0.1", "tcp://localhost"))


@dataclass
class BatchReport:
    """What a batch did. ``outcomes``: the slides run now, in the order they finished."""

    total: int
    skipped: list[str] = field(default_factory=list)
    outcomes: list[SlideOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(o.status == "done" for o in self.outcomes)

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status != "done"]

    @property
    def objects(self) -> int:
        return sum(o.objects_out for o in self.outcomes)


def _lost(job: SlideJob, exc: BaseException) -> SlideOutcome:
    """The outcome of a task that did not return (its workers kept dying, or a bug in Dask)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return SlideOutcome(
        job.key,
        job.slide,
        "failed",
        error=f"{type(exc).__name__}: {text}",
        output=job.output,
        input_sha256=job.input_sha256,
    )


def run_batch(
    jobs: Sequence[SlideJob],
    client: Client,
    out_dir: str | os.PathLike[str],
    settings_sha256: str,
    *,
    force: bool = False,
    retries: int = 2,
    progress: bool | TextIO = True,
    summary_interval: float = 1.0,
    finish: Callable[[SlideJob, SlideOutcome], SlideOutcome] | None = None,
    task: Callable[[SlideJob], SlideOutcome] = run_job,
) -> BatchReport:
    """Run ``jobs`` on ``client``'s cluster; the manifest and summary go to ``out_dir``.

    Args:
        jobs: one per slide, keys unique.
        settings_sha256: the hash of the settings (the manifest's; see :mod:`.manifest`).
        force: redo slides the manifest says are complete.
        retries: extra tries of a task that raised (worker loss is retried by the scheduler).
        progress: show a tqdm bar (on stderr, or on the stream given).
        finish: called in this process with each job and outcome before the outcome is
            recorded, for a finishing step that must run in one process (writing into a QuPath
            project); it returns the outcome to record (failed when the step failed).
        task: the function run per slide (tests substitute a wrapper).
    """
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("the jobs' keys must be unique")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    summary_path = out / SUMMARY_NAME
    order = [(job.key, job.slide) for job in jobs]
    report = BatchReport(total=len(jobs))
    this_run: dict[str, dict[str, Any]] = {}
    todo: list[SlideJob] = []
    for job in jobs:
        if not force and manifest.complete(job.key, job.input_sha256, settings_sha256):
            report.skipped.append(job.key)
            this_run[job.key] = manifest.entries[job.key]
        else:
            todo.append(job)
    write_summary(summary_path, order, this_run, report.skipped)
    if not todo:
        report.seconds = time.perf_counter() - started
        return report

    from distributed import as_completed

    bar = _progress_bar(len(todo), progress)
    futures = {}
    run = uuid.uuid4().hex[:8]  # a key of its own per run: never an earlier run's result
    for job in todo:
        future = client.submit(
            task, job, key=f"wsi-sam-batch-{run}-{job.key}", retries=retries, pure=False
        )
        futures[future] = job
    last_summary = time.monotonic()
    objects = 0
    try:
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # KilledWorker, or a task that could not run at all
                outcome = _lost(job, exc)
            if finish is not None:
                outcome = finish(job, outcome)
            manifest.record(outcome, settings_sha256)
            this_run[outcome.key] = manifest.entries[outcome.key]
            report.outcomes.append(outcome)
            objects += outcome.objects_out
            if bar is not None:
                bar.set_postfix(objects=objects, failed=len(report.failed), refresh=False)
                bar.update(1)
            if time.monotonic() - last_summary >= summary_interval:
                write_summary(summary_path, order, this_run, report.skipped)
                last_summary = time.monotonic()
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(pending)
        if bar is not None:
            bar.close()
        # An interrupt can land between a slide's journal line and ``this_run``: the journal on
        # disk is the truth, so the summary takes every slide recorded there for this run's work.
        recorded = Manifest(out).entries
        for job in todo:
            entry = recorded.get(job.key)
            if (
                job.key not in this_run
                and entry is not None
                and entry.get("settings_sha256") == settings_sha256
                and entry.get("input_sha256") == job.input_sha256
            ):
                this_run[job.key] = entry
        write_summary(summary_path, order, this_run, report.skipped)
    report.seconds = time.perf_counter() - started
    return report


def _progress_bar(total: int, progress: bool | TextIO) -> Any:
    if progress is False:
        return None
    from tqdm import tqdm

    stream = sys.stderr if progress is True else progress
    return tqdm(
        total=total, unit="slide", desc="slides", file=stream, dynamic_ncols=True, smoothing=0.1
    )
