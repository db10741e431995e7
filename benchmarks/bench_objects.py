"""Objects by example, engine side: features of 1,000 objects on one field, and classifying
100,000 objects.

- *features*: a GlaS-like 1024 x 1024 image at 20x with 1,000 small objects (nucleus-sized discs
  and ellipses) on one field: the field's encode (HR + LR), then everything else
  (:func:`engine.objects.object_features` minus the encode: the read, the colour
  deconvolution, rasterising, pooling and measuring each object), per 1,000 objects and per
  object; then the same call again (features cached with the field).
- *classify*: the default classifier (``engine.objects.classifier.DEFAULT_KIND``) and the other
  kind, trained on 16 examples per class of the default feature set (519 columns), predicting
  100,000 objects; wall time and this process's CPU time (on a busy machine the CPU time is what
  an idle one would take).

    nice -n 15 .venv/bin/python benchmarks/bench_objects.py [--objects 1000] [--predict 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def bench_features(count: int, runs: int) -> None:
    from shapely.affinity import rotate, scale
    from shapely.geometry import Point
    from synthetic_glands import write_gland_slide

    import engine
    from engine.objects.features import object_features

    rng = np.random.default_rng(0)
    objects = []
    for _ in range(count):
        x, y = rng.uniform(20, 1004, 2)
        r = rng.uniform(3, 9)
        blob = scale(Point(x, y).buffer(r, quad_segs=8), 1.0, rng.uniform(0.6, 1.0))
        objects.append(rotate(blob, rng.uniform(0, 180)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "glands.tif"
        write_gland_slide(path, 1024, 1024, [(300, 300, 150, 110), (700, 650, 120, 160)])
        model = engine.load_wsi_sam(heads="none", fast_decoders=False)
        print(f"encoder: {model.sam.backend_label}")
        beyond, encodes = [], []
        with engine.open_slide(path) as slide:
            for _ in range(runs):
                predictor = engine.WsiSamPredictor(model, magnification=20.0)
                started = time.perf_counter()
                found = object_features(predictor, slide, objects)
                total = time.perf_counter() - started
                encode = found.timings["encode"]
                beyond.append(total - encode)
                encodes.append(encode)
                assert len(found.fields) == 1, found.fields
            cpu0 = time.process_time()
            started = time.perf_counter()
            object_features(predictor, slide, objects)
            cached = time.perf_counter() - started
            cached_cpu = time.process_time() - cpu0
        median = statistics.median(beyond)
        print(
            f"features of {count} objects on one field: encode (HR + LR) "
            f"{statistics.median(encodes):.2f} s; beyond the encode {median:.2f} s median of "
            f"{runs} (min {min(beyond):.2f} s) = {1000 * median / count:.2f} ms per object; "
            f"again from the cache {cached * 1000:.0f} ms (CPU {cached_cpu * 1000:.0f} ms)"
        )
        print(f"  parts of the last run: { {k: round(v, 3) for k, v in found.timings.items()} }")


def bench_classify(count: int, runs: int) -> None:
    from engine.objects.classifier import DEFAULT_FEATURE_SET, DEFAULT_KIND, KINDS, ObjectClassifier
    from engine.objects.features import feature_dimensions

    rng = np.random.default_rng(0)
    width = feature_dimensions(DEFAULT_FEATURE_SET)
    centres = rng.normal(0, 1, (2, width)).astype(np.float32)
    x = np.concatenate(
        [centres[0] + rng.normal(0, 1, (16, width)), centres[1] + rng.normal(0, 1, (16, width))]
    )
    labels = ["Gland"] * 16 + ["Ignore*"] * 16
    objects = (centres[rng.integers(0, 2, count)] + rng.normal(0, 1, (count, width))).astype(
        np.float32
    )
    for kind in [DEFAULT_KIND] + [k for k in KINDS if k != DEFAULT_KIND]:
        classifier = ObjectClassifier.train(x.astype(np.float32), labels, kind=kind)
        walls, cpus = [], []
        for _ in range(runs):
            cpu0 = time.process_time()
            started = time.perf_counter()
            classifier.predict(objects)
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu0)
        started = time.perf_counter()
        ObjectClassifier.train(x.astype(np.float32), labels, kind=kind)
        fit = time.perf_counter() - started
        tag = " (default)" if kind == DEFAULT_KIND else ""
        print(
            f"classify {count} objects, {kind}{tag}, {DEFAULT_FEATURE_SET} ({width} columns): "
            f"{statistics.median(walls):.3f} s median wall (min {min(walls):.3f}), CPU "
            f"{statistics.median(cpus):.3f} s; fit on 32 examples {fit * 1000:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--predict", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    bench_classify(args.predict, args.runs)
    bench_features(args.objects, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
