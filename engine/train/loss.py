"""WSI-SAM's training loss: ``λ·(dice + BCE)_HR + (1 - λ)·(dice + BCE)_LR``.

Both terms are computed at the decoders' native resolution, 256x256 logits per 1024x1024 patch:
the targets are area-downsampled to 256x256 (each value is the fraction of its 4x4 block inside
the object, so thin boundaries are not lost to nearest-neighbour sampling). BCE is the mean over
pixels, Dice is the soft Dice of the sigmoid probabilities, and both are averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, mean over the batch.

    Args:
        logits: (B, 1, H, W) mask logits.
        targets: (B, 1, H, W) targets in [0, 1].
    Returns:
        scalar ``1 - (2·Σpt + s) / (Σp + Σt + s)`` with p = sigmoid(logits), s = ``smooth``.
    """
    probs = torch.sigmoid(logits).flatten(1)
    t = targets.flatten(1)
    numerator = 2 * (probs * t).sum(1) + smooth
    denominator = probs.sum(1) + t.sum(1) + smooth
    return (1 - numerator / denominator).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over pixels and batch: (B,1,H,W) x2 -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice + BCE for one resolution: (B,1,H,W) logits and targets -> scalar."""
    return dice_loss(logits, targets) + bce_loss(logits, targets)


@dataclass
class LossTerms:
    """The total loss (with gradient) and its two parts (plain floats for the log)."""

    total: torch.Tensor
    hr: float
    lr: float


def wsi_sam_loss(
    hr_logits: torch.Tensor,
    lr_logits: torch.Tensor,
    hr_targets: torch.Tensor,
    lr_targets: torch.Tensor,
    lam: float = 0.5,
) -> LossTerms:
    """``lam·L(hr) + (1 - lam)·L(lr)`` with L = dice + BCE.

    Args:
        hr_logits, lr_logits: (B, 1, 256, 256) WSI-SAM logits on the HR and LR patches.
        hr_targets, lr_targets: (B, 1, 256, 256) area-downsampled targets in [0, 1].
        lam: weight of the HR term, in [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    for name, logits, targets in (
        ("HR", hr_logits, hr_targets),
        ("LR", lr_logits, lr_targets),
    ):
        if logits.shape != targets.shape:
            raise ValueError(
                f"{name} logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
            )
    hr = mask_loss(hr_logits, hr_targets)
    lr = mask_loss(lr_logits, lr_targets)
    return LossTerms(lam * hr + (1 - lam) * lr, float(hr.detach()), float(lr.detach()))
