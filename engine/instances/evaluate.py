"""Score "find every object" methods on annotated images: the instance decoder, the point grid.

Each method gets a whole image (or slide region) and returns outlines in level-0 pixels; they are
drawn into a label map at the image's resolution (later objects over earlier ones) and scored
against the ground-truth label map with :mod:`engine.instances.metrics`. The reports:
``results.csv`` (one row per method and image, plus the summary rows), ``results.md`` and, per
image, a picture of the predictions (red) over the truth (green).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from engine._files import atomic_write_bytes
from engine.geometry import geometry_to_mask
from engine.instances.metrics import ImageScores, Summary, score_image, score_images

__all__ = [
    "Area",
    "MethodResult",
    "draw_labels",
    "evaluate_methods",
    "write_instance_reports",
]


def draw_labels(geometries: Sequence[BaseGeometry], shape: tuple[int, int]) -> NDArray[np.int32]:
    """(H, W) label map of level-0 outlines: object i (1-based) where its outline covers a pixel
    centre; a later object over an earlier one."""
    labels = np.zeros(shape, dtype=np.int32)
    height, width = shape
    for index, geometry in enumerate(geometries, start=1):
        x0, y0, x1, y1 = geometry.bounds
        c0, r0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        c1, r1 = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        if c1 <= c0 or r1 <= r0:
            continue
        mask = geometry_to_mask(geometry, (r1 - r0, c1 - c0), offset=(c0, r0))
        labels[r0:r1, c0:c1][mask] = index
    return labels


@dataclass
class MethodResult:
    """One method's scores on a set of images."""

    method: str
    images: list[ImageScores]
    summary: Summary
    seconds: list[float]

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else 0.0


class Area(Protocol):
    """One scored area: a slide, the area (level-0 geometry) and its truth as a label map of the
    area's bounding box, ``scale`` level-0 pixels per pixel from ``origin``."""

    name: str
    slide: Any
    region: BaseGeometry
    truth: NDArray[np.integer]
    origin: tuple[float, float]
    scale: float


def to_area_pixels(
    geometries: Sequence[BaseGeometry], origin: tuple[float, float], scale: float
) -> list[BaseGeometry]:
    """Level-0 outlines in an area's label-map pixels."""
    shift = np.asarray(origin, dtype=float)
    return [shapely.transform(g, lambda xy: (xy - shift) / scale) for g in geometries]


def evaluate_methods(
    areas: Sequence[Area],
    methods: dict[str, Callable[[Any], Sequence[BaseGeometry]]],
    *,
    pictures: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[MethodResult]:
    """Run every method on every area and score it.

    Args:
        areas: what to score (see :class:`Area`).
        methods: name -> method(area) returning level-0 outlines.
        pictures: a folder for one PNG per (method, area) of predictions over truth.
        progress: ``progress(method, done, total)`` after each area.
    """
    results = []
    for name, method in methods.items():
        scores: list[ImageScores] = []
        seconds: list[float] = []
        for done, area in enumerate(areas):
            started = time.perf_counter()
            geometries = list(method(area))
            seconds.append(time.perf_counter() - started)
            local = to_area_pixels(geometries, area.origin, area.scale)
            predicted = draw_labels(local, area.truth.shape)
            scores.append(score_image(area.truth, predicted, name=area.name))
            if pictures is not None:
                stem = Path(area.name).stem.replace("#", "_")
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
                _picture(area, predicted, pictures / f"{safe}_{stem}.png")
            if progress is not None:
                progress(name, done + 1, len(areas))
        results.append(MethodResult(name, scores, score_images(scores), seconds))
    return results


def _picture(area: Area, predicted: NDArray, path: Path) -> None:
    """The area with truth outlines (green) and predicted outlines (red)."""
    from PIL import Image
    from scipy import ndimage

    truth = area.truth
    height, width = truth.shape
    rgb = np.asarray(
        area.slide.read_scaled(area.origin, area.scale, (width, height)), dtype=np.uint8
    )[..., :3].copy()

    def edges(labels: NDArray) -> NDArray[np.bool_]:
        grown = ndimage.grey_dilation(labels, size=3)
        shrunk = ndimage.grey_erosion(labels, size=3)
        return np.asarray(grown != shrunk)

    rgb[edges(truth)] = (0, 200, 0)
    rgb[edges(predicted)] = (230, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


SUMMARY_FIELDS = (
    "images",
    "n_gt",
    "n_pred",
    "glas_f1",
    "object_dice",
    "object_hausdorff",
    "aji",
    "pq",
    "f1_iou50",
    "msa",
)


def write_instance_reports(
    results: Sequence[MethodResult], out: Path, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """``results.csv`` (per image and summary rows) and ``results.md`` in ``out``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    image_fields = [f for f in ImageScores.__dataclass_fields__ if f not in ("name", "extra")]
    writer.writerow(["method", "image", *image_fields, "seconds"])
    for result in results:
        for scores, seconds in zip(result.images, result.seconds, strict=True):
            row = asdict(scores)
            writer.writerow(
                [result.method, scores.name, *[row[f] for f in image_fields], f"{seconds:.3f}"]
            )
    writer.writerow([])
    writer.writerow(["method", *SUMMARY_FIELDS, "seconds_per_image"])
    for result in results:
        summary = result.summary.as_dict()
        writer.writerow(
            [
                result.method,
                *[summary[f] for f in SUMMARY_FIELDS],
                f"{result.seconds_per_image:.3f}",
            ]
        )
    csv_path = out / "results.csv"
    atomic_write_bytes(csv_path, text.getvalue().encode("utf-8"))
    lines = [
        "| method | images | objects (truth / found) | GlaS F1 | object Dice | object Hausdorff "
        "| AJI | PQ | F1 @ IoU 0.5 | mSA | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        s = result.summary
        lines.append(
            f"| {result.method} | {s.images} | {s.n_gt} / {s.n_pred} | {s.glas_f1:.3f} "
            f"| {s.object_dice:.3f} | {s.object_hausdorff:.1f} | {s.aji:.3f} | {s.pq:.3f} "
            f"| {s.f1_iou50:.3f} | {s.msa:.3f} | {result.seconds_per_image:.2f} |"
        )
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    md_path = out / "results.md"
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode("utf-8"))
    return csv_path, md_path
