"""Slides per minute of ``wsi-sam batch`` on Dask with 1 and 2 workers, and the executor's
per-slide overhead against calling the engine directly.

    .venv/bin/python benchmarks/bench_batch.py [--slides 6] [--mode wsi-sam] [--workers 1,2]

The slides are copies of the sample slide (``app/resources/sample``), each with one box prompt
at a different place (so each needs its own field: one encode in SAM mode, two in WSI-SAM mode).

- *direct*: this process, the model loaded once (not timed), then per slide what a job does:
  open the slide, read its prompts, ``segment``, write its GeoJSON (``engine.batch.run_job``
  called in-process, with all the machine's cores).
- *Dask, N workers*: an embedded ``LocalCluster`` of N worker processes (engine threads: the
  cores shared among them, as ``wsi-sam batch`` does). Cluster start and the workers' model
  loading are timed apart (a warm-up batch of one slide per worker), then the timed batch runs
  all slides (``--force``): wall time from submit to the last summary row.
- *overhead per slide*: with 1 worker, (Dask wall - direct wall) / slides, the direct wall being
  the mean of a run before and one after the Dask runs; and the time a slide spends outside
  ``run_job`` (wall x workers / slides - mean seconds inside run_job): scheduling, pickling the
  job and its result, the manifest line and summary.csv.

On a shared machine (other processes using the cores) the figures are noisy: run it when the
machine is quiet, and compare ratios from one run rather than absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app import batch_io, sample_slide_path
from engine.batch import EngineSettings, Work, run_job
from engine.batch.executor import ClusterOptions, open_client, run_batch
from engine.batch.manifest import settings_sha256

# box prompts, each in a different 10x field of the 2220 x 2967 sample slide
BOXES = [
    (300, 300, 700, 700),
    (1500, 300, 1900, 700),
    (300, 1300, 700, 1700),
    (1500, 1300, 1900, 1700),
    (300, 2300, 700, 2700),
    (1500, 2300, 1900, 2700),
]


def make_slides(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        x0, y0, x1, y1 = BOXES[i % len(BOXES)]
        shutil.copyfile(sample_slide_path(), folder / f"slide{i:03d}.svs")
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation"},
        }
        (folder / f"slide{i:03d}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [feature]})
        )
    return folder


def jobs_for(folder: Path, out: Path, settings: EngineSettings) -> tuple[list[Any], str]:
    work, io = Work("prompts"), batch_io.BatchIO()
    jobs = batch_io.make_jobs(batch_io.find_inputs(folder), out, settings, work, io)
    return jobs, settings_sha256(batch_io.settings_identity(settings, work, io))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--mode", choices=("wsi-sam", "sam"), default="wsi-sam")
    parser.add_argument("--workers", default="1,2", help="worker counts to time, e.g. 1,2,4")
    args = parser.parse_args()
    counts = [int(v) for v in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    folder = make_slides(root / "slides", args.slides)
    n_cores = cores()
    print(
        f"{args.slides} slides (copies of the sample, one box each), mode {args.mode}, "
        f"{n_cores} cores, load average {os.getloadavg()[0]:.1f} at start"
    )

    settings = EngineSettings(mode=args.mode, threads=n_cores)
    jobs, _ = jobs_for(folder, root / "direct", settings)
    t0 = time.perf_counter()
    warm = run_job(jobs[0])  # loads the model in this process
    load = time.perf_counter() - t0
    assert warm.status == "done", warm.error

    def run_direct(label: str) -> float:
        t0 = time.perf_counter()
        inside = [run_job(job) for job in jobs]
        wall = time.perf_counter() - t0
        assert all(o.status == "done" for o in inside), [o.error for o in inside]
        per = wall / len(jobs)
        print(
            f"direct ({label}): {per:6.2f} s/slide  {60 / per:6.1f} slides/min"
            f"   (model load {load:.1f} s, {n_cores} threads)"
        )
        return wall

    first = run_direct("before")

    results: dict[int, float] = {}
    for count in counts:
        threads = max(1, n_cores // count)
        settings = EngineSettings(mode=args.mode, threads=threads)
        t0 = time.perf_counter()
        with open_client(ClusterOptions(workers=count, dashboard=False)) as client:
            started = time.perf_counter() - t0
            warm_jobs, sha = jobs_for(folder, root / f"warm{count}", settings)
            t0 = time.perf_counter()
            run_batch(warm_jobs[:count], client, root / f"warm{count}", sha, progress=False)
            loading = time.perf_counter() - t0
            jobs, sha = jobs_for(folder, root / f"dask{count}", settings)
            t0 = time.perf_counter()
            report = run_batch(jobs, client, root / f"dask{count}", sha, force=True, progress=False)
            wall = time.perf_counter() - t0
        assert report.done == len(jobs), [o.error for o in report.failed]
        results[count] = wall
        per = wall / len(jobs)
        in_task = statistics.mean(o.seconds for o in report.outcomes)
        outside = wall * count / len(jobs) - in_task
        print(
            f"Dask {count} worker{'s' if count > 1 else ' '}: {per:6.2f} s/slide  "
            f"{60 / per:6.1f} slides/min   (cluster start {started:.1f} s, model load on the "
            f"workers {loading:.1f} s, {threads} threads each; per slide {in_task:.2f} s "
            f"inside run_job, {outside:+.2f} s outside)"
        )
    direct = (first + run_direct("after ")) / 2  # the machine's load changes meanwhile
    direct_per = direct / args.slides
    if 1 in results:
        overhead = (results[1] - direct) / args.slides
        print(
            f"executor overhead with 1 worker: {overhead:+.3f} s/slide against direct "
            f"({100 * overhead / direct_per:+.1f} %)"
        )
    if 1 in results and 2 in results:
        print(f"2 workers / 1 worker throughput: {results[1] / results[2]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: figures noisy)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
