"""Training WSI-SAM's HR / LR heads with SAM frozen, on cached encoder outputs.

Preparation encodes every (object, augmentation variant) once into the :class:`FeatureCache`;
the epochs then only run the prompt encoder, the two mask decoders and the heads, which is what
makes training on a CPU practical. Each step draws a prompt kind (noisy box, 1-10 positive
points, or a coarse mask) for the whole batch, or for each object as HQ-SAM's training does
(``prompt_mixing="object"``), computes
``λ·(dice+BCE)_HR + (1-λ)·(dice+BCE)_LR`` at 256x256 and takes an AdamW step on the heads.

Every epoch writes a resumable checkpoint (heads, optimiser, epoch, random states, settings) and
appends one JSON line per step and per epoch to the log; the end writes the heads checkpoint with
its metadata through :meth:`WsiSam.save_heads`.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine._files import atomic_write_bytes
from engine.backends import autocast
from engine.train.augment import Augmentation, augmentation_variants
from engine.train.data import ObjectSample, SlidePool, describe_samples, target_masks
from engine.train.features import FeatureCache
from engine.train.loss import wsi_sam_loss
from engine.train.prompts import area_downsample, coarse_mask, noisy_box, positive_points
from engine.wsi_sam import PatchFeatures, Prompts, WsiSam

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite); no heads were written."""


TRAIN_STATE_FORMAT = "wsi-sam-train-state/1"
PROMPT_KINDS = ("box", "points", "mask")
PROMPT_MIXINGS = ("batch", "object")
LR_DROP_FACTOR = 0.1
TRAIN_PRECISIONS = ("f32", "bf16")

#: what ``on_progress`` receives: a plain dict, e.g. {"stage": "encode", "done": 3, "total": 9},
#: {"stage": "step", "epoch": 1, "epochs": 2, "step": 4, "steps": 5, "loss": 0.41} or
#: {"stage": "epoch", "epoch": 1, "epochs": 2, "loss": 0.38, "seconds": 12.5}
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Settings of a training run (all plain data: they go into the checkpoints)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-2
    lam: float = 0.5
    aggregation: str = "mean"
    augment_variants: int = 2
    seed: int = 0
    max_points: int = 10
    prompt_kinds: tuple[str, ...] = PROMPT_KINDS
    # "batch": one prompt kind per step; "object": one per object (HQ-SAM), so a step mixes kinds.
    prompt_mixing: str = "batch"
    magnification: float | None = None
    trained_on: str = ""
    # Step decay as in HQ-SAM's training code: lr x LR_DROP_FACTOR from this epoch on (1-based).
    lr_drop_epoch: int | None = None
    # Precision of the heads' forward pass: "f32", or "bf16" (autocast; the loss, the weights and
    # the optimiser stay f32). bf16 pays only where the CPU computes it natively.
    precision: str = "f32"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.lr_drop_epoch is not None and self.lr_drop_epoch < 1:
            raise ValueError(f"lr drop epoch must be >= 1, got {self.lr_drop_epoch}")
        unknown = set(self.prompt_kinds) - set(PROMPT_KINDS)
        if unknown or not self.prompt_kinds:
            raise ValueError(f"prompt kinds must be among {PROMPT_KINDS}, got {self.prompt_kinds}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(
                f"training precision must be one of {TRAIN_PRECISIONS}, got {self.precision!r}"
            )
        if self.prompt_mixing not in PROMPT_MIXINGS:
            raise ValueError(
                f"prompt mixing must be one of {PROMPT_MIXINGS}, got {self.prompt_mixing!r}"
            )


@dataclass
class TrainItem:
    """One (object, augmentation) pair, ready for training: a cache key and packed masks."""

    sample_index: int
    augmentation: Augmentation
    cache_key: str
    hr_mask_bits: np.ndarray  # np.packbits of the (1024, 1024) HR target
    lr_mask_bits: np.ndarray

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        side = 1024
        hr = np.unpackbits(self.hr_mask_bits, count=side * side).reshape(side, side)
        lr = np.unpackbits(self.lr_mask_bits, count=side * side).reshape(side, side)
        return hr.astype(bool), lr.astype(bool)


