"""Batch segmentation over many slides on Dask distributed (behind ``wsi-sam batch``).

What lives where, and why:

- :mod:`engine.batch.jobs`: one slide's work as plain, picklable data (:class:`SlideJob`:
  the slide, where its prompts and its output are, the engine settings, what to do) and the job
  runner :func:`run_job` (open the slide, load the prompts, run the engine, write the output,
  return a :class:`SlideOutcome`: the summary row). A worker process loads the model once per
  settings and keeps it (:func:`cached_predictor`).
- :mod:`engine.batch.manifest`: the manifest, an append-only journal of finished slides with
  their input hashes and settings, which makes a rerun skip complete slides; ``summary.csv``.
- :mod:`engine.batch.executor`: the Dask executor: an embedded ``distributed.LocalCluster`` or
  an existing scheduler, tasks retried on worker loss, a progress bar.

The engine never imports the QuPath bridge (the layering of the project), and prompts and
outputs are QuPath GeoJSON or QuPath projects. So reading prompts and writing outputs is not
done here: a job carries an ``io`` object (:class:`engine.batch.jobs.JobIO`) whose class lives
where both the engine and the bridge may be imported (``app/batch_io.py``). It is a small
stateless object of a top-level class, pickled by reference like a function, so a worker
imports the same module to run it; what passes between it and the runner is plain data
(:class:`PromptSpec` in, :class:`MadeObject` out: shapely geometries in level-0 pixels, names,
numbers).
"""

from __future__ import annotations

from engine.batch.jobs import (
    EngineSettings,
    JobIO,
    MadeObject,
    PromptSpec,
    SlideJob,
    SlideOutcome,
    Work,
    cached_predictor,
    run_job,
)
from engine.batch.manifest import Manifest, file_sha256, slide_fingerprint, write_summary

__all__ = [
    "EngineSettings",
    "JobIO",
    "MadeObject",
    "Manifest",
    "PromptSpec",
    "SlideJob",
    "SlideOutcome",
    "Work",
    "cached_predictor",
    "file_sha256",
    "run_job",
    "slide_fingerprint",
    "write_summary",
]
