"""engine.instances.metrics on tiny hand-made label maps (values worked out by hand in the
comments) and against deliberately naive reference implementations on random label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from engine.instances.metrics import (
    MSA_THRESHOLDS,
    aji,
    glas_counts,
    glas_object_scores,
    iou_matches,
    overlaps,
    score_image,
    score_images,
)

approx = pytest.approx


def _merged() -> tuple[np.ndarray, np.ndarray]:
    """Two touching glands, A (4x4 = 16 px, id 1) and B (4x7 = 28 px, id 2), and one prediction
    P (4x11 = 44 px) covering both."""
    gt = np.zeros((8, 16), dtype=np.int32)
    gt[0:4, 0:4] = 1
    gt[0:4, 4:11] = 2
    pred = np.zeros_like(gt)
    pred[0:4, 0:11] = 1
    return gt, pred


def _split() -> tuple[np.ndarray, np.ndarray]:
    """One gland G (3x11 = 33 px) split into P1 (3x8 = 24 px) and P2 (3x3 = 9 px)."""
    gt = np.zeros((6, 14), dtype=np.int32)
    gt[1:4, 0:11] = 1
    pred = np.zeros_like(gt)
    pred[1:4, 0:8] = 1
    pred[1:4, 8:11] = 2
    return gt, pred


def _three_objects() -> np.ndarray:
    gt = np.zeros((12, 12), dtype=np.int32)
    gt[0:4, 0:4] = 1
    gt[0:4, 4:9] = 2  # touches object 1
    gt[6:11, 2:10] = 3
    return gt


# --- hand-computed cases ---------------------------------------------------------------------


def test_perfect_prediction_scores_one_everywhere() -> None:
    gt = _three_objects()
    pred = np.zeros_like(gt)
    for old, new in ((1, 7), (2, 3), (3, 900)):  # the same objects under other ids
        pred[gt == old] = new
    s = score_image(gt, pred)
    assert (s.n_gt, s.n_pred) == (3, 3)
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (3, 0, 0)
    assert s.object_dice == approx(1.0)
    assert s.object_hausdorff == 0.0
    assert s.aji == approx(1.0)
    assert s.pq == approx(1.0)
    assert s.sq == approx(1.0)
    assert s.tp50 == 3
    assert s.msa == approx(1.0)
    summary = score_images([s])
    assert summary.glas_f1 == approx(1.0)
    assert summary.f1_iou50 == approx(1.0)


def test_empty_prediction() -> None:
    gt = _three_objects()
    s = score_image(gt, np.zeros_like(gt))
    # no prediction: every gland a false negative, nothing matched
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (0, 0, 3)
    assert s.object_dice == 0.0
    assert s.object_hausdorff == math.inf
    assert s.aji == 0.0  # intersections 0 over the glands' areas
    assert s.pq == 0.0
    assert s.tp50 == 0
    assert s.msa == 0.0  # 0 / (0 + 0 + 3) at every threshold
    assert math.isnan(glas_object_scores(gt, np.zeros_like(gt), hausdorff=False)[1])
    summary = score_images([s])
    assert summary.glas_f1 == 0.0
    assert summary.f1_iou50 == 0.0


def test_prediction_without_truth() -> None:
    pred = _three_objects()
    s = score_image(np.zeros_like(pred), pred)
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (0, 3, 0)
    assert (s.object_dice, s.object_hausdorff) == (0.0, math.inf)
    assert s.aji == 0.0  # 0 / (sum of the predictions' areas)
    assert s.pq == 0.0
    assert s.msa == 0.0


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((5, 5), dtype=np.int32)
    s = score_image(empty, empty)
    assert (s.n_gt, s.n_pred, s.glas_tp, s.glas_fp, s.glas_fn) == (0, 0, 0, 0, 0)
    assert (s.object_dice, s.object_hausdorff) == (1.0, 0.0)
    assert s.aji == 1.0
    assert s.msa == 1.0
    # no object in either map: PQ 1 like every other score (SQ of nothing was 0, making PQ 0)
    assert (s.sq, s.pq) == (1.0, 1.0)
    summary = score_images([s])
    assert (summary.glas_f1, summary.f1_iou50, summary.pq) == (1.0, 1.0, 1.0)


def test_merged_prediction_over_two_touching_glands() -> None:
    gt, pred = _merged()
    s = score_image(gt, pred)
    # GlaS: P overlaps B most (28 px vs 16) and covers all of it (28/28 > 1/2): one TP, no FP,
    # A is missed
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (1, 0, 1)
    # AJI: A's best prediction is P (IoU 16/44): I 16, U 16 + 44 - 16 = 44; B's is P too
    # (IoU 28/44): I 28, U 44; AJI = (16 + 28) / (44 + 44) = 1/2 (P's pixels counted twice)
    assert s.aji == approx(0.5)
    # PQ: IoU(B, P) = 28/44 = 7/11 > 0.5 matches, IoU(A, P) = 4/11 does not: TP 1, FP 0, FN 1;
    # SQ 7/11, DQ 1 / (1 + 0 + 1/2) = 2/3, PQ 14/33
    assert s.tp50 == 1
    assert s.sq == approx(7 / 11)
    assert s.pq == approx(14 / 33)
    # mSA: 7/11 = 0.636 is above 0.50, 0.55, 0.60 (1 / (1 + 0 + 1) = 1/2 each), not above the
    # other seven (0 / (0 + 1 + 2) = 0): (3 * 1/2) / 10
    assert s.msa == approx(0.15)
    # object Dice: glands A (weight 16/44) and B (28/44) with P: 2*16/(16+44), 2*28/(28+44);
    # prediction P (weight 1) with B: 2*28/(28+44)
    dice_a, dice_b = 32 / 60, 56 / 72
    assert s.object_dice == approx(0.5 * (16 / 44 * dice_a + 28 / 44 * dice_b + dice_b))
    # object Hausdorff: H(A, P) = 7 (P's column 10 to A's column 3; A lies inside P),
    # H(B, P) = 4 (P's column 0 to B's column 4), P with B: 4
    assert s.object_hausdorff == approx(0.5 * (16 / 44 * 7 + 28 / 44 * 4 + 4))


def test_gland_split_in_two() -> None:
    gt, pred = _split()
    s = score_image(gt, pred)
    # GlaS: P1 covers 24/33 > 1/2 of G (TP), P2 only 9/33 (FP)
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (1, 1, 0)
    # AJI: G's best prediction is P1 (IoU 24/33): I 24, U 33; P2 unused: U += 9 -> 24/42
    assert s.aji == approx(24 / 42)
    # PQ: IoU(G, P1) = 24/33 = 8/11 matches, P2 (9/33) is a FP: SQ 8/11, DQ 2/3
    assert s.pq == approx(8 / 11 * 2 / 3)
    # mSA: 8/11 = 0.727 is above 0.50 ... 0.70 (5 thresholds, 1 / (1 + 1 + 0) each)
    assert s.msa == approx(5 * 0.5 / 10)
    # object Dice: G (weight 1) with P1: 2*24/(33+24) = 48/57; P1 (24/33) with G: 48/57,
    # P2 (9/33) with G: 2*9/(33+9) = 18/42
    assert s.object_dice == approx(0.5 * (48 / 57 + 24 / 33 * 48 / 57 + 9 / 33 * 18 / 42))
    # object Hausdorff: H(G, P1) = 3 (G's column 10 to P1's column 7), H(G, P2) = 8
    assert s.object_hausdorff == approx(0.5 * (3 + 24 / 33 * 3 + 9 / 33 * 8))


def test_false_positive_far_away() -> None:
    gt = np.zeros((10, 20), dtype=np.int32)
    gt[0:3, 0:3] = 1  # G, 9 px
    pred = gt.copy()
    pred[9, 19] = 2  # P2: one pixel, far away
    s = score_image(gt, pred)
    assert (s.glas_tp, s.glas_fp, s.glas_fn) == (1, 1, 0)
    assert s.aji == approx(9 / 10)  # G with P1: 9/9; unused P2 adds 1 to the union
    assert s.pq == approx(1 * 2 / 3)  # SQ 1, DQ 1 / (1 + 1/2)
    assert s.msa == approx(0.5)  # 1 / (1 + 1 + 0) at every threshold
    # object Dice: glands 1; predictions (9 * 1 + 1 * 0) / 10
    assert s.object_dice == approx(0.5 * (1 + 0.9))
    # object Hausdorff: P2 overlaps nothing and is paired with G, its only choice:
    # H = the farthest pixel of G from (9, 19), (0, 0): sqrt(9^2 + 19^2); weight 1/10
    assert s.object_hausdorff == approx(0.5 * 0.1 * math.hypot(9, 19))


def test_non_consecutive_ids_give_the_same_scores() -> None:
    gt, pred = _merged()
    expected = score_image(gt, pred)
    gt2 = np.where(gt == 1, 5, np.where(gt == 2, 900, 0)).astype(np.int32)
    pred2 = np.where(pred == 1, 70000, 0).astype(np.int32)
    got = score_image(gt2, pred2)
    for name in ("glas_tp", "glas_fp", "glas_fn", "tp50", "n_gt", "n_pred"):
        assert getattr(got, name) == getattr(expected, name)
    for name in ("object_dice", "object_hausdorff", "aji", "pq", "sq", "msa"):
        assert getattr(got, name) == approx(getattr(expected, name))


def test_huge_ids_do_not_overflow() -> None:
    # the pair keys were gt_id * (max pred id + 1) + pred_id: 2**40 * 2**40 overflows int64
    big = 2**40
    gt, pred = _split()
    gt = np.where(gt > 0, big, 0).astype(np.int64)
    pred = np.where(pred == 1, big + 7, np.where(pred == 2, 3, 0)).astype(np.int64)
    o = overlaps(gt, pred)
    assert o.gt_ids.tolist() == [big]
    assert o.pred_ids.tolist() == [3, big + 7]
    assert o.intersection.tolist() == [[9, 24]]
    s = score_image(gt, pred)
    assert s.aji == approx(24 / 42)
    assert s.object_hausdorff == approx(0.5 * (3 + 24 / 33 * 3 + 9 / 33 * 8))


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError):
        overlaps(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError):
        score_image(np.zeros((4, 4), np.int32), np.zeros((5, 4), np.int32))


def test_glas_tp_needs_half_of_the_most_overlapped_gland() -> None:
    gt = np.zeros((8, 12), dtype=np.int32)
    gt[0:4, 0:10] = 1  # A: 40 px
    gt[6:8, 0:2] = 2  # B: 4 px
    pred = np.zeros_like(gt)
    pred[1:4, 0:4] = 1  # 12 px of A
    pred[6:8, 0:2] = 1  # and all of B
    # P overlaps A most (12 px vs 4) but covers 12/40 < 1/2 of it: a FP, though it covers B
    assert glas_counts(overlaps(gt, pred)) == (0, 1, 2)


def test_hausdorff_is_between_pixel_sets() -> None:
    # a 7x7 gland and a prediction with a one-pixel hole in the middle: the hole's pixel is 1 px
    # from the prediction, so H = 1 (the GlaS code's H over all pixels; the outlines' H would be
    # 2, from the hole's rim to the square's edge)
    gt = np.zeros((9, 9), dtype=np.int32)
    gt[1:8, 1:8] = 1
    pred = gt.copy()
    pred[4, 4] = 0
    dice, haus = glas_object_scores(gt, pred)
    assert dice == approx(2 * 48 / (49 + 48))
    assert haus == approx(1.0)


def test_unmatched_object_takes_the_nearest_in_hausdorff() -> None:
    gt = np.zeros((30, 30), dtype=np.int32)
    gt[:, 3] = 1  # G1: a bar, rows 0..29 of column 3 (30 px)
    gt[10, 25] = 2  # G2: one pixel
    pred = gt.copy()  # P1 = G1, P2 = G2
    pred[10, 10] = 3  # P0: one pixel that overlaps nothing
    # H(P0, G1) = |(29, 3) - (10, 10)| = sqrt(19^2 + 7^2) = 20.2; H(P0, G2) = 15, so P0 is paired
    # with G2 (the nearest by centroid would be G1, whose centre (14.5, 3) is 8.3 away)
    # glands: both matched exactly (H 0); predictions: P1 0, P2 0, P0 15 with weight 1/32
    dice, haus = glas_object_scores(gt, pred)
    assert haus == approx(0.5 * 15 / 32)
    assert dice == approx(0.5 * (1 + 31 / 32))


def test_object_dice_and_hausdorff_are_symmetric() -> None:
    # swapping truth and prediction swaps the two halves of both scores
    for gt, pred in (_merged(), _split()):
        assert glas_object_scores(gt, pred) == approx(glas_object_scores(pred, gt))
    rng = np.random.default_rng(3)
    for _ in range(5):
        gt, pred = _random_pair(rng)
        assert glas_object_scores(gt, pred) == approx(glas_object_scores(pred, gt))


def test_iou_matches_needs_a_unique_threshold() -> None:
    gt, pred = _split()
    o = overlaps(gt, pred)
    assert iou_matches(o, 0.5).tolist() == approx([24 / 33])
    assert iou_matches(o, 0.75).size == 0
    with pytest.raises(ValueError):
        iou_matches(o, 0.3)


def test_score_images_pools_f1_and_averages_the_rest() -> None:
    perfect = score_image(_three_objects(), _three_objects())
    merged = score_image(*_merged())
    summary = score_images([perfect, merged])
    assert (summary.images, summary.n_gt, summary.n_pred) == (2, 5, 4)
    # GlaS F1 from pooled counts: TP 3 + 1, FP 0 + 0, FN 0 + 1 -> 2*4 / (2*4 + 0 + 1) = 8/9
    # (the mean of the per-image F1s would be (1 + 2/3) / 2 = 5/6)
    assert summary.glas_f1 == approx(8 / 9)
    # F1 at IoU 0.5 pooled: matches 3 + 1, predictions 4, truths 5 -> 2*4 / (4 + 5)
    assert summary.f1_iou50 == approx(8 / 9)
    assert summary.aji == approx((1 + 0.5) / 2)
    assert summary.pq == approx((1 + 14 / 33) / 2)
    assert summary.msa == approx((1 + 0.15) / 2)
    assert summary.object_dice == approx((1 + merged.object_dice) / 2)
    assert summary.object_hausdorff == approx(merged.object_hausdorff / 2)
    assert set(summary.as_dict()) >= {"glas_f1", "object_dice", "aji", "pq", "msa"}
    with pytest.raises(ValueError):
        score_images([])


# --- naive references on random label maps ---------------------------------------------------


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Overlapping random rectangles under random, non-consecutive ids (later ones on top, so
    objects come out of any shape, some in pieces, some covered entirely)."""
    labels = np.zeros(shape, dtype=np.int32)
    ids = rng.choice(np.arange(1, 5000), size=count, replace=False)
    for label in ids:
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 10), rng.integers(2, 10)
        labels[y : y + h, x : x + w] = label
    return labels