@dataclass
class TrainResult:
    """What a run did: per-epoch mean losses, encoder calls, time."""

    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    encoder_calls: int = 0
    epochs_run: int = 0
    seconds_per_epoch: list[float] = field(default_factory=list)
    prepare_seconds: float = 0.0


def prepare_items(
    samples: Sequence[ObjectSample],
    cache: FeatureCache,
    variants: int,
    seed: int,
    pool: SlidePool,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
) -> list[list[TrainItem]]:
    """Encode every sample under the identity and ``variants`` random augmentations.

    Returns, per sample, its items (1 + ``variants``). Cached fields are not encoded again.
    """
    from tqdm import tqdm

    prepared: list[list[TrainItem]] = []
    for index, sample in enumerate(
        tqdm(samples, desc="encoding fields", unit="obj", disable=not progress)
    ):
        hr_mask, lr_mask = target_masks(sample)
        items = []
        for augmentation in augmentation_variants(variants, seed, sample.key()):
            cache.features(sample, augmentation, pool)
            items.append(
                TrainItem(
                    index,
                    augmentation,
                    cache.key(sample, augmentation),
                    np.packbits(augmentation.apply_geometry(hr_mask)),
                    np.packbits(augmentation.apply_geometry(lr_mask)),
                )
            )
        prepared.append(items)
        if on_progress is not None:
            on_progress({"stage": "encode", "done": index + 1, "total": len(samples)})
    return prepared


def simulate_training_prompts(
    hr_masks: Sequence[np.ndarray], kind: str, rng: np.random.Generator, max_points: int = 10
) -> Prompts:
    """One prompt of ``kind`` per HR mask (1024, 1024) bool, as a batch of HR-patch prompts."""
    if kind == "box":
        boxes = np.stack([noisy_box(m, rng) for m in hr_masks])
        return Prompts(boxes=torch.from_numpy(boxes).float())
    if kind == "points":
        k = int(rng.integers(1, max_points + 1))
        points = np.stack([positive_points(m, k, rng) for m in hr_masks])
        return Prompts(
            points=torch.from_numpy(points).float(),
            labels=torch.ones(points.shape[:2], dtype=torch.int64),
        )
    if kind == "mask":
        masks = np.stack([coarse_mask(m, rng) for m in hr_masks])[:, None]
        return Prompts(masks=torch.from_numpy(masks))
    raise ValueError(f"unknown prompt kind {kind!r}")


