"""Segment everything in a region: tiles of fields, a point grid per field, dedup, area limits.

The region (a level-0 polygon or box) is covered by overlapping fields at the working
magnification. On each field a regular grid of single-point prompts (``points_per_side`` per
side, SAM's automatic-mask-generator layout) is decoded in batches, three candidates per point.
As in SAM's ``SamAutomaticMaskGenerator``, a candidate is kept when its predicted IoU and its
stability score (the IoU of the mask thresholded at +offset and at -offset of the logits) pass
their thresholds, and duplicates among a field's candidates are removed by non-maximum
suppression (here on mask IoU). Across fields, objects seen by two overlapping fields are
merged, not doubled: two objects are the same when, inside the area both fields saw, each
covers mostly the other's pixels; a copy cut by its field's border gives way to a whole one,
and two cut copies are united. Objects are clipped to the region, and the area limits (um^2
when the slide has a pixel size, px^2 otherwise) apply to the final outlines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

from engine.cleanup import area_to_pixels
from engine.geometry import mask_to_geometry
from engine.mask_window import upsample_window
from engine.patches import PATCH_SIZE, Field, make_field
from engine.slides import Slide
from engine.wsi_predictor import MODES, Mode, PromptError, WsiSamPredictor
from engine.wsi_sam import LOWRES_SIZE

__all__ = [
    "EverythingCancelledError",
    "EverythingObject",
    "EverythingResult",
    "EverythingSettings",
    "drop_duplicates",
    "merge_objects",
    "point_grid",
    "segment_everything",
    "tile_fields",
]


class EverythingCancelledError(Exception):
    """:func:`segment_everything` was cancelled; nothing it found is returned."""


@dataclass(frozen=True)
class EverythingSettings:
    """How densely to prompt and what to keep.

    Attributes:
        points_per_side: the grid of point prompts per field is points_per_side^2.
        points_per_batch: points decoded together (memory grows with it).
        pred_iou_thresh: keep candidates whose predicted IoU is at least this.
        stability_score_thresh: keep candidates whose stability score is at least this.
        stability_score_offset: the logit offset of the stability score.
        nms_thresh: within a field, a candidate whose mask IoU with a better one exceeds this
            is a duplicate.
        merge_thresh: across fields, the overlap (inside the area both fields saw) above which
            two objects are one.
        tile_overlap: overlap of neighbouring fields, as a fraction of the HR patch.
        min_area, max_area: object area limits in um^2 (px^2 without a pixel size); None for
            no upper limit.
        max_field_fraction: candidates covering more than this fraction of their field (the
            background, a whole tissue fragment) are dropped.
        magnification: the fields' magnification; None uses the predictor's.
    """

    points_per_side: int = 16
    points_per_batch: int = 32
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.9
    stability_score_offset: float = 1.0
    nms_thresh: float = 0.7
    merge_thresh: float = 0.5
    tile_overlap: float = 0.25
    min_area: float = 0.0
    max_area: float | None = None
    max_field_fraction: float = 0.5
    magnification: float | None = None

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be at least 1")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.min_area < 0 or (self.max_area is not None and self.max_area < self.min_area):
            raise ValueError("area limits need 0 <= min_area <= max_area")


@dataclass
class EverythingObject:
    """One object found.

    Attributes:
        geometry: Polygon or MultiPolygon in level-0 pixels (clipped to the region).
        score: predicted IoU.
        stability: stability score.
        point: the level-0 (x, y) grid point that prompted it.
        field: the field it was decoded on.
        cut: whether its mask touched its field's border (it may extend beyond the field).
    """

    geometry: Polygon | MultiPolygon
    score: float
    stability: float
    point: tuple[float, float]
    field: Field
    cut: bool = False


@dataclass
class EverythingResult:
    """Objects (largest first) and what it took.

    Attributes:
        objects: the objects found, each once.
        fields: the fields decoded.
        candidates: candidate masks decoded (points x 3).
        timings: seconds: "encode", "decode", "filter", "polygon", "merge", "total".
    """

    objects: list[EverythingObject]
    fields: list[Field]
    candidates: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _region_geometry(region: BaseGeometry | Sequence[float]) -> Polygon | MultiPolygon:
    if isinstance(region, BaseGeometry):
        geometry = region
    else:
        values = [float(v) for v in region]
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise PromptError(f"a region box is four finite numbers x0,y0,x1,y1, got {region!r}")
        x0, y0, x1, y1 = values
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"region {tuple(values)} is empty: it needs x1 > x0 and y1 > y0")
        geometry = shapely_box(x0, y0, x1, y1)
    if geometry.is_empty or geometry.area <= 0:
        raise PromptError("a region needs an area (a rectangle or polygon)")
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    polygons = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon | MultiPolygon)]
    merged = shapely.union_all(polygons)
    return merged


def tile_fields(
    slide: Slide,
    region: BaseGeometry | Sequence[float],
    magnification: float,
    overlap: float = 0.25,
    default_magnification: float = 40.0,
) -> list[Field]:
    """Fields at ``magnification`` covering ``region`` (clipped to the slide), overlapping.

    Neighbouring HR patches overlap by at least ``overlap`` of their side; fields whose HR
    patch misses the region are left out. Row by row, top to bottom.
    """
    geometry = _region_geometry(region)
    width, height = slide.dimensions
    clipped = geometry.intersection(shapely_box(0, 0, width, height))
    if clipped.is_empty:
        raise PromptError(f"the region lies outside the slide ({width} x {height} pixels)")
    probe = make_field(
        slide, (0.0, 0.0), magnification, default_magnification=default_magnification
    )
    side = PATCH_SIZE * probe.hr_downsample
    step = side * (1 - overlap)
    x0, y0, x1, y1 = clipped.bounds

    def centres(lo: float, hi: float) -> list[float]:
        extent = hi - lo
        if extent <= side:
            return [(lo + hi) / 2]
        count = math.ceil((extent - side) / step) + 1
        first, last = lo + side / 2, hi - side / 2
        return [first + (last - first) * i / (count - 1) for i in range(count)]

    fields = []
    shapely.prepare(clipped)
    for cy in centres(y0, y1):
        for cx in centres(x0, x1):
            chosen = make_field(
                slide, (cx, cy), magnification, default_magnification=default_magnification
            )
            patch = shapely_box(*chosen.hr_bounds)
            if clipped.intersects(patch):
                fields.append(chosen)
    return fields


def point_grid(points_per_side: int) -> np.ndarray:
    """(n^2, 2) x, y in HR-patch pixels: SAM's grid, cell centres of an n x n split."""
    offset = PATCH_SIZE / (2 * points_per_side)
    axis = np.linspace(offset, PATCH_SIZE - offset, points_per_side)
    xs, ys = np.meshgrid(axis, axis)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def _stability(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """(K, H, W) logits -> (K,) IoU of the masks at +offset and -offset (SAM's definition)."""
    inner = (logits > offset).flatten(1).sum(1).float()
    outer = (logits > -offset).flatten(1).sum(1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))