def _random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gt = _random_labels(rng, (24, 24), int(rng.integers(3, 9)))
    # a prediction that partly follows the truth (shifted, relabelled), with extra objects
    shifted = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    pred = np.where(shifted > 0, shifted * 7 + 1, 0).astype(np.int32)
    extra = _random_labels(rng, (24, 24), int(rng.integers(0, 4)))
    pred = np.where(extra > 0, extra + 100000, pred).astype(np.int32)
    return gt, pred


def _masks(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == i for i in np.unique(labels) if i > 0]


def _naive_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    gts, preds = _masks(gt), _masks(pred)
    if not gts:
        return 1.0 if not preds else 0.0
    inter_sum = union_sum = 0
    used: set[int] = set()
    for g in gts:
        best, best_iou = -1, 0.0
        for k, p in enumerate(preds):
            iou = (g & p).sum() / (g | p).sum()
            if iou > best_iou:
                best, best_iou = k, iou
        if best < 0:
            union_sum += g.sum()
        else:
            inter_sum += (g & preds[best]).sum()
            union_sum += (g | preds[best]).sum()
            used.add(best)
    union_sum += sum(p.sum() for k, p in enumerate(preds) if k not in used)
    return inter_sum / union_sum


def _naive_pq(gt: np.ndarray, pred: np.ndarray) -> float:
    gts, preds = _masks(gt), _masks(pred)
    if not gts and not preds:
        return 1.0
    ious = []
    for g in gts:
        for p in preds:
            iou = (g & p).sum() / (g | p).sum()
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    if tp == 0:
        return 0.0
    fp, fn = len(preds) - tp, len(gts) - tp
    return float(np.mean(ious)) * tp / (tp + 0.5 * fp + 0.5 * fn)


