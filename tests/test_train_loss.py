"""WSI-SAM's loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from engine.train.loss import bce_loss, dice_loss, wsi_sam_loss


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
    logits = torch.tensor([[[[0.0, math.log(3)], [-math.log(3), 0.0]]]])
    targets = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    return logits, targets


def test_dice_and_bce_by_hand() -> None:
    logits, targets = _case()
    # probabilities 1/2, 3/4, 1/4, 1/2; sum p*t = 5/4, sum p = 2, sum t = 2, smooth 1
    assert float(dice_loss(logits, targets)) == pytest.approx(1 - (2 * 1.25 + 1) / (2 + 2 + 1))
    # -log p for targets 1: log 2, log(4/3); -log(1-p) for targets 0: log(4/3), log 2
    expected_bce = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4
    assert float(bce_loss(logits, targets)) == pytest.approx(expected_bce)


def test_weighted_hr_lr_loss_by_hand() -> None:
    logits, targets = _case()
    hr_term = 0.3 + (math.log(2) + math.log(4 / 3)) / 2
    lr_logits = torch.zeros_like(logits)  # p = 1/2 everywhere
    lr_targets = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # dice: 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5; bce: log 2
    lr_term = 0.5 + math.log(2)
    terms = wsi_sam_loss(logits, lr_logits, targets, lr_targets, lam=0.25)
    assert terms.hr == pytest.approx(hr_term)
    assert terms.lr == pytest.approx(lr_term)
    assert float(terms.total) == pytest.approx(0.25 * hr_term + 0.75 * lr_term)
    default = wsi_sam_loss(logits, lr_logits, targets, lr_targets)
    assert float(default.total) == pytest.approx(0.5 * hr_term + 0.5 * lr_term)


def test_loss_gradient_and_errors() -> None:
    logits, targets = _case()
    logits.requires_grad_(True)
    terms = wsi_sam_loss(logits, logits, targets, targets)
    terms.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="lambda"):
        wsi_sam_loss(logits, logits, targets, targets, lam=1.5)
    with pytest.raises(ValueError, match="HR logits"):
        wsi_sam_loss(logits, logits, targets[..., :1], targets)
