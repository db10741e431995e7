"""Train an instance decoder on cached encoder maps (SAM frozen), on a CPU in minutes.

1. :func:`prepare_items`: every training field in each symmetry of :data:`DIHEDRAL` asked for
   is encoded once into the :class:`~engine.instances.features.InstanceFeatureCache` (the only
   expensive step, skipped for what is cached), and its targets are computed at the decoder's
   output size (:mod:`engine.instances.targets`), with the pixels that carry no loss (off the
   slide, outside the complete area).
2. :func:`train_decoder`: epochs over the items in a seeded order; loss = BCE + Dice on the
   foreground, and binary cross-entropy against the soft distance targets inside objects
   (its gradient, sigmoid minus target, does not vanish as a squared error's would through the
   sigmoid). AdamW, optionally a 10x lower rate from ``lr_drop_epoch``. After each epoch the
   whole state (weights, optimiser, epoch, log) is written atomically, so a killed run resumes
   from its last finished epoch with the same result.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from engine._files import atomic_write_bytes
from engine.instances.data import DIHEDRAL, TrainingField, apply_dihedral, field_labels
from engine.instances.features import InstanceFeatureCache, normalised_rgb
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.instances.targets import downsample_labels, instance_targets
from engine.patches import read_field
from engine.train.data import SlidePool

logger = logging.getLogger(__name__)

__all__ = [
    "InstanceTrainConfig",
    "TrainingCancelledError",
    "TrainingItem",
    "instance_loss",
    "item_maps",
    "prepare_items",
    "train_decoder",
]

STATE_FORMAT = "wsi-sam-instance-train-state/1"

Progress = Callable[[str, int, int], None]


class TrainingCancelledError(Exception):
    """Training was cancelled; the state of the last finished epoch is on disk."""


@dataclass(frozen=True)
class InstanceTrainConfig:
    """What to train and how.

    Attributes:
        decoder: the decoder's layout.
        epochs: passes over all items.
        batch_size: fields per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_drop_epoch: from this epoch on (1-based) the rate is 10x lower; None: constant.
        variants: the symmetries used (indices into DIHEDRAL; 0 is the identity).
        seed: the order of items and the decoder's initial weights.
    """

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    epochs: int = 12
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lr_drop_epoch: int | None = None
    variants: tuple[int, ...] = tuple(range(len(DIHEDRAL)))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not self.variants or any(not 0 <= v < len(DIHEDRAL) for v in self.variants):
            raise ValueError(f"variants must be indices 0-{len(DIHEDRAL) - 1}")
        if self.lr <= 0:
            raise ValueError("lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder.to_dict(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "lr_drop_epoch": self.lr_drop_epoch,
            "variants": list(self.variants),
            "seed": self.seed,
        }


@dataclass
class TrainingItem:
    """One field in one symmetry: where its maps are cached, and its targets.

    Attributes:
        field: the training field.
        variant: the symmetry (index into DIHEDRAL).
        hr_key, lr_key: cache keys of the HR maps and of the LR embedding (None: not encoded).
        targets: (3, S, S) float16 targets at the decoder's output size S.
        valid: (S, S) bool: pixels that carry loss.
        labels: (S, S) int32 instance labels at S (for scoring held-out predictions).
    """

    field: TrainingField
    variant: int
    hr_key: str
    lr_key: str | None
    targets: NDArray[np.float16]
    valid: NDArray[np.bool_]
    labels: NDArray[np.int32]


def prepare_items(
    fields: Sequence[TrainingField],
    cache: InstanceFeatureCache,
    out_size: int,
    variants: Sequence[int] = (0,),
    *,
    with_lr: bool = False,
    pool: SlidePool | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[TrainingItem]:
    """Encode what is not cached and compute targets; one item per (field, symmetry).

    ``progress("encode", done, total)`` after each field. Fields without a pixel that carries
    loss are left out.
    """
    own_pool = pool is None
    pool = pool or SlidePool()
    items: list[TrainingItem] = []
    try:
        for done, item in enumerate(fields):
            if cancel is not None and cancel():
                raise TrainingCancelledError("cancelled while encoding")
            slide = pool.get(item.source)
            labels_full, valid_full = field_labels(item, slide.dimensions)
            if not valid_full.any():
                if progress is not None:
                    progress("encode", done + 1, len(fields))
                continue
            images: tuple[NDArray[np.uint8], NDArray[np.uint8]] | None = None
            for variant in variants:
                hr_key = cache.key(item.source, item.field, variant, "hr")
                lr_key = cache.key(item.source, item.field, variant, "lr") if with_lr else None
                need_hr = not cache.contains(hr_key)
                need_lr = lr_key is not None and not cache.contains(lr_key)
                if (need_hr or need_lr) and images is None:
                    hr, lr = read_field(slide, item.field)
                    images = (np.asarray(hr, np.uint8), np.asarray(lr, np.uint8))
                if need_hr:
                    assert images is not None
                    cache.hr(item.source, item.field, variant, apply_dihedral(images[0], variant))
                if need_lr:
                    assert images is not None
                    cache.lr(item.source, item.field, variant, apply_dihedral(images[1], variant))
                labels = downsample_labels(apply_dihedral(labels_full, variant), out_size)
                valid_small = _pool_valid(apply_dihedral(valid_full, variant), out_size)
                targets = instance_targets(labels).astype(np.float16)
                items.append(
                    TrainingItem(item, variant, hr_key, lr_key, targets, valid_small, labels)
                )
            if progress is not None:
                progress("encode", done + 1, len(fields))
    finally:
        if own_pool:
            pool.close()
    return items


def _pool_valid(valid: NDArray[np.bool_], size: int) -> NDArray[np.bool_]:
    """A (size, size) mask: output pixels at least half of whose field pixels are valid."""
    step = valid.shape[0] // size
    blocks = valid.reshape(size, step, size, step).mean(axis=(1, 3))
    return np.asarray(blocks >= 0.5)


def item_maps(
    item: TrainingItem, cache: InstanceFeatureCache, config: DecoderConfig
) -> dict[str, torch.Tensor]:
    """The decoder inputs of one item, (C, H, W) each, float16 (rgb float32)."""
    hr = cache.load(item.hr_key)
    if hr is None:
        raise RuntimeError(f"the feature cache lost {item.field.image} (variant {item.variant})")
    maps = {name: hr[name] for name in config.encoder_maps}
    if "rgb" in config.inputs:
        maps["rgb"] = normalised_rgb(cache.sam, hr["rgb"])
    if config.needs_lr:
        if item.lr_key is None:
            raise RuntimeError("this decoder reads the LR field, but it was not encoded")
        lr = cache.load(item.lr_key)
        if lr is None:
            raise RuntimeError(f"the feature cache lost the LR map of {item.field.image}")
        maps["lr"] = lr["lr"]
    return maps


def instance_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of (B, 3, S, S) logits against (B, 3, S, S) targets where ``valid`` (B, S, S).

    Foreground: BCE + soft Dice over valid pixels; centre and boundary distance: BCE against the
    soft targets over valid foreground pixels. Returns the total and its parts.
    """
    valid_f = valid.float()
    n_valid = valid_f.sum().clamp(min=1.0)
    fg_target = targets[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], fg_target, reduction="none")
    fg_bce = (bce * valid_f).sum() / n_valid
    prob = torch.sigmoid(logits[:, 0]) * valid_f
    inter = (prob * fg_target).sum()
    fg_dice = 1.0 - (2 * inter + 1.0) / (prob.sum() + (fg_target * valid_f).sum() + 1.0)
    inside = valid_f * fg_target
    n_inside = inside.sum().clamp(min=1.0)
    distance = F.binary_cross_entropy_with_logits(logits[:, 1:], targets[:, 1:], reduction="none")
    # the entropy of the soft target is the floor of that loss: subtract it so 0 means perfect
    t = targets[:, 1:].clamp(1e-6, 1 - 1e-6)
    floor = -(t * t.log() + (1 - t) * (1 - t).log())
    dist = ((distance - floor).sum(1) * inside).sum() / n_inside
    total = fg_bce + fg_dice + dist
    parts = {"fg_bce": float(fg_bce.detach()), "fg_dice": float(fg_dice.detach())}
    return total, {**parts, "distance": float(dist.detach())}


