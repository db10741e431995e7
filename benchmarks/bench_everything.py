"""Segment everything: speed on a real slide region and quality on GlaS test images, SAM vs
WSI-SAM.

    .venv/bin/python benchmarks/bench_everything.py [--glas DIR] [--slide PATH]
        [--region x0,y0,x1,y1] [--slide-points-per-side 8] [--glas-points-per-side 24]
        [--modes sam,wsi-sam] [--limit N]

- *speed*: ``engine.segment_everything`` over a region of the bundled sample slide (CMU small
  region, 0.499 um/px) at the working magnification (10x); seconds per field (encode + decode
  of the whole point grid + filtering + polygons), per decoded point and per object kept.
- *quality*: each GlaS test image (``DIR/img/*.png`` with instance label maps in
  ``DIR/labelcol/``, 20x) as the region; instance F1 at IoU 0.5 (one-to-one matching, Hungarian
  on IoU) and the mean Dice of the matched objects. GlaS stays where it is: the default is
  ``../shared/datasets/GlaS_png__McGregorWwww_UDTransNet/Test_Folder`` beside the repository.

The figures depend on the machine's load: on a shared CPU, run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

import engine
from app import sample_slide_path
from engine.everything import EverythingSettings, segment_everything
from engine.geometry import geometry_to_mask

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GLAS = REPO.parent / "shared/datasets/GlaS_png__McGregorWwww_UDTransNet/Test_Folder"


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


def bench_speed(
    predictor: engine.WsiSamPredictor,
    slide_path: Path,
    region: tuple[float, ...],
    modes: list[str],
    points_per_side: int,
) -> None:
    settings = EverythingSettings(points_per_side=points_per_side, min_area=100.0)
    print(f"speed: {slide_path.name}, region {region}, {points_per_side}^2 points per field")
    print("| mode | fields | points | objects | total s | s / field | s / point | s / object |")
    print("|---|---|---|---|---|---|---|---|")
    with engine.open_slide(slide_path) as slide:
        for mode in modes:
            predictor.clear_cache()
            started = time.perf_counter()
            result = segment_everything(predictor, slide, region, mode, settings)
            total = time.perf_counter() - started
            points = result.candidates // 3
            objects = max(len(result.objects), 1)
            print(
                f"| {mode} | {len(result.fields)} | {points} | {len(result.objects)} | "
                f"{total:.1f} | {total / len(result.fields):.1f} | {total / max(points, 1):.3f} | "
                f"{total / objects:.2f} |"
            )


def bench_quality(
    predictor: engine.WsiSamPredictor,
    glas: Path,
    modes: list[str],
    points_per_side: int,
    limit: int | None,
) -> None:
    images = sorted((glas / "img").glob("*.png"), key=lambda p: (len(p.stem), p.stem))[:limit]
    if not images:
        print(f"quality: no GlaS images under {glas}/img; skipped")
        return
    settings = EverythingSettings(points_per_side=points_per_side, min_area=100.0)
    print(
        f"quality: {len(images)} GlaS test images from {glas}, {points_per_side}^2 points per "
        "field, min area 100 (um^2, px^2 without a pixel size), level 0 taken as 20x"
    )
    print("| mode | images | objects | glands | TP | FP | FN | F1@0.5 | mean Dice (matched) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        tp = fp = fn = 0
        dice: list[float] = []
        n_objects = n_glands = 0
        started = time.perf_counter()
        for path in images:
            labels = np.asarray(Image.open(glas / "labelcol" / path.name))
            if labels.ndim == 3:
                labels = labels[..., 0]
            with engine.open_slide(path) as slide:
                width, height = slide.dimensions
                result = segment_everything(predictor, slide, (0, 0, width, height), mode, settings)
            masks = [geometry_to_mask(o.geometry, (height, width)) for o in result.objects]
            a, b, c, d = instance_scores(masks, labels)
            tp, fp, fn = tp + a, fp + b, fn + c
            dice += d
            n_objects += len(masks)
            n_glands += a + c
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        mean_dice = statistics.fmean(dice) if dice else float("nan")
        print(
            f"| {mode} | {len(images)} | {n_objects} | {n_glands} | {tp} | {fp} | {fn} | {f1:.3f} "
            f"| {mean_dice:.3f} | {time.perf_counter() - started:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glas", type=Path, default=DEFAULT_GLAS, help="GlaS Test_Folder")
    parser.add_argument("--slide", type=Path, default=None, help="slide for the speed part")
    parser.add_argument("--region", type=_box, default=(0.0, 600.0, 2220.0, 2400.0))
    parser.add_argument("--slide-points-per-side", type=int, default=8)
    parser.add_argument("--glas-points-per-side", type=int, default=24)
    parser.add_argument("--modes", default="sam,wsi-sam")
    parser.add_argument("--limit", type=int, default=None, help="at most this many GlaS images")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    model = engine.load_wsi_sam()
    predictor = engine.WsiSamPredictor(model, default_magnification=20.0)
    print(f"encoder: {model.sam.backend_label}; heads: {model.metadata.get('path', 'fresh')}")
    if not args.skip_speed:
        slide = args.slide or sample_slide_path()
        bench_speed(predictor, slide, args.region, modes, args.slide_points_per_side)
    bench_quality(predictor, args.glas, modes, args.glas_points_per_side, args.limit)


if __name__ == "__main__":
    main()