def _mask_nms(masks: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS of (K, H, W) bool masks by mask IoU, best score first: kept indices."""
    if masks.shape[0] == 0:
        return []
    flat = masks.flatten(1).float()
    areas = flat.sum(1)
    inter = flat @ flat.T
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1)
    order = torch.argsort(scores, descending=True).tolist()
    suppressed = torch.zeros(masks.shape[0], dtype=torch.bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > threshold
    return keep


def _touches_border(mask: np.ndarray, row: int = 0, col: int = 0, margin: int = 2) -> bool:
    """Whether a mask window (placed at ``row``, ``col`` of the HR patch) has pixels within
    ``margin`` of the patch's border."""
    h, w = mask.shape
    top, left = max(margin - row, 0), max(margin - col, 0)
    bottom = max(row + h - (PATCH_SIZE - margin), 0)
    right = max(col + w - (PATCH_SIZE - margin), 0)
    return bool(
        (top and mask[:top].any())
        or (bottom and mask[h - bottom :].any())
        or (left and mask[:, :left].any())
        or (right and mask[:, w - right :].any())
    )


def _window_outline(
    mask: np.ndarray, row: int, col: int, chosen: Field
) -> Polygon | MultiPolygon | None:
    """The level-0 outline of an HR mask window at (``row``, ``col``) of a field's patch, as
    :meth:`WsiSamPredictor._to_geometry` traces a whole-patch mask."""
    scale = chosen.hr_downsample
    x0, y0 = chosen.hr_origin
    return mask_to_geometry(
        mask,
        scale=scale,
        offset=(x0 + col * scale, y0 + row * scale),
        simplify_tolerance=1.0,
        min_area=4 * scale**2,
    )


def _same_object(a: EverythingObject, b: EverythingObject, threshold: float) -> bool:
    """Whether two objects from different fields are one: inside the area both fields saw,
    their intersection covers most of the smaller of their two parts there."""
    zone = shapely_box(*a.field.hr_bounds).intersection(shapely_box(*b.field.hr_bounds))
    if zone.is_empty:
        return False
    inter = a.geometry.intersection(b.geometry).area
    if inter <= 0:
        return False
    part_a = a.geometry.intersection(zone).area
    part_b = b.geometry.intersection(zone).area
    smaller = min(part_a, part_b)
    return smaller > 0 and inter / smaller >= threshold


def _merge(a: EverythingObject, b: EverythingObject) -> EverythingObject:
    """One object from two copies: a whole copy wins over a cut one, two cut ones are united."""
    if a.cut and not b.cut:
        return b
    if b.cut and not a.cut:
        return a
    if not a.cut:  # both whole: the better one
        return a if a.score >= b.score else b
    union = shapely.union_all([a.geometry, b.geometry])
    union = shapely.make_valid(union) if not union.is_valid else union
    parts = [g for g in shapely.get_parts(union) if isinstance(g, Polygon)]
    geometry: Polygon | MultiPolygon = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    best = a if a.score >= b.score else b
    return EverythingObject(
        geometry, max(a.score, b.score), min(a.stability, b.stability), best.point, best.field, True
    )


@torch.inference_mode()
def segment_everything(
    predictor: WsiSamPredictor,
    slide: Slide,
    region: BaseGeometry | Sequence[float],
    mode: Mode | str = "wsi-sam",
    settings: EverythingSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EverythingResult:
    """Every object in a region of a slide.

    Args:
        predictor: the slide predictor (its model, working magnification and field cache).
        slide: an open slide.
        region: a level-0 Polygon / MultiPolygon, or a box (x0, y0, x1, y1).
        mode: "wsi-sam" or "sam".
        settings: grid density, thresholds, overlap and area limits.
        progress: ``progress(done, total)`` after each field.
        cancel: asked between batches; True raises :class:`EverythingCancelledError` (no partial
            result is returned).
    Raises:
        PromptError: the region is empty or off the slide.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    settings = settings or EverythingSettings()
    started = time.perf_counter()
    timings = {"encode": 0.0, "decode": 0.0, "filter": 0.0, "polygon": 0.0, "merge": 0.0}
    geometry = _region_geometry(region)
    width, height = slide.dimensions
    geometry = geometry.intersection(shapely_box(0, 0, width, height))
    magnification = settings.magnification or predictor.magnification
    fields = tile_fields(
        slide, geometry, magnification, settings.tile_overlap, predictor.default_magnification
    )
    min_px = area_to_pixels(settings.min_area, slide.mpp)
    max_px = math.inf if settings.max_area is None else area_to_pixels(settings.max_area, slide.mpp)
    grid = point_grid(settings.points_per_side)
    factor = PATCH_SIZE // LOWRES_SIZE

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise EverythingCancelledError("segment everything cancelled")

    objects: list[EverythingObject] = []
    candidates = 0
    for done, chosen in enumerate(fields):
        check_cancel()
        level0 = chosen.hr_to_level0(grid)
        inside_region = shapely.contains_xy(geometry, level0[:, 0], level0[:, 1])
        points = grid[inside_region]
        level0 = level0[inside_region]
        inside = WsiSamPredictor._inside_slide(slide, chosen)
        inside_low = torch.from_numpy(
            inside.reshape(LOWRES_SIZE, factor, LOWRES_SIZE, factor).any(axis=(1, 3))
        )
        kept_logits: list[torch.Tensor] = []
        kept_scores: list[torch.Tensor] = []
        kept_stability: list[torch.Tensor] = []
        kept_points: list[np.ndarray] = []
        for start in range(0, len(points), settings.points_per_batch):
            check_cancel()
            batch = points[start : start + settings.points_per_batch]
            t0 = time.perf_counter()
            logits, iou, encoded = predictor.decode_points(slide, chosen, batch, mode=mode)
            timings["encode" if encoded else "decode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            count, choices = iou.shape
            candidates += count * choices
            logits = logits.masked_fill(~inside_low, -20.0).reshape(
                count * choices, *logits.shape[2:]
            )
            scores = iou.reshape(-1)
            stability = _stability(logits, settings.stability_score_offset)
            coverage = (logits > 0).flatten(1).float().mean(1)
            keep = (
                (scores >= settings.pred_iou_thresh)
                & (stability >= settings.stability_score_thresh)
                & (coverage > 0)
                & (coverage <= settings.max_field_fraction)
            )
            if keep.any():
                kept_logits.append(logits[keep])
                kept_scores.append(scores[keep])
                kept_stability.append(stability[keep])
                kept_points.append(
                    np.repeat(level0[start : start + count], choices, axis=0)[keep.numpy()]
                )
            timings["filter"] += time.perf_counter() - t0
        if kept_logits:
            t0 = time.perf_counter()
            all_logits = torch.cat(kept_logits)
            all_scores = torch.cat(kept_scores)
            all_stability = torch.cat(kept_stability)
            all_points = np.concatenate(kept_points)
            keep_idx = _mask_nms(all_logits > 0, all_scores, settings.nms_thresh)
            timings["filter"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            field_objects = []
            for i in keep_idx:
                # upsampled and traced only around the object (engine.mask_window)
                window = upsample_window(all_logits[i], PATCH_SIZE)
                if window is None:
                    continue
                h, w = window.mask.shape
                mask = (
                    window.mask & inside[window.row : window.row + h, window.col : window.col + w]
                )
                outline = _window_outline(mask, window.row, window.col, chosen)
                if outline is None:
                    continue
                clipped = outline.intersection(geometry)
                parts = [
                    g for g in shapely.get_parts(clipped) if isinstance(g, Polygon) and g.area > 0
                ]
                if not parts:
                    continue
                shape: Polygon | MultiPolygon = parts[0] if len(parts) == 1 else MultiPolygon(parts)
                field_objects.append(
                    EverythingObject(
                        shape,
                        float(all_scores[i]),
                        float(all_stability[i]),
                        (float(all_points[i][0]), float(all_points[i][1])),
                        chosen,
                        _touches_border(mask, window.row, window.col),
                    )
                )
            timings["polygon"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            objects = merge_objects(objects, field_objects, settings.merge_thresh)
            timings["merge"] += time.perf_counter() - t0
        if progress is not None:
            progress(done + 1, len(fields))
    check_cancel()
    final = [o for o in objects if min_px <= o.geometry.area <= max_px]
    final.sort(key=lambda o: -o.geometry.area)
    timings["total"] = time.perf_counter() - started
    return EverythingResult(final, fields, candidates, timings)


def merge_objects(
    objects: Sequence[EverythingObject], new: Sequence[EverythingObject], threshold: float
) -> list[EverythingObject]:
    """Add one field's objects to those of earlier fields, merging copies of one object.

    Two objects of different fields are one when, inside the area both fields saw, their
    intersection covers most of the smaller part (``threshold``); a whole copy wins over a cut
    one, two cut copies are united. The earlier objects are indexed once (an STRtree), so a
    field of a thousand nuclei costs a thousand queries, not a thousand index builds.
    """
    if not objects:
        return list(new)
    merged: list[EverythingObject | None] = list(objects)
    tree = shapely.STRtree([o.geometry for o in objects])
    # an earlier object absorbed into a merge points to the slot of the object that holds it
    holder: dict[int, int] = {}

    def find(index: int) -> int:
        while index in holder:
            index = holder[index]
        return index

    for candidate in new:
        slots = sorted(
            {find(int(i)) for i in tree.query(candidate.geometry, predicate="intersects")}
        )
        current = candidate
        absorbed = []
        for slot in slots:
            other = merged[slot]
            if other is None or other.field == candidate.field:
                continue
            if _same_object(other, current, threshold):
                current = _merge(other, current)
                absorbed.append(slot)
        if not absorbed:
            merged.append(candidate)
            continue
        keep = absorbed[0]
        merged[keep] = current
        for slot in absorbed[1:]:
            merged[slot] = None
            holder[slot] = keep
    return [o for o in merged if o is not None]


def drop_duplicates(objects: Sequence[EverythingObject], threshold: float = 0.5) -> list[int]:
    """Indices of ``objects`` to keep so that no object is there twice (e.g. found by two
    overlapping regions): of two outlines with IoU above ``threshold`` the first is kept."""
    if not objects:
        return []
    geometries = [o.geometry for o in objects]
    tree = shapely.STRtree(geometries)
    dropped: set[int] = set()
    for i, geometry in enumerate(geometries):
        if i in dropped:
            continue
        for j in (int(j) for j in tree.query(geometry, predicate="intersects")):
            if j <= i or j in dropped:
                continue
            other = geometries[j]
            inter = geometry.intersection(other).area
            union = geometry.area + other.area - inter
            if union > 0 and inter / union > threshold:
                dropped.add(j)
    return [i for i in range(len(objects)) if i not in dropped]

