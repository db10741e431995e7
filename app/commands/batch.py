"""``wsi-sam batch INPUT --out DIR (--prompts geojson | --refine | --everything --regions CLASS)``.

Runs WSI-SAM over every slide of a folder, a QuPath project or a list, on Dask distributed (an
embedded local cluster, or ``--scheduler ADDRESS``); resumable (a rerun skips complete slides).
The pieces: :mod:`engine.batch` (jobs, manifest, executor), :mod:`app.batch_io` (inputs, prompt
convention, outputs).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments
from app.errors import UserError, check_writable_dir, positive_float, positive_int


def _non_negative_float(text: str) -> float:
    value = float(text) if text.strip() else math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number 0 or more, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="segment every slide of a folder, QuPath project or list (Dask; resumable)",
        description="Run WSI-SAM over many slides on Dask distributed: an embedded local cluster "
        "by default, or an existing one (--scheduler). One QuPath GeoJSON per slide in --out "
        "(or into a QuPath project), summary.csv, and a manifest that lets a rerun skip the "
        "slides already complete.",
    )
    parser.add_argument(
        "input",
        help="a folder of slides, a QuPath project (folder or project.qpproj) or a text file "
        "listing slide paths",
    )
    parser.add_argument(
        "--out",
        help="output folder (GeoJSON per slide, summary.csv, manifest.jsonl); for a QuPath "
        "project the default is into the project itself",
    )
    work = parser.add_argument_group("work per slide (one of)")
    what = work.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--prompts",
        choices=("geojson",),
        help="geojson: boxes (polygons' bounds) and point sets from <slide>.geojson beside each "
        "slide or in --prompts-dir; each becomes one object (README: the convention)",
    )
    what.add_argument(
        "--refine",
        action="store_true",
        help="refine every annotation of the slide (its GeoJSON, or the project's annotations)",
    )
    what.add_argument(
        "--everything",
        action="store_true",
        help="segment everything inside the slide's annotations of class --regions",
    )
    work.add_argument("--prompts-dir", help="folder of <slide stem>.geojson prompt files")
    work.add_argument(
        "--instances",
        metavar="NAME",
        help="--everything with this instance decoder (a name from 'wsi-sam heads list' or a "
        ".pt file) instead of the point grid",
    )
    work.add_argument(
        "--classifier",
        metavar="FILE",
        help="classify the objects made with this object classifier (a .json saved by "
        "'wsi-sam classify --save-classifier' or the app; for a project also a NAME in its "
        "wsi-sam/classifiers/): class and 'Classifier: probability'",
    )
    work.add_argument(
        "--drop-ignored",
        action="store_true",
        help="--classifier: leave out the objects it classifies as a class ending in '*' (Ignore*)",
    )
    work.add_argument("--regions", metavar="CLASS", help="--everything: the regions' class")
    work.add_argument("--class", dest="class_name", help="class of the objects made")
    work.add_argument(
        "--points-per-side",
        type=positive_int,
        default=16,
        help="--everything: point grid per field (default 16: 256 points)",
    )
    work.add_argument(
        "--min-area",
        type=_non_negative_float,
        default=0.0,
        help="--everything: smallest object, um^2 (px^2 without a pixel size)",
    )
    work.add_argument(
        "--max-area",
        type=_non_negative_float,
        help="--everything: largest object, um^2 (px^2 without a pixel size)",
    )
    work.add_argument(
        "--force", action="store_true", help="redo slides the manifest says are complete"
    )
    model = parser.add_argument_group("model")
    model.add_argument("--mode", choices=("wsi-sam", "sam"), default="wsi-sam")
    model.add_argument("--heads", help="WSI-SAM heads checkpoint (default: the shipped heads)")
    model.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    model.add_argument(
        "--magnification", type=positive_float, default=10.0, help="working (HR) magnification"
    )
    model.add_argument(
        "--fixed-magnification",
        action="store_true",
        help="do not adapt the magnification to the object's size",
    )
    model.add_argument(
        "--level0-magnification",
        type=positive_float,
        default=40.0,
        help="magnification assumed for level 0 when the file does not say",
    )
    cluster = parser.add_argument_group("Dask")
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler (tcp://host:8786 or a scheduler "
        "file .json) instead of a local cluster",
    )
    cluster.add_argument(
        "--workers",
        type=positive_int,
        help="local cluster: worker processes (default: one per GPU, else one per 4 CPU cores)",
    )
    cluster.add_argument(
        "--threads-per-worker",
        type=positive_int,
        default=1,
        help="local cluster: slides a worker runs at once (default 1)",
    )
    cluster.add_argument(
        "--engine-threads",
        type=positive_int,
        help="CPU threads of each slide's engine (default: the cores shared "
        "among the local workers; on a cluster each worker's CPUs)",
    )
    cluster.add_argument(
        "--retries",
        type=int,
        default=2,
        choices=range(0, 11),
        metavar="N",
        help="extra tries of a slide whose task raised (default 2)",
    )
    cluster.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(parser, device=True)
    parser.set_defaults(func=run)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Any:
    """``kill`` (SIGTERM) stops like Ctrl+C: tasks cancelled, summary written, cluster closed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def _say(text: str) -> None:
    print(f"wsi-sam batch: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.everything and not args.regions:
        raise UserError("--everything needs --regions CLASS (the class of the regions)", 2)
    if args.regions and not args.everything:
        raise UserError("--regions goes with --everything", 2)
    if args.instances and not args.everything:
        raise UserError("--instances goes with --everything", 2)
    if args.drop_ignored and not args.classifier:
        raise UserError("--drop-ignored goes with --classifier", 2)
    if args.max_area is not None and args.max_area < args.min_area:
        raise UserError("--max-area must be at least --min-area", 2)
    if args.scheduler and (args.workers or args.threads_per_worker != 1):
        raise UserError(
            "--workers / --threads-per-worker size a local cluster; an existing "
            "cluster (--scheduler) has its own workers",
            2,
        )
    prompts_dir = Path(args.prompts_dir) if args.prompts_dir else None
    if prompts_dir is not None and not prompts_dir.is_dir():
        raise UserError(f"--prompts-dir {prompts_dir}: no such folder")

    from app import batch_io
    from engine.batch import EngineSettings, Manifest, Work
    from engine.batch.executor import ClusterOptions, default_workers, open_client, run_batch
    from engine.batch.jobs import WorkKind
    from engine.batch.manifest import settings_sha256

    try:
        found = batch_io.find_inputs(args.input)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    into_project = found.kind == "project" and not args.out
    with_qupath = False
    if into_project:
        assert found.project is not None
        from qupath_bridge import qupath_status

        with_qupath = qupath_status().available
        out_dir = found.project / "wsi-sam" / "batch"
        check_writable_dir(found.project, "INPUT (the project folder)")
    elif not args.out:
        raise UserError("give --out DIR (only a QuPath project can take the outputs itself)", 2)
    else:
        out_dir = Path(args.out)
        check_writable_dir(out_dir, "--out")
    out_dir.mkdir(parents=True, exist_ok=True)

    workers = None if args.scheduler else (args.workers or default_workers(args.device))
    threads = args.engine_threads
    if threads is None and workers is not None:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        threads = max(1, cores // (workers * args.threads_per_worker))
    settings = EngineSettings(
        mode=args.mode,
        heads=args.heads,
        checkpoint=args.checkpoint,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        magnification=args.magnification,
        adaptive=not args.fixed_magnification,
        default_magnification=args.level0_magnification,
        threads=threads,
    )
    everything = None
    if args.everything:
        from engine.everything import EverythingSettings

        everything = EverythingSettings(
            points_per_side=args.points_per_side, min_area=args.min_area, max_area=args.max_area
        )
    kind: WorkKind = "prompts" if args.prompts else ("refine" if args.refine else "everything")
    classifier, classifier_sha256 = _classifier_file(args)
    work = Work(
        kind,
        everything,
        *_decoder_file(args),
        classifier=classifier,
        classifier_sha256=classifier_sha256,
        drop_ignored=args.drop_ignored,
    )
    io = batch_io.BatchIO(output_class=args.class_name, region_class=args.regions)
    manifest = Manifest(out_dir)
    jobs = batch_io.make_jobs(
        found,
        out_dir,
        settings,
        work,
        io,
        prompts_dir=prompts_dir,
        into_project=into_project,
        with_qupath=with_qupath,
        manifest=manifest,
    )
    settings_hash = settings_sha256(batch_io.settings_identity(settings, work, io))
    writer = None
    if with_qupath:
        assert found.project is not None
        writer = batch_io.QuPathProjectWriter(found.project)
    where = (
        f"the Dask scheduler {args.scheduler}"
        if args.scheduler
        else f"a local cluster of {workers} worker{'s' * (workers != 1)}"
        f" x {args.threads_per_worker} thread{'s' * (args.threads_per_worker != 1)}"
    )
    target = (
        "into the QuPath project"
        if with_qupath
        else "into the project's wsi-sam sidecars"
        if into_project
        else f"into {out_dir}"
    )
    _say(f"{len(jobs)} slides ({found.kind}), {kind}, writing {target}; on {where}")
    started = time.perf_counter()
    previous = _stop_on_sigterm()
    try:
        options = ClusterOptions(
            scheduler=args.scheduler, workers=workers, threads_per_worker=args.threads_per_worker
        )
        with open_client(options) as client:
            from engine.batch.executor import dashboard_link

            link = dashboard_link(client)
            if link:
                _say(f"Dask dashboard: {link}")
            report = run_batch(
                jobs,
                client,
                out_dir,
                settings_hash,
                force=args.force,
                retries=args.retries,
                progress=not args.no_progress,
                finish=writer,
            )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started
    summary = out_dir / "summary.csv"
    skipped = f", {len(report.skipped)} complete already (skipped)" if report.skipped else ""
    print(
        f"{report.done} slides done, {report.objects} objects in {elapsed:.1f} s{skipped}; "
        f"summary: {summary}"
    )
    if report.failed:
        first = report.failed[0]
        _say(
            f"{len(report.failed)} of {report.total} slides failed (see {summary}); first: "
            f"{Path(first.slide).name}: {first.error}"
        )
        return 1
    return 0


def _decoder_file(args: argparse.Namespace) -> tuple[str | None, str]:
    """``--instances``: the decoder's absolute path (the workers load it) and its sha256, checked
    here so that a wrong name or a damaged file stops the batch before it starts."""
    if not args.instances:
        return None, ""
    from engine.heads_catalogue import resolve_decoder
    from engine.instances.checkpoint import DecoderError, read_decoder
    from engine.wsi_sam import HeadsError

    source = Path(args.input)
    is_project = source.suffix == ".qpproj" or (source / "project.qpproj").is_file()
    project = source if is_project else None
    try:
        path = resolve_decoder(args.instances, project=project)
        decoder = read_decoder(path)
    except (DecoderError, HeadsError) as exc:
        raise UserError(f"--instances: {exc}") from None
    return str(Path(path).resolve()), decoder.sha256 or ""


def _classifier_file(args: argparse.Namespace) -> tuple[str | None, str]:
    """``--classifier``: the file's absolute path (the workers load it) and its sha256, loaded
    here once so that a wrong name or a damaged, foreign or pickled file stops the batch before
    it starts."""
    if not args.classifier:
        return None, ""
    import hashlib

    from engine.objects.classifier import ClassifierError, ObjectClassifier

    path = Path(args.classifier)
    source = Path(args.input)
    project = source.parent if source.suffix == ".qpproj" else source
    named = project / "wsi-sam" / "classifiers" / f"{args.classifier}.json"
    if not path.is_file() and (project / "project.qpproj").is_file() and named.is_file():
        path = named
    try:
        data = path.read_bytes()
        ObjectClassifier.from_json(data, str(path))
    except FileNotFoundError:
        raise UserError(f"--classifier {path}: no such file") from None
    except ClassifierError as exc:
        raise UserError(f"--classifier: {exc}") from None
    return str(path.resolve()), hashlib.sha256(data).hexdigest()
