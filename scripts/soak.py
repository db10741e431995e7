"""Soak test (a script, not a unit test): many prompts through the app's engine worker, and many
annotations in the viewer. Offscreen; the real engine.

1. ``--prompts`` (500) prompts in a row through ``app.engine_worker.EngineClient`` on the bundled
   sample slide, submitted faster than the engine answers: bursts of 1-5 prompts a few
   milliseconds apart (each replaces the one still waiting, which is dropped as stale), then a
   wait for the answer of the last one. Boxes, multi-point and single-point prompts at random
   places. Reports the process's memory (RSS) after the first 50 prompts and after all of them,
   and how many prompts were answered, failed, or dropped as stale.
2. ``--annotations`` (5,000) annotations on the sample slide in the main window (random
   polygons of 24-64 vertices), the outlines shown; repaints the viewer at fit-to-window and at
   three zoom levels while panning, and reports the repaint time p50 / p95.

Acceptance (issue 17): memory after all prompts within 10 % of memory after the first 50, and
repaint p95 <= 16 ms (wall clock; where the machine is so busy that the viewer without outlines
is already over 16 ms, the UI thread's CPU time per repaint). Exit status 0 when both hold.

Run: ``.venv/bin/python scripts/soak.py`` (``--backend torch`` for the reference encoder).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# settings and the crash journal of this run go to a folder of its own
os.environ.setdefault("WSI_SAM_DATA_DIR", tempfile.mkdtemp(prefix="wsi-sam-soak-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def field_cache_mb(client: Any) -> float:
    """The engine's embedding cache (bounded by WsiSamPredictor.cache_bytes), in MiB: memory that
    grows by design until the budget is reached (the worker's predictor is private; a script may
    look)."""
    predictor = getattr(getattr(client, "_worker", None), "_predictor", None)
    nbytes = getattr(predictor, "cache_nbytes", None)
    return nbytes() / 2**20 if callable(nbytes) else 0.0


def wait_until(app: Any, condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.001)
    return True


# -- 1. prompts through the engine worker -----------------------------------------------------


def random_request(rng: np.random.Generator, request_id: int, slide_path: str, size: Any) -> Any:
    from app.engine_worker import SegmentRequest

    width, height = size
    kind = rng.choice(["box", "points", "point"], p=[0.5, 0.3, 0.2])
    cx, cy = rng.uniform(100, width - 100), rng.uniform(100, height - 100)
    if kind == "box":
        half = rng.uniform(20, 90, 2)
        box = (cx - half[0], cy - half[1], cx + half[0], cy + half[1])
        return SegmentRequest(request_id, slide_path, box=box)
    count = 1 if kind == "point" else int(rng.integers(2, 6))
    points = tuple(
        (float(cx + rng.normal(0, 15)), float(cy + rng.normal(0, 15))) for _ in range(count)
    )
    labels = (1, *(int(rng.integers(0, 2)) for _ in range(count - 1)))
    return SegmentRequest(request_id, slide_path, points=points, labels=labels)


def soak_prompts(app: Any, args: argparse.Namespace) -> dict[str, Any]:
    import engine
    from app import sample_slide_path
    from app.engine_worker import EngineClient, EngineOptions

    slide_path = str(sample_slide_path())
    with engine.open_slide(slide_path) as slide:
        size = slide.dimensions
    client = EngineClient(options=EngineOptions(backend=args.backend, precision=args.precision))
    answered: set[int] = set()
    failed: dict[int, str] = {}
    client.finished.connect(lambda request_id, _result: answered.add(request_id))
    client.failed.connect(lambda request_id, message: failed.__setitem__(request_id, message))
    t_load = time.perf_counter()
    client.start()
    if not wait_until(app, lambda: client.state() in ("ready", "failed"), 600):
        raise SystemExit("the engine did not load within 10 minutes")
    if client.state() != "ready":
        raise SystemExit("the engine failed to load")
    load_s = time.perf_counter() - t_load
    print(f"engine: {client.backend_label()} loaded in {load_s:.1f} s; RSS {rss_mb():.0f} MiB")

    rng = np.random.default_rng(args.seed)
    submitted = 0
    rss_50 = None
    cache_50 = 0.0
    rss_samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    while submitted < args.prompts:
        burst = int(rng.integers(1, 6))
        last = None
        for _ in range(min(burst, args.prompts - submitted)):
            last = client.submit(random_request(rng, client.new_request_id(), slide_path, size))
            submitted += 1
            gap_end = time.perf_counter() + args.gap_ms / 1000
            while time.perf_counter() < gap_end:  # faster than the engine answers
                app.processEvents()
            if submitted == 50:
                rss_50 = None  # measured once the 50th has been answered or dropped
        assert last is not None
        wait_until(app, lambda last=last: last in answered or last in failed, 120)
        wait_until(app, lambda: not client.is_busy(), 120)
        if rss_50 is None and submitted >= 50:
            gc.collect()
            rss_50 = rss_mb()
            cache_50 = field_cache_mb(client)
            print(f"after {submitted} prompts: RSS {rss_50:.0f} MiB (field cache {cache_50:.0f})")
        if submitted % 100 < burst or submitted == args.prompts:
            rss_samples.append((submitted, rss_mb()))
    elapsed = time.perf_counter() - started
    gc.collect()
    rss_end = rss_mb()
    cache_end = field_cache_mb(client)
    client.shutdown()
    stale = submitted - len(answered) - len(failed)
    if rss_50 is None:
        rss_50 = rss_end
    growth = (rss_end - rss_50) / rss_50
    figures: dict[str, Any] = {
        "submitted": submitted,
        "answered": len(answered),
        "failed": len(failed),
        "stale": stale,
        "rss_50_mb": rss_50,
        "rss_end_mb": rss_end,
        "growth": growth,
        "cache_50_mb": cache_50,
        "cache_end_mb": cache_end,
        "growth_less_cache": (rss_end - cache_end - (rss_50 - cache_50)) / (rss_50 - cache_50),
        "seconds": elapsed,
        "samples": rss_samples,
        "failures": sorted(set(failed.values()))[:5],
    }
    print(
        f"prompts: {submitted} submitted in {elapsed:.0f} s: {len(answered)} answered, "
        f"{stale} dropped as stale, {len(failed)} failed"
        + (f" ({'; '.join(figures['failures'])})" if failed else "")
    )
    print("RSS over the run: " + ", ".join(f"{n}: {mb:.0f}" for n, mb in rss_samples) + " MiB")
    print(
        f"memory: {rss_50:.0f} MiB after the first 50 prompts, {rss_end:.0f} MiB after "
        f"{submitted}: {100 * growth:+.1f} % (acceptance: within 10 %); the embedding cache "
        f"(bounded, {cache_50:.0f} -> {cache_end:.0f} MiB) aside: "
        f"{100 * figures['growth_less_cache']:+.1f} %"
    )
    return figures


# -- 2. 5,000 annotations in the viewer --------------------------------------------------------


class _NoEngine:
    def segment(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("no engine in the viewer soak")


def random_annotations(count: int, size: Any, seed: int) -> list[Any]:
    from shapely.geometry import Polygon

    import qupath_bridge

    rng = np.random.default_rng(seed)
    width, height = size
    classes = [qupath_bridge.PathClass.from_name(n) for n in ("Tumor", "Stroma", "Immune cells")]
    out = []
    for i in range(count):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        vertices = int(rng.integers(24, 65))
        angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
        radii = rng.uniform(8, 40) * (1 + 0.25 * rng.standard_normal(vertices).clip(-2, 2))
        ring = list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True))
        polygon = Polygon(ring).buffer(0)
        if polygon.is_empty:
            continue
        out.append(qupath_bridge.Annotation(polygon, path_class=classes[i % 3], name=f"object {i}"))
    return out


def soak_viewer(app: Any, args: argparse.Namespace) -> dict[str, Any]:
    from app import sample_slide_path
    from app.main_window import MainWindow

    window = MainWindow(predictor_factory=lambda _progress: _NoEngine())
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    if not window.open_path(sample_slide_path()):
        raise SystemExit("cannot open the sample slide")
    annotations = random_annotations(args.annotations, window.slide.dimensions, args.seed)
    t0 = time.perf_counter()
    window.store.set_all(annotations)
    app.processEvents()
    build_s = time.perf_counter() - t0
    view = window.view
    results: dict[str, Any] = {"count": len(annotations), "build_s": build_s}
    all_times: list[float] = []
    all_cpu: list[float] = []
    baseline: list[float] = []
    for name, zoom in (("fit", 1.0), ("2x", 2.0), ("4x", 4.0), ("16x", 16.0)):
        view.fit_to_window()
        if zoom != 1.0:
            view.zoom_by(zoom)
        # let the tiles arrive, so that the repaint times are the outlines', not tile decoding
        wait_until(app, lambda: not view.pending_tiles() and not view.missing_visible_tiles(), 30)
        for _ in range(5):  # warm-up
            view.viewport().repaint()
        for shown in (False, True):  # the same frames without outlines: the viewer's own cost
            window.overlay.set_visible(shown)
            times, cpu = [], []
            for frame in range(args.frames):
                view.pan_by(6 if frame % 40 < 20 else -6, 3 if frame % 20 < 10 else -3)
                app.processEvents()
                t, c = time.perf_counter(), time.thread_time()
                view.viewport().repaint()
                times.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
            if not shown:
                baseline += times
                continue
            all_times += times
            all_cpu += cpu
        results[name] = (1e3 * percentile(times, 50), 1e3 * percentile(times, 95))
        print(
            f"repaint with {len(annotations):,} outlines, zoom {name:>3}: p50 "
            f"{results[name][0]:5.1f} ms, p95 {results[name][1]:5.1f} ms wall; CPU p95 "
            f"{1e3 * percentile(cpu, 95):5.1f} ms ({args.frames} frames)"
        )
    results["p50"] = 1e3 * percentile(all_times, 50)
    results["p95"] = 1e3 * percentile(all_times, 95)
    results["cpu_p95"] = 1e3 * percentile(all_cpu, 95)
    results["baseline_p95"] = 1e3 * percentile(baseline, 95)
    print(
        f"repaint overall: p50 {results['p50']:.1f} ms, p95 {results['p95']:.1f} ms wall "
        f"(UI thread CPU p50 {1e3 * percentile(all_cpu, 50):.1f} ms, p95 "
        f"{results['cpu_p95']:.1f} ms); the same frames without outlines: p50 "
        f"{1e3 * percentile(baseline, 50):.1f} ms, p95 {1e3 * percentile(baseline, 95):.1f} ms; "
        f"acceptance: p95 <= 16 ms; outlines built in {build_s:.2f} s"
    )
    window._unsaved = False
    window.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--annotations", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=60, help="repaints per zoom level")
    parser.add_argument("--gap-ms", type=float, default=3.0, help="between prompts of a burst")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-prompts", action="store_true")
    parser.add_argument("--skip-viewer", action="store_true")
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ok = True
    if not args.skip_prompts:
        prompts = soak_prompts(app, args)
        ok &= prompts["growth"] <= 0.10 and prompts["answered"] > 0
    if not args.skip_viewer:
        viewer = soak_viewer(app, args)
        # On a machine too busy for wall-clock figures (the viewer alone, without outlines, is
        # over 16 ms at p95), the UI thread's CPU time per repaint is what the outlines cost.
        busy = viewer["baseline_p95"] > 16.0
        ok &= viewer["p95"] <= 16.0 or (busy and viewer["cpu_p95"] <= 16.0)
        if busy:
            print("note: wall-clock repaint times are dominated by other load on this machine")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