def git_commit(start: Path | None = None) -> str | None:
    """The current git commit of the code, when it runs from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=start or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _heads_state(model: WsiSam) -> dict[str, torch.Tensor]:
    return model.heads_state_dict()


def save_train_state(
    path: Path,
    model: WsiSam,
    optimiser: torch.optim.Optimizer,
    epoch: int,
    rng: np.random.Generator,
    config: TrainConfig,
    result: TrainResult,
) -> None:
    """Write the resumable state after ``epoch`` completed epochs, atomically."""
    payload = {
        "format": TRAIN_STATE_FORMAT,
        "heads": _heads_state(model),
        "optimizer": optimiser.state_dict(),
        "epoch": epoch,
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "config": json.dumps(dataclasses.asdict(config)),
        "epoch_losses": list(result.epoch_losses),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_train_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path} is not a WSI-SAM training state ({TRAIN_STATE_FORMAT})")
    return payload


def _batch_features(
    cache: FeatureCache, items: Sequence[TrainItem], device: torch.device
) -> tuple[PatchFeatures, PatchFeatures]:
    hrs, lrs = [], []
    for item in items:
        loaded = cache.load(item.cache_key)
        if loaded is None:
            raise RuntimeError(
                f"feature cache entry {item.cache_key} vanished during training "
                "(was the cache folder cleaned?)"
            )
        hrs.append(loaded[0])
        lrs.append(loaded[1])
    hr = PatchFeatures.cat(hrs).to(device, torch.float32)
    lr = PatchFeatures.cat(lrs).to(device, torch.float32)
    return hr, lr


def draw_prompt_kinds(config: TrainConfig, count: int, rng: np.random.Generator) -> list[str]:
    """The prompt kind of each of ``count`` objects in a step: one draw per batch or per object."""
    if config.prompt_mixing == "batch":
        return [str(rng.choice(config.prompt_kinds))] * count
    return [str(k) for k in rng.choice(config.prompt_kinds, size=count)]


def _mixed_prompt_forward(
    model: WsiSam,
    hr: PatchFeatures,
    lr: PatchFeatures,
    hr_masks: Sequence[np.ndarray],
    kinds: Sequence[str],
    rng: np.random.Generator,
    max_points: int,
    precision: str = "f32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """HR and LR logits (B, 1, 256, 256) of a batch whose objects may have different prompt kinds.

    SAM's prompt encoder takes one prompt layout per call, so each kind runs as its own
    sub-batch; the logits come back in the batch's order, in f32 (``precision`` "bf16" runs the
    forward pass under autocast).
    """
    device = model.device
    order: list[int] = []
    hr_logits, lr_logits = [], []
    for kind in dict.fromkeys(kinds):  # first-seen order, so the random draws are repeatable
        index = [i for i, k in enumerate(kinds) if k == kind]
        prompts = simulate_training_prompts([hr_masks[i] for i in index], kind, rng, max_points)
        with autocast(device, precision):
            output = model(hr[index], lr[index], prompts.to(device))
        order += index
        hr_logits.append(output.hr_logits.float())
        lr_logits.append(output.lr_logits.float())
    restore = torch.argsort(torch.tensor(order, device=device))
    return torch.cat(hr_logits)[restore], torch.cat(lr_logits)[restore]


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 1-based ``epoch`` under the step decay of ``config``."""
    if config.lr_drop_epoch is not None and epoch >= config.lr_drop_epoch:
        return config.lr * LR_DROP_FACTOR
    return config.lr


