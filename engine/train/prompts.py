"""Prompt simulation for training and evaluation, as in the WSI-SAM / HQ-SAM protocol.

All functions take a ground-truth mask in patch pixels (H, W) bool and a ``numpy.random.Generator``
so that an evaluation with a given seed is repeatable and every model sees the same prompts.
Coordinates are SAM's: x to the right, y down, in pixels of the patch; a point ``(x, y)`` names
pixel ``mask[y, x]``, a box is ``(x0, y0, x1, y1)`` with the mask's pixels inside
``[x0, x1) x [y0, y1)``.
"""

from __future__ import annotations

import numpy as np

#: logit magnitude of a simulated coarse mask (SAM's mask input is logits, not probabilities)
COARSE_MASK_LOGIT = 8.0


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box ``(x0, y0, x1, y1)`` (float, x1/y1 exclusive) of a non-empty mask (H, W)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise ValueError("the mask is empty: no box and no points can be drawn from it")
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def noisy_box(
    mask: np.ndarray,
    rng: np.random.Generator,
    centre_jitter: float = 0.1,
    size_jitter: float = 0.2,
) -> np.ndarray:
    """The mask's box with its centre moved by up to ``centre_jitter`` of its width / height and
    its width / height scaled by up to ``1 ± size_jitter`` (uniform), clamped to the patch.

    Returns (4,) float64 ``(x0, y0, x1, y1)`` within ``[0, W] x [0, H]``.
    """
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    bw, bh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-centre_jitter, centre_jitter) * bw
    cy = (y0 + y1) / 2 + rng.uniform(-centre_jitter, centre_jitter) * bh
    nw = bw * (1 + rng.uniform(-size_jitter, size_jitter))
    nh = bh * (1 + rng.uniform(-size_jitter, size_jitter))
    out = np.array([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2])
    out[[0, 2]] = np.clip(out[[0, 2]], 0, w)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, h)
    return out


def positive_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct random pixels of the mask as (k, 2) float64 ``(x, y)``.

    When the mask has fewer than ``k`` pixels, pixels repeat.
    """
    if k < 1:
        raise ValueError(f"need at least one point, got k={k}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("the mask is empty: no box and no points can be drawn from it")
    chosen = rng.choice(len(xs), size=k, replace=len(xs) < k)
    return np.stack([xs[chosen], ys[chosen]], axis=1).astype(np.float64)


def _resize_area(mask: np.ndarray, size: int) -> np.ndarray:
    """Area-average a square (S, S) array down to (size, size); S must be a multiple of size."""
    s = mask.shape[0]
    if mask.shape != (s, s) or s % size:
        raise ValueError(f"need a square mask whose side is a multiple of {size}, got {mask.shape}")
    f = s // size
    return mask.reshape(size, f, size, f).mean(axis=(1, 3))


def _resize_bilinear(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, like torch's align_corners=False) of a square map."""
    s = values.shape[0]
    coords = (np.arange(size) + 0.5) * (s / size) - 0.5
    coords = np.clip(coords, 0, s - 1)
    i0 = np.floor(coords).astype(int)
    i1 = np.minimum(i0 + 1, s - 1)
    t = coords - i0
    rows = values[i0] * (1 - t)[:, None] + values[i1] * t[:, None]
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i1] * t[None, :]


def coarse_mask(
    mask: np.ndarray, rng: np.random.Generator, size: int = 256, factor: int = 8
) -> np.ndarray:
    """A coarse mask prompt: the ground truth with Gaussian noise on its boundary (HQ-SAM).

    The mask is area-resized to ``size`` x ``size``; pixels where it differs from its own
    ``1/factor`` bilinear round trip (the boundary band) get unit Gaussian noise, and the result is
    thresholded at 0.5. Returned as SAM mask-input logits (size, size) float32:
    ``+COARSE_MASK_LOGIT`` inside, ``-COARSE_MASK_LOGIT`` outside.
    """
    small = _resize_area(mask.astype(np.float64), size)
    recovered = _resize_bilinear(_resize_bilinear(small, size // factor), size)
    boundary = np.abs(small - recovered) >= 0.01
    noisy = small + rng.standard_normal(small.shape) * boundary
    inside = noisy > 0.5
    return np.where(inside, COARSE_MASK_LOGIT, -COARSE_MASK_LOGIT).astype(np.float32)


def area_downsample(mask: np.ndarray, size: int = 256) -> np.ndarray:
    """Fraction of each (S/size)^2 block that the mask covers: (size, size) float32 in [0, 1]."""
    return _resize_area(mask.astype(np.float32), size).astype(np.float32)
