"""Segment everything: speed on a real slide region and quality on GlaS test images, SAM vs
WSI-SAM, this working tree against a reference commit in the same run.

    .venv/bin/python benchmarks/bench_everything.py [--glas DIR] [--slide PATH]
        [--region x0,y0,x1,y1] [--slide-points-per-side 8] [--glas-points-per-side 24]
        [--modes sam,wsi-sam] [--limit N] [--repeats 3] [--reference 28fdd83 | --no-reference]
        [--skip-speed] [--skip-quality]

- *speed*: ``engine.segment_everything`` over a region of the bundled sample slide (CMU small
  region, 0.499 um/px) at the working magnification (10x). Seconds per field with the fields
  already encoded ("warm": decoding the whole point grid, filtering, polygons, merging; the
  median of ``--repeats`` runs) and from a cleared embedding cache ("cold": encoding too), per
  decoded point and per object kept.
- *quality*: each GlaS test image (``DIR/img/*.png`` with instance label maps in
  ``DIR/labelcol/``, 20x) as the region; instance F1 at IoU 0.5 (one-to-one matching, Hungarian
  on IoU) and the mean Dice of the matched objects. GlaS stays where it is: the default is
  ``../shared/datasets/GlaS_png__McGregorWwww_UDTransNet/Test_Folder`` beside the repository.
- *reference*: the same measurements of the code of another commit (default ``28fdd83``, before
  the field decoder), checked out in a temporary ``git worktree`` and run with the same
  virtualenv; each measurement runs in a fresh process of its own (the reference's ``engine`` on
  ``PYTHONPATH``), the two versions taking turns, and the ratios reference / this tree are
  printed. ``--no-reference`` measures this tree only.

The figures depend on the machine's load: on a shared CPU, compare only figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GLAS = REPO.parent / "shared/datasets/GlaS_png__McGregorWwww_UDTransNet/Test_Folder"
DEFAULT_REFERENCE = "28fdd83"
DEFAULT_REGION = (0.0, 600.0, 2220.0, 2400.0)


def _box(text: str) -> tuple[float, float, float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError("--region needs x0,y0,x1,y1")
    return (values[0], values[1], values[2], values[3])


def instance_scores(
    predicted: list[np.ndarray], labels: np.ndarray, threshold: float = 0.5
) -> tuple[int, int, int, list[float]]:
    """(true positives, false positives, false negatives, Dice of each matched pair)."""
    truth = [labels == v for v in np.unique(labels) if v != 0]
    if not predicted or not truth:
        return 0, len(predicted), len(truth), []
    pred = np.stack([p.reshape(-1) for p in predicted]).astype(np.float32)
    true = np.stack([t.reshape(-1) for t in truth]).astype(np.float32)
    inter = pred @ true.T
    union = pred.sum(1)[:, None] + true.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou)
    matched = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= threshold]
    dice = [float(2 * inter[r, c] / (pred[r].sum() + true[c].sum())) for r, c in matched]
    tp = len(matched)
    return tp, len(predicted) - tp, len(truth) - tp, dice


# --- the measurements (run in a worker process, with whichever engine is on the path) ---------


def _predictor() -> Any:
    import engine

    model = engine.load_wsi_sam()
    return engine.WsiSamPredictor(model, default_magnification=20.0), model


def measure_speed(
    slide_path: Path, region: tuple[float, ...], mode: str, points_per_side: int, repeats: int
) -> dict[str, Any]:
    """Seconds per field warm (median of ``repeats``) and cold, with the run's details."""
    import engine
    from engine.everything import EverythingSettings, segment_everything

    predictor, model = _predictor()
    settings = EverythingSettings(points_per_side=points_per_side, min_area=100.0)
    warm: list[float] = []
    with engine.open_slide(slide_path) as slide:
        # encodes the fields and makes the decoders ready (conversion, compilation)
        segment_everything(predictor, slide, region, mode, EverythingSettings(points_per_side=2))
        for _ in range(repeats):
            started = time.perf_counter()
            result = segment_everything(predictor, slide, region, mode, settings)
            warm.append(time.perf_counter() - started)
        predictor.clear_cache()
        started = time.perf_counter()
        segment_everything(predictor, slide, region, mode, settings)
        cold = time.perf_counter() - started
    fields = len(result.fields)
    return {
        "backend": model.sam.backend_label,
        "fields": fields,
        "points": result.candidates // 3,
        "objects": len(result.objects),
        "warm_field_s": statistics.median(warm) / fields,
        "warm_runs_s": warm,
        "cold_field_s": cold / fields,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def measure_quality(
    glas: Path, mode: str, points_per_side: int, limit: int | None
) -> dict[str, Any]:
    """Instance F1 at IoU 0.5 and the matched objects' mean Dice over GlaS test images."""
    from PIL import Image

    import engine
    from engine.everything import EverythingSettings, segment_everything
    from engine.geometry import geometry_to_mask

    images = sorted((glas / "img").glob("*.png"), key=lambda p: (len(p.stem), p.stem))[:limit]
    predictor, _ = _predictor()
    settings = EverythingSettings(points_per_side=points_per_side, min_area=100.0)
    tp = fp = fn = 0
    dice: list[float] = []
    n_objects = n_glands = 0
    seconds: list[float] = []
    for path in images:
        labels = np.asarray(Image.open(glas / "labelcol" / path.name))
        if labels.ndim == 3:
            labels = labels[..., 0]
        with engine.open_slide(path) as slide:
            width, height = slide.dimensions
            started = time.perf_counter()
            result = segment_everything(predictor, slide, (0, 0, width, height), mode, settings)
            seconds.append(time.perf_counter() - started)
        masks = [geometry_to_mask(o.geometry, (height, width)) for o in result.objects]
        a, b, c, d = instance_scores(masks, labels)
        tp, fp, fn = tp + a, fp + b, fn + c
        dice += d
        n_objects += len(masks)
        n_glands += a + c
    return {
        "images": len(images),
        "objects": n_objects,
        "glands": n_glands,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "dice": statistics.fmean(dice) if dice else float("nan"),
        "image_s": statistics.fmean(seconds) if seconds else float("nan"),
    }


def _worker(args: argparse.Namespace) -> None:
    import engine

    if args.worker == "speed":
        result = measure_speed(
            args.slide, args.region, args.modes, args.slide_points_per_side, args.repeats
        )
    else:
        result = measure_quality(args.glas, args.modes, args.glas_points_per_side, args.limit)
    result["engine"] = str(Path(engine.__file__).parent)
    print("RESULT " + json.dumps(result))


# --- the driver --------------------------------------------------------------------------------


def _run(source: Path, kind: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh process whose ``engine`` comes from ``source``."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--modes",
        mode,
        "--slide",
        str(args.slide),
        "--region",
        ",".join(str(v) for v in args.region),
        "--slide-points-per-side",
        str(args.slide_points_per_side),
        "--glas-points-per-side",
        str(args.glas_points_per_side),
        "--glas",
        str(args.glas),
        "--repeats",
        str(args.repeats),
    ]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    env = dict(os.environ, PYTHONPATH=str(source))
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {mode} in {source} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def _worktree(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-everything-{commit}-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit],
        check=True,
        capture_output=True,
    )
    return folder