def train_heads(
    model: WsiSam,
    samples: Sequence[ObjectSample],
    config: TrainConfig,
    *,
    cache: FeatureCache,
    out: Path,
    state_path: Path | None = None,
    log_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    pool: SlidePool | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_progress: ProgressCallback | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the heads of ``model`` on ``samples`` and write the heads checkpoint ``out``.

    Args:
        model: WSI-SAM with SAM frozen; only ``model.trainable_parameters()`` change.
        samples: the objects (see :func:`engine.train.data.make_samples`).
        config: the settings.
        cache: where the encoder outputs live (a second run reuses them).
        out: the final heads checkpoint (``model.save_heads``) with metadata.
        state_path: the resumable checkpoint, rewritten after every epoch
            (default ``out`` with suffix ``.state.pt``).
        log_path: JSON-lines log of the losses (default ``out`` with suffix ``.log.jsonl``).
        resume: continue from ``state_path`` (its settings must match ``config``'s epochs or
            fewer completed epochs).
        on_epoch: called with (epoch, mean loss) after each epoch's state is written.
        on_progress: called with plain-data progress records (:data:`ProgressCallback`).
        extra_metadata: more metadata for the heads checkpoint (e.g. the classes).
    """
    from tqdm import tqdm

    if not samples:
        raise ValueError("no objects to train on")
    out = Path(out)
    state_path = state_path or out.with_name(out.stem + ".state.pt")
    log_path = log_path or out.with_name(out.stem + ".log.jsonl")
    device = model.device
    model.aggregation = config.aggregation  # type: ignore[assignment]
    result = TrainResult()
    own_pool = pool is None
    pool = pool or SlidePool()

    state = load_train_state(state_path) if resume else None
    # a finished run that is resumed (to be scored, say) trains no epoch: encode nothing
    finished = state is not None and int(state["epoch"]) >= config.epochs
    t0 = time.perf_counter()
    calls_before = cache.encoder_calls
    try:
        prepared = (
            []
            if finished
            else prepare_items(
                samples, cache, config.augment_variants, config.seed, pool, progress, on_progress
            )
        )
    finally:
        if own_pool:
            pool.close()
    result.prepare_seconds = time.perf_counter() - t0

    params = model.trainable_parameters()
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["heads"], strict=False)
        optimiser.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        result.epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        logger.info("resuming after epoch %d from %s", start_epoch, state_path)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    model.train()
    with open(log_path, "a", encoding="utf-8") as log:
        for epoch in range(start_epoch, config.epochs):
            t_epoch = time.perf_counter()
            for group in optimiser.param_groups:  # from the epoch alone, so resuming agrees
                group["lr"] = epoch_lr(config, epoch + 1)
            order = rng.permutation(len(prepared))
            batches = [
                order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
            ]
            losses = []
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
            for step, batch in enumerate(bar):
                items = [prepared[i][int(rng.integers(len(prepared[i])))] for i in batch]
                masks = [item.masks() for item in items]
                kinds = draw_prompt_kinds(config, len(items), rng)
                hr_targets = torch.from_numpy(np.stack([area_downsample(m[0]) for m in masks]))
                lr_targets = torch.from_numpy(np.stack([area_downsample(m[1]) for m in masks]))
                hr, lr = _batch_features(cache, items, device)
                hr_logits, lr_logits = _mixed_prompt_forward(
                    model,
                    hr,
                    lr,
                    [m[0] for m in masks],
                    kinds,
                    rng,
                    config.max_points,
                    config.precision,
                )
                kind = kinds[0] if len(set(kinds)) == 1 else "mixed"
                terms = wsi_sam_loss(
                    hr_logits,
                    lr_logits,
                    hr_targets[:, None].to(device),
                    lr_targets[:, None].to(device),
                    config.lam,
                )
                if not bool(torch.isfinite(terms.total.detach()).all()):
                    log.flush()
                    raise TrainingError(
                        f"the training loss became {float(terms.total.detach())} at epoch "
                        f"{epoch + 1}, step {step + 1} (learning rate "
                        f"{optimiser.param_groups[0]['lr']:g}): training diverged, so no heads "
                        f"were written to {out}. Lower --lr, or check the data; the state after "
                        f"the last good epoch is kept in {state_path} (--resume)"
                    )
                optimiser.zero_grad(set_to_none=True)
                terms.total.backward()
                optimiser.step()
                loss = float(terms.total.detach())
                losses.append(loss)
                result.step_losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}", prompt=kind)
                if on_progress is not None:
                    on_progress(
                        {
                            "stage": "step",
                            "epoch": epoch + 1,
                            "epochs": config.epochs,
                            "step": step + 1,
                            "steps": len(batches),
                            "loss": loss,
                        }
                    )
                log.write(
                    json.dumps(
                        {
                            "epoch": epoch + 1,
                            "step": step + 1,
                            "prompt": kind,
                            "loss": loss,
                            "loss_hr": terms.hr,
                            "loss_lr": terms.lr,
                        }
                    )
                    + "\n"
                )
            mean_loss = float(np.mean(losses))
            seconds = time.perf_counter() - t_epoch
            result.epoch_losses.append(mean_loss)
            result.seconds_per_epoch.append(seconds)
            result.epochs_run += 1
            log.write(
                json.dumps({"epoch": epoch + 1, "epoch_loss": mean_loss, "seconds": seconds}) + "\n"
            )
            log.flush()
            save_train_state(state_path, model, optimiser, epoch + 1, rng, config, result)
            if on_epoch is not None:
                on_epoch(epoch + 1, mean_loss)
            if on_progress is not None:
                on_progress(
                    {
                        "stage": "epoch",
                        "epoch": epoch + 1,
                        "epochs": config.epochs,
                        "loss": mean_loss,
                        "seconds": seconds,
                    }
                )
    model.eval()
    result.encoder_calls = cache.encoder_calls - calls_before

    settings = dataclasses.asdict(config)
    settings["prompt_kinds"] = list(config.prompt_kinds)
    settings["trained_on"] = config.trained_on or ", ".join(describe_samples(samples)["datasets"])
    model.save_heads(
        out,
        **settings,
        data=describe_samples(samples),
        final_loss=result.epoch_losses[-1] if result.epoch_losses else None,
        epoch_losses=list(result.epoch_losses),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        **(extra_metadata or {}),
    )
    return result
