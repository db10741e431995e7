"""Instance segmentation metrics on label maps (0 = background, one id per object).

- GlaS (Sirinukunwattana et al., 2017): a prediction is a true positive when it covers more
  than half of the ground-truth gland it overlaps most, each gland matched once; F1 from counts
  pooled over images. Object Dice and object Hausdorff: the area-weighted mean, over the glands,
  of each gland's score with its most-overlapping prediction, and over the predictions, of each
  prediction's with its most-overlapping gland, the two halves averaged; per image. As the
  GlaS evaluation code: the Hausdorff distance is between the objects' pixel sets, and an object
  that overlaps nothing takes, for Hausdorff, the object of the other map nearest in Hausdorff
  distance (Dice 0).
- AJI (Kumar et al., 2017): each ground-truth object with the prediction of highest IoU;
  intersections over unions, unmatched predictions added to the union; per image.
- PQ (Kirillov et al., 2019): unique matches at IoU > 0.5; SQ x DQ; per image.
- mSA (as micro-sam and the DSB 2018 report it): TP / (TP + FP + FN) with matches at IoU above
  each of 0.50, 0.55, ..., 0.95, averaged; per image.
- F1 at IoU 0.5: DQ, with counts pooled over images.

An image with no object in either map scores 1 (Hausdorff 0) on every metric.

Each function takes one image's (H, W) ground truth and prediction; :func:`score_images`
aggregates over images as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "ImageScores",
    "Overlaps",
    "aji",
    "glas_counts",
    "glas_object_scores",
    "iou_matches",
    "overlaps",
    "score_image",
    "score_images",
]

MSA_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class Overlaps:
    """Pixel counts of one image's objects and of their pairwise intersections.

    Attributes:
        gt_ids, pred_ids: the object ids present (sorted).
        gt_area, pred_area: their areas in pixels.
        intersection: (n_gt, n_pred) pixel counts.
    """

    gt_ids: NDArray[np.int64]
    pred_ids: NDArray[np.int64]
    gt_area: NDArray[np.int64]
    pred_area: NDArray[np.int64]
    intersection: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        union = self.gt_area[:, None] + self.pred_area[None, :] - self.intersection
        return np.where(union > 0, self.intersection / np.maximum(union, 1), 0.0)


def _ids_and_areas(labels: NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return ids.astype(np.int64), areas.astype(np.int64)


def overlaps(gt: NDArray[np.integer], pred: NDArray[np.integer]) -> Overlaps:
    """Areas and intersections of two (H, W) label maps of the same shape."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {gt.shape} vs {pred.shape}")
    gt_ids, gt_area = _ids_and_areas(gt)
    pred_ids, pred_area = _ids_and_areas(pred)
    inter = np.zeros((gt_ids.size, pred_ids.size), dtype=np.int64)
    both = (gt > 0) & (pred > 0)
    if both.any():
        # pair keys from the objects' indices (< n_gt * n_pred), not their ids: ids as large as
        # the dtype allows would overflow a key of id * (max id + 1)
        rows = np.searchsorted(gt_ids, gt[both])
        cols = np.searchsorted(pred_ids, pred[both])
        keys, counts = np.unique(rows * pred_ids.size + cols, return_counts=True)
        inter[keys // pred_ids.size, keys % pred_ids.size] = counts
    return Overlaps(gt_ids, pred_ids, gt_area, pred_area, inter)


def glas_counts(o: Overlaps) -> tuple[int, int, int]:
    """GlaS detection counts (TP, FP, FN): a prediction is a TP when it covers more than half
    of the gland it overlaps most, and that gland was not matched before."""
    matched = np.zeros(o.gt_ids.size, dtype=bool)
    tp = 0
    if o.gt_ids.size:
        for j in np.argsort(-o.pred_area):  # larger predictions claim their gland first
            column = o.intersection[:, j]
            i = int(np.argmax(column))
            if column[i] > 0 and not matched[i] and column[i] / o.gt_area[i] > 0.5:
                matched[i] = True
                tp += 1
    fp = int(o.pred_ids.size) - tp
    fn = int(o.gt_ids.size) - tp
    return tp, fp, fn


def _dice(inter: float, a: float, b: float) -> float:
    return 2.0 * inter / (a + b) if a + b > 0 else 0.0


def _object_windows(
    labels: NDArray[np.integer], ids: NDArray[np.int64]
) -> tuple[NDArray[np.int64], list[tuple[slice, slice]]]:
    """The label map with the objects renumbered 1..N in the order of ``ids``, and each object's
    bounding box (ids may be any size: no list as long as the largest id)."""
    dense = np.zeros(labels.shape, dtype=np.int64)
    inside = labels > 0
    dense[inside] = np.searchsorted(ids, labels[inside]) + 1
    return dense, [w for w in ndimage.find_objects(dense) if w is not None]


def _hausdorff(
    dense_a: NDArray[np.int64], window_a: tuple[slice, slice], index_a: int,
    dense_b: NDArray[np.int64], window_b: tuple[slice, slice], index_b: int,
) -> float:
    """Hausdorff distance between two objects as pixel sets (every pixel, not the outlines: as the
    GlaS evaluation code), from distance transforms over the union of their bounding boxes."""
    (ya, xa), (yb, xb) = window_a, window_b
    window = (
        slice(min(ya.start, yb.start), max(ya.stop, yb.stop)),
        slice(min(xa.start, xb.start), max(xa.stop, xb.stop)),
    )
    in_a = dense_a[window] == index_a + 1
    in_b = dense_b[window] == index_b + 1
    # every pixel of either object lies in the window, so these are exact distances to the sets
    to_a = ndimage.distance_transform_edt(~in_a)
    to_b = ndimage.distance_transform_edt(~in_b)
    return float(max(to_a[in_b].max(), to_b[in_a].max()))


def _hausdorff_lower_bound(window_a: tuple[slice, slice], window_b: tuple[slice, slice]) -> int:
    """A lower bound of the Hausdorff distance from the bounding boxes: an extreme row or column
    of one object lies at least this far from every pixel of the other."""
    (ya, xa), (yb, xb) = window_a, window_b
    return max(
        abs(ya.start - yb.start), abs(ya.stop - yb.stop),
        abs(xa.start - xb.start), abs(xa.stop - xb.stop),
    )


def glas_object_scores(
    gt: NDArray[np.integer], pred: NDArray[np.integer], o: Overlaps | None = None,
    hausdorff: bool = True,
) -> tuple[float, float]:
    """(object Dice, object Hausdorff) of one image, the GlaS way.

    Each object is paired with the object of the other map it overlaps most. An object with no
    overlapping partner scores Dice 0 and, for Hausdorff, is paired with the object of the other
    map nearest in Hausdorff distance (as the GlaS evaluation code). The Hausdorff distance is
    between the objects' pixel sets. With no predictions at all the Hausdorff is infinite; with
    ``hausdorff=False`` it is not computed (NaN).
    """
    o = o if o is not None else overlaps(gt, pred)
    if o.gt_ids.size == 0 and o.pred_ids.size == 0:
        return 1.0, 0.0
    if o.gt_ids.size == 0 or o.pred_ids.size == 0:
        return 0.0, math.inf if hausdorff else math.nan
    inter = o.intersection
    best_pred = np.argmax(inter, axis=1)
    best_gt = np.argmax(inter, axis=0)
    gt_weight = o.gt_area / o.gt_area.sum()
    pred_weight = o.pred_area / o.pred_area.sum()
    dice_gt = np.array(
        [
            _dice(inter[i, best_pred[i]], o.gt_area[i], o.pred_area[best_pred[i]])
            if inter[i, best_pred[i]] > 0
            else 0.0
            for i in range(o.gt_ids.size)
        ]
    )
    dice_pred = np.array(
        [
            _dice(inter[best_gt[j], j], o.gt_area[best_gt[j]], o.pred_area[j])
            if inter[best_gt[j], j] > 0
            else 0.0
            for j in range(o.pred_ids.size)
        ]
    )
    object_dice = 0.5 * (float(gt_weight @ dice_gt) + float(pred_weight @ dice_pred))
    if not hausdorff:
        return object_dice, math.nan
    dense_gt, gt_windows = _object_windows(np.asarray(gt), o.gt_ids)
    dense_pred, pred_windows = _object_windows(np.asarray(pred), o.pred_ids)
    cache: dict[tuple[int, int], float] = {}

    def distance(i: int, j: int) -> float:
        if (i, j) not in cache:
            cache[i, j] = _hausdorff(dense_gt, gt_windows[i], i, dense_pred, pred_windows[j], j)
        return cache[i, j]

    def nearest(bounds: list[int], dist: Callable[[int], float]) -> float:
        """The smallest Hausdorff distance to any candidate, pruned by the lower bounds."""
        best = math.inf
        for k in sorted(range(len(bounds)), key=bounds.__getitem__):
            if bounds[k] >= best:
                break
            best = min(best, dist(k))
        return best

    def nearest_pred(i: int) -> float:
        bounds = [_hausdorff_lower_bound(gt_windows[i], w) for w in pred_windows]
        return nearest(bounds, lambda j: distance(i, j))

    def nearest_gt(j: int) -> float:
        bounds = [_hausdorff_lower_bound(w, pred_windows[j]) for w in gt_windows]
        return nearest(bounds, lambda i: distance(i, j))

    haus_gt = [
        distance(i, int(best_pred[i])) if inter[i, best_pred[i]] > 0 else nearest_pred(i)
        for i in range(o.gt_ids.size)
    ]
    haus_pred = [
        distance(int(best_gt[j]), j) if inter[best_gt[j], j] > 0 else nearest_gt(j)
        for j in range(o.pred_ids.size)
    ]
    object_hausdorff = 0.5 * (
        float(gt_weight @ np.array(haus_gt)) + float(pred_weight @ np.array(haus_pred))
    )
    return object_dice, object_hausdorff


def aji(o: Overlaps) -> float:
    """Aggregated Jaccard Index of one image (Kumar et al.)."""
    if o.gt_ids.size == 0:
        return 1.0 if o.pred_ids.size == 0 else 0.0
    used = np.zeros(o.pred_ids.size, dtype=bool)
    inter_sum = 0
    union_sum = 0
    iou = o.iou
    for i in range(o.gt_ids.size):
        if o.pred_ids.size and o.intersection[i].max() > 0:
            j = int(np.argmax(iou[i]))
            inter_sum += int(o.intersection[i, j])
            union_sum += int(o.gt_area[i] + o.pred_area[j] - o.intersection[i, j])
            used[j] = True
        else:
            union_sum += int(o.gt_area[i])
    union_sum += int(o.pred_area[~used].sum())
    return inter_sum / union_sum if union_sum else 0.0


def iou_matches(o: Overlaps, threshold: float) -> NDArray[np.float64]:
    """IoUs of the unique matches with IoU above ``threshold`` (>= 0.5, so matches are unique)."""
    if threshold < 0.5:
        raise ValueError("matching by IoU needs a threshold of at least 0.5")
    iou = o.iou
    return iou[iou > threshold]


@dataclass
class ImageScores:
    """One image's scores and counts (see the module doc)."""

    name: str
    n_gt: int
    n_pred: int
    glas_tp: int
    glas_fp: int
    glas_fn: int
    object_dice: float
    object_hausdorff: float
    aji: float
    pq: float
    sq: float
    tp50: int
    msa: float
    extra: dict[str, float] = field(default_factory=dict)


def score_image(
    gt: NDArray[np.integer], pred: NDArray[np.integer], name: str = "", hausdorff: bool = True
) -> ImageScores:
    """Every metric of one image."""
    o = overlaps(gt, pred)
    tp, fp, fn = glas_counts(o)
    dice, haus = glas_object_scores(gt, pred, o, hausdorff=hausdorff)
    matched = iou_matches(o, 0.5)
    n_gt, n_pred = int(o.gt_ids.size), int(o.pred_ids.size)
    tp50 = int(matched.size)
    denominator = tp50 + 0.5 * (n_pred - tp50) + 0.5 * (n_gt - tp50)
    if denominator:
        sq = float(matched.mean()) if tp50 else 0.0
        dq = tp50 / denominator
    else:  # no objects in either map: perfect, as every other metric here scores it
        sq = dq = 1.0
    accuracies = []
    for t in MSA_THRESHOLDS:
        hits = int((o.iou > t).sum())
        total = hits + (n_pred - hits) + (n_gt - hits)
        accuracies.append(hits / total if total else 1.0)
    return ImageScores(
        name, n_gt, n_pred, tp, fp, fn, dice, haus, aji(o), sq * dq, sq, tp50,
        float(np.mean(accuracies)),
    )


@dataclass
class Summary:
    """Scores over a set of images (see the module doc for how each is aggregated)."""

    images: int
    n_gt: int
    n_pred: int
    glas_f1: float
    object_dice: float
    object_hausdorff: float
    aji: float
    pq: float
    f1_iou50: float
    msa: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def score_images(scores: Iterable[ImageScores]) -> Summary:
    """Aggregate per-image scores: F1s from pooled counts, the rest as per-image means."""
    rows: Sequence[ImageScores] = list(scores)
    if not rows:
        raise ValueError("no images to summarise")
    tp = sum(r.glas_tp for r in rows)
    fp = sum(r.glas_fp for r in rows)
    fn = sum(r.glas_fn for r in rows)
    tp50 = sum(r.tp50 for r in rows)
    n_gt = sum(r.n_gt for r in rows)
    n_pred = sum(r.n_pred for r in rows)

    def f1(hits: int, predicted: int, truth: int) -> float:
        return 2 * hits / (predicted + truth) if predicted + truth else 1.0

    return Summary(
        images=len(rows),
        n_gt=n_gt,
        n_pred=n_pred,
        glas_f1=f1(tp, tp + fp, tp + fn),
        object_dice=float(np.mean([r.object_dice for r in rows])),
        object_hausdorff=float(np.mean([r.object_hausdorff for r in rows])),
        aji=float(np.mean([r.aji for r in rows])),
        pq=float(np.mean([r.pq for r in rows])),
        f1_iou50=f1(tp50, n_pred, n_gt),
        msa=float(np.mean([r.msa for r in rows])),
    )
