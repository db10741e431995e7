"""Prompt simulation: jitter bounds, points inside the object, coarse masks, repeatability."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluate import simulate_prompt
from engine.train.prompts import (
    COARSE_MASK_LOGIT,
    area_downsample,
    coarse_mask,
    mask_box,
    noisy_box,
    positive_points,
)


def _rect_mask(x0: int, y0: int, x1: int, y1: int, size: int = 1024) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_noisy_box_jitter_within_bounds_and_spread() -> None:
    mask = _rect_mask(300, 400, 500, 520)  # 200 x 120
    x0, y0, x1, y1 = mask_box(mask)
    w, h = x1 - x0, y1 - y0
    rng = np.random.default_rng(1)
    boxes = np.stack([noisy_box(mask, rng) for _ in range(3000)])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - (x0 + x1) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - (y0 + y1) / 2
    sw = (boxes[:, 2] - boxes[:, 0]) / w
    sh = (boxes[:, 3] - boxes[:, 1]) / h
    eps = 1e-9
    assert np.all(np.abs(cx) <= 0.1 * w + eps) and np.all(np.abs(cy) <= 0.1 * h + eps)
    assert np.all((sw >= 0.8 - eps) & (sw <= 1.2 + eps))
    assert np.all((sh >= 0.8 - eps) & (sh <= 1.2 + eps))
    # the jitter really uses its range (uniform: close to the bounds, centred on zero)
    assert np.abs(cx).max() > 0.09 * w and np.abs(cy).max() > 0.09 * h
    assert sw.min() < 0.82 and sw.max() > 1.18
    assert abs(cx.mean()) < 0.01 * w and abs(sw.mean() - 1) < 0.01


def test_noisy_box_clamped_to_patch() -> None:
    mask = _rect_mask(0, 980, 60, 1024)  # touches the left and bottom edges
    rng = np.random.default_rng(2)
    for _ in range(500):
        box = noisy_box(mask, rng)
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 1024 and box[3] <= 1024
        assert box[2] > box[0] and box[3] > box[1]


def test_points_inside_the_object() -> None:
    yy, xx = np.mgrid[:1024, :1024]
    mask = (xx - 500) ** 2 + (yy - 300) ** 2 < 40**2  # a disk
    mask[300, 500] = False
    rng = np.random.default_rng(3)
    for k in (1, 3, 5, 10):
        points = positive_points(mask, k, rng)
        assert points.shape == (k, 2)
        xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
        assert mask[ys, xs].all()  # (x, y) names mask[y, x]
        assert len({(x, y) for x, y in zip(xs, ys, strict=True)}) == k
    tiny = _rect_mask(10, 10, 12, 11)  # 2 pixels: points repeat
    assert positive_points(tiny, 5, rng).shape == (5, 2)
    with pytest.raises(ValueError, match="empty"):
        positive_points(np.zeros((8, 8), bool), 3, rng)


def test_coarse_mask_is_noisy_only_near_the_boundary() -> None:
    yy, xx = np.mgrid[:1024, :1024]
    mask = (xx - 512) ** 2 + (yy - 480) ** 2 < 200**2
    logits = coarse_mask(mask, np.random.default_rng(4))
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    assert set(np.unique(logits)) <= {COARSE_MASK_LOGIT, -COARSE_MASK_LOGIT}
    coarse = logits > 0
    truth = area_downsample(mask) > 0.5
    changed = coarse != truth
    assert changed.any()  # there is noise ...
    gy, gx = np.mgrid[:256, :256]
    radius = np.hypot(gx * 4 + 2 - 512, gy * 4 + 2 - 480) / 4  # distance in 256-px units
    assert np.all(np.abs(radius[changed] - 50) < 12)  # ... only in the boundary band
    iou = (coarse & truth).sum() / (coarse | truth).sum()
    assert iou > 0.85
    again = coarse_mask(mask, np.random.default_rng(4))
    assert np.array_equal(logits, again)


def test_evaluation_prompts_repeat_per_seed_and_object() -> None:
    mask = _rect_mask(100, 100, 300, 250)
    a = simulate_prompt(mask, "box", seed=7, object_index=3)
    b = simulate_prompt(mask, "box", seed=7, object_index=3)
    c = simulate_prompt(mask, "box", seed=8, object_index=3)
    assert a.box is not None and b.box is not None and c.box is not None
    assert np.array_equal(a.box, b.box) and not np.array_equal(a.box, c.box)
    p5 = simulate_prompt(mask, "5", seed=7, object_index=3)
    assert p5.points is not None and p5.points.shape == (5, 2)
    assert np.array_equal(p5.points, simulate_prompt(mask, "5", 7, 3).points)