def _remove_worktree(folder: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
        check=False,
        capture_output=True,
    )


def _ratio(reference: float, new: float) -> str:
    return f"{reference / new:.2f}" if new > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--glas", type=Path, default=DEFAULT_GLAS, help="GlaS Test_Folder")
    parser.add_argument("--slide", type=Path, default=None, help="slide for the speed part")
    parser.add_argument("--region", type=_box, default=DEFAULT_REGION)
    parser.add_argument("--slide-points-per-side", type=int, default=8)
    parser.add_argument("--glas-points-per-side", type=int, default=24)
    parser.add_argument("--modes", default="sam,wsi-sam")
    parser.add_argument("--limit", type=int, default=None, help="at most this many GlaS images")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per speed figure")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="commit to compare with")
    parser.add_argument("--no-reference", action="store_true", help="this tree only")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--worker", choices=("speed", "quality"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slide is None:
        from app import sample_slide_path

        args.slide = sample_slide_path()
    if args.worker:
        _worker(args)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    versions: list[tuple[str, Path]] = [("this tree", REPO)]
    worktree = None
    if not args.no_reference:
        worktree = _worktree(args.reference)
        versions.insert(0, (args.reference, worktree))
    for name, source in versions:
        print(f"{name}: engine from {source / 'engine'}")
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    try:
        if not args.skip_speed:
            _speed(args, modes, versions)
        if not args.skip_quality:
            _quality(args, modes, versions)
    finally:
        if worktree is not None:
            _remove_worktree(worktree)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _speed(args: argparse.Namespace, modes: list[str], versions: list[tuple[str, Path]]) -> None:
    print(
        f"\nspeed: {Path(args.slide).name}, region {args.region}, "
        f"{args.slide_points_per_side}^2 points per field, warm = median of {args.repeats}"
    )
    print(
        "| mode | code | fields | points | objects | s / field warm | s / field cold "
        "| s / point warm | stages (last warm run, s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for mode in modes:
        found = {}
        for name, source in versions:
            r = found[name] = _run(source, "speed", mode, args)
            assert Path(r["engine"]) == source / "engine", r["engine"]
            stages = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items() if k != "total")
            print(
                f"| {mode} | {name} | {r['fields']} | {r['points']} | {r['objects']} | "
                f"{r['warm_field_s']:.2f} | {r['cold_field_s']:.2f} | "
                f"{r['warm_field_s'] * r['fields'] / max(r['points'], 1):.3f} | {stages} |",
                flush=True,
            )
        if len(versions) == 2:
            old, new = (found[name] for name, _ in versions)
            ratios.append(
                f"{mode}: warm {_ratio(old['warm_field_s'], new['warm_field_s'])}x, "
                f"cold {_ratio(old['cold_field_s'], new['cold_field_s'])}x"
            )
    if ratios:
        print(f"speed-up per field, {versions[0][0]} / this tree: " + "; ".join(ratios))


def _quality(args: argparse.Namespace, modes: list[str], versions: list[tuple[str, Path]]) -> None:
    if not sorted((args.glas / "img").glob("*.png")):
        print(f"\nquality: no GlaS images under {args.glas}/img; skipped")
        return
    print(
        f"\nquality: GlaS test images from {args.glas}, {args.glas_points_per_side}^2 points per "
        "field, min area 100 (um^2, px^2 without a pixel size), level 0 taken as 20x"
    )
    print(
        "| mode | code | images | objects | glands | TP | FP | FN | F1@0.5 "
        "| mean Dice (matched) | s / image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for name, source in versions:
            q = _run(source, "quality", mode, args)
            assert Path(q["engine"]) == source / "engine", q["engine"]
            print(
                f"| {mode} | {name} | {q['images']} | {q['objects']} | {q['glands']} | {q['tp']} "
                f"| {q['fp']} | {q['fn']} | {q['f1']:.3f} | {q['dice']:.3f} | "
                f"{q['image_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