def _batch(
    items: Sequence[TrainingItem], cache: InstanceFeatureCache, config: DecoderConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    per_item = [item_maps(item, cache, config) for item in items]
    maps = {name: torch.stack([m[name] for m in per_item]).float() for name in per_item[0]}
    targets = torch.from_numpy(np.stack([item.targets for item in items])).float()
    valid = torch.from_numpy(np.stack([item.valid for item in items]))
    return maps, targets, valid


def epoch_lr(config: InstanceTrainConfig, epoch: int) -> float:
    """The learning rate of 1-based ``epoch``."""
    if config.lr_drop_epoch is not None and epoch >= config.lr_drop_epoch:
        return config.lr / 10
    return config.lr


@dataclass
class TrainOutcome:
    """The trained decoder and its record.

    Attributes:
        decoder: trained, in eval mode.
        log: one record per epoch (loss parts, seconds, items).
        epochs_run: epochs run in this call (0 when the state was already complete).
    """

    decoder: InstanceDecoder
    log: list[dict[str, Any]]
    epochs_run: int


def _save_state(
    path: Path,
    config: InstanceTrainConfig,
    decoder: InstanceDecoder,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    log: list[dict[str, Any]],
    fingerprint: str,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": STATE_FORMAT,
            "config": json.dumps(config.to_dict()),
            "items": fingerprint,
            "epoch": epoch,
            "decoder": decoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "log": json.dumps(log),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def items_fingerprint(items: Sequence[TrainingItem]) -> str:
    """Names the training set (cache keys in order), so a state resumes only on the same one."""
    import hashlib

    digest = hashlib.sha256()
    for item in items:
        digest.update(item.hr_key.encode())
        digest.update((item.lr_key or "").encode())
    return digest.hexdigest()[:16]


def train_decoder(
    items: Sequence[TrainingItem],
    cache: InstanceFeatureCache,
    config: InstanceTrainConfig,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    on_epoch: Callable[[int, InstanceDecoder, dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train a fresh decoder (or resume one from ``state_path``) on prepared items.

    ``progress("step", done, total)`` after each step of an epoch and
    ``progress("epoch", epoch, epochs)`` after each epoch; ``cancel()`` is asked between steps
    (True raises :class:`TrainingCancelledError`, the last finished epoch stays on disk).
    ``on_epoch(epoch, decoder, record)`` runs after each epoch's state is written.
    """
    if not items:
        raise ValueError("no training items: no field has an annotated, valid pixel")
    torch.manual_seed(config.seed)
    decoder = InstanceDecoder(config.decoder)
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    fingerprint = items_fingerprint(items)
    log: list[dict[str, Any]] = []
    start_epoch = 1
    if resume and state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path}: not an instance-decoder training state")
        if json.loads(state["config"]) != config.to_dict():
            raise ValueError(
                f"{state_path}: the state was written with other settings; start afresh "
                "(without resume) or use the same settings"
            )
        if state["items"] != fingerprint:
            raise ValueError(f"{state_path}: the state was written for other training data")
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        log = list(json.loads(state["log"]))
        start_epoch = int(state["epoch"]) + 1
    epochs_run = 0
    for epoch in range(start_epoch, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        order = np.random.default_rng(config.seed * 1000 + epoch).permutation(len(items))
        decoder.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        steps = 0
        n_steps = (len(items) + config.batch_size - 1) // config.batch_size
        for step, first in enumerate(range(0, len(items), config.batch_size)):
            if cancel is not None and cancel():
                raise TrainingCancelledError(f"cancelled in epoch {epoch}")
            batch = [items[int(i)] for i in order[first : first + config.batch_size]]
            maps, targets, valid = _batch(batch, cache, config.decoder)
            logits = decoder(maps)
            loss, parts = instance_loss(logits, targets, valid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
            if progress is not None:
                progress("step", step + 1, n_steps)
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch,
            **{k: round(v / max(steps, 1), 5) for k, v in totals.items()},
            "seconds": round(seconds, 1),
            "items": len(items),
            "seconds_per_item": round(seconds / len(items), 4),
            "lr": epoch_lr(config, epoch),
        }
        log.append(record)
        logger.info("epoch %d: %s", epoch, record)
        decoder.eval()
        if state_path is not None:
            _save_state(state_path, config, decoder, optimizer, epoch, log, fingerprint)
        epochs_run += 1
        if on_epoch is not None:
            on_epoch(epoch, decoder, record)
        if progress is not None:
            progress("epoch", epoch, config.epochs)
    decoder.eval()
    return TrainOutcome(decoder, log, epochs_run)


@torch.no_grad()
def predict_items(
    decoder: InstanceDecoder,
    items: Sequence[TrainingItem],
    cache: InstanceFeatureCache,
) -> list[torch.Tensor]:
    """(3, S, S) logits of each item, in order."""
    decoder.eval()
    out = []
    for item in items:
        maps = {k: v[None].float() for k, v in item_maps(item, cache, decoder.config).items()}
        out.append(decoder(maps)[0])
    return out