def _naive_object_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """The GlaS evaluation code's object Dice and Hausdorff, one mask at a time."""
    gts, preds = _masks(gt), _masks(pred)

    def haus(a: np.ndarray, b: np.ndarray) -> float:
        pa, pb = np.argwhere(a), np.argwhere(b)
        return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])

    def half(objs: list[np.ndarray], others: list[np.ndarray]) -> tuple[float, float]:
        total = sum(o.sum() for o in objs)
        dice = hausdorff = 0.0
        for obj in objs:
            overlap = [(obj & other).sum() for other in others]
            weight = obj.sum() / total
            if max(overlap) > 0:
                other = others[int(np.argmax(overlap))]
                dice += weight * 2 * (obj & other).sum() / (obj.sum() + other.sum())
                hausdorff += weight * haus(obj, other)
            else:
                hausdorff += weight * min(haus(obj, other) for other in others)
        return dice, hausdorff

    dice_g, haus_g = half(gts, preds)
    dice_p, haus_p = half(preds, gts)
    return 0.5 * (dice_g + dice_p), 0.5 * (haus_g + haus_p)


def test_aji_pq_and_object_scores_match_naive_references() -> None:
    rng = np.random.default_rng(0)
    for _ in range(12):
        gt, pred = _random_pair(rng)
        s = score_image(gt, pred)
        assert s.aji == approx(_naive_aji(gt, pred))
        assert s.pq == approx(_naive_pq(gt, pred))
        assert aji(overlaps(gt, pred)) == approx(_naive_aji(gt, pred))
        dice, haus = _naive_object_scores(gt, pred)
        assert s.object_dice == approx(dice)
        assert s.object_hausdorff == approx(haus)


def test_msa_matches_a_naive_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(6):
        gt, pred = _random_pair(rng)
        gts, preds = _masks(gt), _masks(pred)
        ious = np.array([[(g & p).sum() / (g | p).sum() for p in preds] for g in gts])
        accuracies = []
        for t in MSA_THRESHOLDS:
            tp = int((ious > t).sum())
            accuracies.append(tp / (tp + (len(preds) - tp) + (len(gts) - tp)))
        assert score_image(gt, pred).msa == approx(float(np.mean(accuracies)))
