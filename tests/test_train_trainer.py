"""Feature cache, training loop, resumable state and augmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from engine.train.augment import Augmentation, augmentation_variants
from engine.train.data import ObjectSample, SlidePool, make_samples, target_masks
from engine.train.features import FeatureCache
from engine.train.readers import read_label_map
from engine.train.trainer import (
    LR_DROP_FACTOR,
    TrainConfig,
    _mixed_prompt_forward,
    draw_prompt_kinds,
    epoch_lr,
    simulate_training_prompts,
    train_heads,
)
from engine.wsi_sam import PatchFeatures, Prompts, WsiSamOutput


class FakeWsiSam(nn.Module):
    """A tiny stand-in with WsiSam's training interface, so the loop is tested in seconds.

    The "encoder" pools the image to 64x64 (counting calls); the "heads" are 1x1 convs on that
    embedding plus a box-prompt channel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sam = nn.Module()
        self.sam.image_encoder = nn.Conv2d(3, 1, 1)
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.hr_head = nn.Conv2d(2, 1, 1)
        self.lr_head = nn.Conv2d(2, 1, 1)
        self.aggregation = "mean"
        self.metadata: dict[str, Any] = {}
        self.encode_calls = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.hr_head.parameters(), *self.lr_head.parameters()]

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state_dict().items() if "_head." in k}

    def save_heads(self, path: Path, **metadata: Any) -> None:
        torch.save({"state_dict": self.heads_state_dict(), "metadata": metadata}, path)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> PatchFeatures:
        self.encode_calls += images.shape[0]
        grey = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True) / 255, 64)
        return PatchFeatures(
            grey.expand(-1, 256, -1, -1).clone(), torch.zeros(len(images), 160, 64, 64)
        )

    @staticmethod
    def _box_map(boxes: torch.Tensor | None, batch: int) -> torch.Tensor:
        out = torch.zeros(batch, 1, 64, 64)
        if boxes is not None:
            for i, (x0, y0, x1, y1) in enumerate((boxes / 16).round().int().tolist()):
                out[i, 0, y0:y1, x0:x1] = 1
        return out

    def forward(self, hr: PatchFeatures, lr: PatchFeatures, prompts: Prompts) -> WsiSamOutput:
        b = hr.embedding.shape[0]
        lr_prompts = prompts.to_lr()
        hr_in = torch.cat([hr.embedding[:, :1], self._box_map(prompts.boxes, b)], 1)
        lr_in = torch.cat([lr.embedding[:, :1], self._box_map(lr_prompts.boxes, b)], 1)
        hr_logits = F.interpolate(self.hr_head(hr_in), size=256, mode="bilinear")
        lr_logits = F.interpolate(self.lr_head(lr_in), size=256, mode="bilinear")
        return WsiSamOutput(hr_logits, lr_logits, hr_logits, lr_logits, torch.zeros(b, 1))


def _synthetic_samples(tmp_path: Path, n_objects: int = 2) -> list[ObjectSample]:
    rng = np.random.default_rng(0)
    h, w = 400, 600
    image = np.full((h, w, 3), (235, 210, 225), np.uint8)  # pink background
    labels = np.zeros((h, w), np.uint16)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n_objects):
        cx, cy, r = 120 + 200 * i, 200, 50 + 10 * i
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        image[disk] = (110, 50, 150)  # purple glands
        labels[disk] = i + 1
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(labels).save(tmp_path / "labels.png")
    objects = read_label_map(tmp_path / "labels.png")
    return make_samples(
        tmp_path / "img.png", objects, "synthetic", magnification=10.0, default_magnification=20.0
    )


def test_cache_makes_later_epochs_and_runs_skip_the_encoder(tmp_path: Path) -> None:
    samples = _synthetic_samples(tmp_path)
    config = TrainConfig(epochs=3, batch_size=2, augment_variants=1, prompt_kinds=("box",))
    model = FakeWsiSam()
    cache = FeatureCache(tmp_path / "cache", model)  # type: ignore[arg-type]
    result = train_heads(
        model,  # type: ignore[arg-type]
        samples,
        config,
        cache=cache,
        out=tmp_path / "h.pt",
        progress=False,
    )
    # 2 objects x (identity + 1 variant) x (HR + LR), all before the first epoch
    assert model.encode_calls == result.encoder_calls == 8
    assert result.epochs_run == 3 and len(result.step_losses) == 3
    files = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == 4
    stored = torch.load(files[0], weights_only=True)
    assert stored["hr_embedding"].dtype == torch.float16
    assert stored["hr_embedding"].shape == (1, 256, 64, 64)

    again = FakeWsiSam()  # a second run with the same encoder weights
    again.load_state_dict(model.state_dict())
    cache2 = FeatureCache(tmp_path / "cache", again)  # type: ignore[arg-type]
    second = train_heads(
        again,  # type: ignore[arg-type]
        samples,
        config,
        cache=cache2,
        out=tmp_path / "h2.pt",
        progress=False,
    )
    assert again.encode_calls == second.encoder_calls == 0
    assert cache2.hits == 4


def test_cache_keys_follow_the_content_not_the_modification_time(tmp_path: Path) -> None:
    """A data set copied back in place (new mtime, same bytes) keeps its entries; new bytes
    of the same size do not."""
    sample = _synthetic_samples(tmp_path, 1)[0]
    cache = FeatureCache(tmp_path / "cache", FakeWsiSam())  # type: ignore[arg-type]
    identity = Augmentation()
    before = cache.key(sample, identity)
    data = sample.source.read_bytes()
    sample.source.unlink()
    sample.source.write_bytes(data)
    os.utime(sample.source, ns=(1, 1))
    assert cache.key(sample, identity) == before
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF  # same size, one byte in the middle of a small file
    sample.source.write_bytes(bytes(changed))
    os.utime(sample.source, ns=(2, 2))
    assert cache.key(sample, identity) != before


def test_resume_continues_exactly(tmp_path: Path) -> None:
    samples = _synthetic_samples(tmp_path, 3)
    kinds = ("box", "points", "mask")

    def run(out: Path, epochs: int, resume: bool, model: FakeWsiSam) -> Any:
        torch.manual_seed(0)
        cache = FeatureCache(tmp_path / "cache", model)  # type: ignore[arg-type]
        config = TrainConfig(epochs=epochs, batch_size=2, augment_variants=1, prompt_kinds=kinds)
        return train_heads(
            model,  # type: ignore[arg-type]
            samples,
            config,
            cache=cache,
            out=out,
            resume=resume,
            progress=False,
        )

    torch.manual_seed(1)
    base = FakeWsiSam()
    straight = FakeWsiSam()
    straight.load_state_dict(base.state_dict())
    run(tmp_path / "a.pt", 3, False, straight)

    part = FakeWsiSam()
    part.load_state_dict(base.state_dict())
    run(tmp_path / "b.pt", 2, False, part)
    state = torch.load(tmp_path / "b.state.pt", weights_only=True)
    assert state["epoch"] == 2
    resumed = FakeWsiSam()  # a fresh process: heads come from the state file
    resumed.load_state_dict(base.state_dict())
    result = run(tmp_path / "b.pt", 3, True, resumed)
    assert result.epochs_run == 1 and len(result.epoch_losses) == 3
    for key, value in straight.heads_state_dict().items():
        assert torch.allclose(value, resumed.heads_state_dict()[key]), key
    log = [json.loads(line) for line in (tmp_path / "b.log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if "epoch_loss" in e] == [1, 2, 3]
    assert all(np.isfinite(e["loss"]) for e in log if "loss" in e)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["metadata"]["epochs"] == 3 and saved["metadata"]["lam"] == 0.5


def test_resuming_a_finished_run_encodes_nothing_and_keeps_its_heads(tmp_path: Path) -> None:
    samples = _synthetic_samples(tmp_path, 3)
    config = TrainConfig(epochs=2, batch_size=2, augment_variants=1)

    def run(model: FakeWsiSam, cache_dir: Path, resume: bool) -> Any:
        cache = FeatureCache(cache_dir, model)  # type: ignore[arg-type]
        return train_heads(
            model,  # type: ignore[arg-type]
            samples,
            config,
            cache=cache,
            out=tmp_path / "h.pt",
            resume=resume,
            progress=False,
        )

    torch.manual_seed(0)
    trained = FakeWsiSam()
    run(trained, tmp_path / "cache", False)
    # a fresh process with an empty cache (a new machine): scoring the run needs no training fields
    resumed = FakeWsiSam()
    result = run(resumed, tmp_path / "empty_cache", True)
    assert result.epochs_run == 0 and result.encoder_calls == 0
    assert len(result.epoch_losses) == 2
    for key, value in trained.heads_state_dict().items():
        assert torch.equal(value, resumed.heads_state_dict()[key]), key


def test_learning_rate_drops_from_the_chosen_epoch(tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, lr=1e-3, lr_drop_epoch=3)
    assert [epoch_lr(config, e) for e in (1, 2, 3)] == [1e-3, 1e-3, 1e-3 * LR_DROP_FACTOR]
    assert epoch_lr(TrainConfig(epochs=3), 3) == 1e-3
    with pytest.raises(ValueError, match="lr drop epoch"):
        TrainConfig(lr_drop_epoch=0)

    samples = _synthetic_samples(tmp_path)
    seen: list[float] = []

    def record_lr(epoch: int, loss: float) -> None:
        state = torch.load(tmp_path / "h.state.pt", weights_only=True)
        seen.append(state["optimizer"]["param_groups"][0]["lr"])

    def run(epochs: int, resume: bool, model: FakeWsiSam) -> None:
        cache = FeatureCache(tmp_path / "cache", model)  # type: ignore[arg-type]
        train_heads(
            model,  # type: ignore[arg-type]
            samples,
            TrainConfig(epochs=epochs, batch_size=2, augment_variants=0, lr_drop_epoch=2),
            cache=cache,
            out=tmp_path / "h.pt",
            resume=resume,
            progress=False,
            on_epoch=record_lr,
        )

    run(1, False, FakeWsiSam())
    run(3, True, FakeWsiSam())  # the resumed run sets the rate from the epoch number
    assert seen == pytest.approx([1e-3, 1e-4, 1e-4])


def test_prompt_kinds_are_drawn_per_batch_or_per_object(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    per_batch = TrainConfig()
    per_object = TrainConfig(prompt_mixing="object")
    for _ in range(50):
        assert len(set(draw_prompt_kinds(per_batch, 4, rng))) == 1
    drawn = [k for _ in range(500) for k in draw_prompt_kinds(per_object, 4, rng)]
    assert sum(len(set(drawn[i : i + 4])) > 1 for i in range(0, len(drawn), 4)) > 300
    shares = [drawn.count(k) / len(drawn) for k in ("box", "points", "mask")]
    assert shares == pytest.approx([1 / 3] * 3, abs=0.04)
    with pytest.raises(ValueError, match="prompt mixing"):
        TrainConfig(prompt_mixing="step")

    # A mixed batch runs one sub-batch per kind and returns the logits in the batch's order.
    model = FakeWsiSam()
    yy, xx = np.mgrid[:1024, :1024]
    masks = [(xx - 300 - 100 * i) ** 2 + (yy - 500) ** 2 < (80 + 20 * i) ** 2 for i in range(4)]
    features = PatchFeatures(torch.rand(4, 256, 64, 64), torch.zeros(4, 160, 64, 64))
    kinds = ["points", "box", "points", "box"]
    hr, lr = _mixed_prompt_forward(
        model, features, features, masks, kinds, np.random.default_rng(7), 10
    )
    assert hr.shape == lr.shape == (4, 1, 256, 256)
    replay = np.random.default_rng(7)  # the same draws, kind by kind in first-seen order
    points = simulate_training_prompts([masks[0], masks[2]], "points", replay)
    boxes = simulate_training_prompts([masks[1], masks[3]], "box", replay)
    expected_points = model(features[[0, 2]], features[[0, 2]], points)
    expected_boxes = model(features[[1, 3]], features[[1, 3]], boxes)
    assert torch.equal(hr[[0, 2]], expected_points.hr_logits)
    assert torch.equal(hr[[1, 3]], expected_boxes.hr_logits)
    assert torch.equal(lr[[1, 3]], expected_boxes.lr_logits)
    assert not torch.equal(hr[1], hr[0])  # the box rows did get their boxes

    # A whole run with per-object kinds logs mixed steps and lowers the loss.
    samples = _synthetic_samples(tmp_path, 3)
    model = FakeWsiSam()
    result = train_heads(
        model,  # type: ignore[arg-type]
        samples,
        TrainConfig(epochs=8, batch_size=3, augment_variants=0, prompt_mixing="object", lr=1e-2),
        cache=FeatureCache(tmp_path / "cache", model),  # type: ignore[arg-type]
        out=tmp_path / "h.pt",
        progress=False,
    )
    log = [json.loads(line) for line in (tmp_path / "h.log.jsonl").read_text().splitlines()]
    assert any(e.get("prompt") == "mixed" for e in log)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    saved = torch.load(tmp_path / "h.pt", weights_only=True)
    assert saved["metadata"]["prompt_mixing"] == "object"


def test_augmentation_flips_jointly_and_keeps_masks_binary() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[1, 2] = 200
    mask = np.zeros((8, 8), bool)
    mask[1, 2] = True
    aug = Augmentation(hflip=True, vflip=True, brightness=1.1, contrast=0.9, saturation=1.2)
    out = aug.apply_image(image)
    flipped = aug.apply_geometry(mask)
    assert flipped[6, 5] and flipped.sum() == 1 and flipped.dtype == bool
    assert out[6, 5].max() > out[0, 0].max()  # the bright pixel moved with the mask
    # a concentric pair stays concentric: the HR patch's centre is the LR patch's centre
    centre = np.zeros((8, 8), bool)
    centre[2:6, 2:6] = True
    assert np.array_equal(aug.apply_geometry(centre), centre)
    a = augmentation_variants(3, seed=5, key="slide|field")
    assert a[0].is_identity and len(a) == 4
    assert a == augmentation_variants(3, seed=5, key="slide|field")
    assert a != augmentation_variants(3, seed=5, key="other|field")


@pytest.mark.slow
def test_short_training_lowers_the_loss_with_the_real_model(tmp_path: Path) -> None:
    from shapely.geometry import box as shapely_box

    from engine.build import load_wsi_sam
    from engine.train.loss import wsi_sam_loss
    from engine.train.prompts import area_downsample, noisy_box

    disk = _synthetic_samples(tmp_path, 1)[0]
    # the left half of a purple disk: SAM's box answer tends to take the whole disk, so the
    # heads have something to learn
    x0, y0, x1, y1 = disk.geometry.bounds
    half = disk.geometry.intersection(shapely_box(x0, y0, (x0 + x1) / 2, y1))
    sample = ObjectSample(disk.source, half, None, "synthetic", disk.field, "half")
    model = load_wsi_sam(heads="none", device="cpu")
    cache = FeatureCache(tmp_path / "cache", model)
    hr_mask, lr_mask = target_masks(sample)
    n = 6
    boxes = np.stack([noisy_box(hr_mask, np.random.default_rng(100 + i)) for i in range(n)])
    targets = [
        torch.from_numpy(area_downsample(m))[None, None].expand(n, -1, -1, -1)
        for m in (hr_mask, lr_mask)
    ]

    def loss_on_fixed_boxes() -> float:
        with SlidePool() as pool:
            hr, lr = cache.features(sample, Augmentation(), pool)
        hr_n, lr_n = PatchFeatures.cat([hr.float()] * n), PatchFeatures.cat([lr.float()] * n)
        with torch.no_grad():
            out = model(hr_n, lr_n, Prompts(boxes=torch.from_numpy(boxes).float()))
        return float(wsi_sam_loss(out.hr_logits, out.lr_logits, targets[0], targets[1]).total)

    before = loss_on_fixed_boxes()
    config = TrainConfig(epochs=5, batch_size=1, augment_variants=0, prompt_kinds=("box",))
    result = train_heads(
        model, [sample], config, cache=cache, out=tmp_path / "h.pt", progress=False
    )
    after = loss_on_fixed_boxes()
    assert result.encoder_calls == 0  # the field was cached by the first loss computation
    assert after < 0.95 * before
    assert (tmp_path / "h.pt").is_file()


def test_evaluation_on_cached_features_matches_encoding(tmp_path: Path) -> None:
    from engine.build import load_wsi_sam
    from engine.evaluate import evaluate

    samples = _synthetic_samples(tmp_path, 2)
    model = load_wsi_sam(heads="none", device="cpu")
    cache = FeatureCache(tmp_path / "cache", model)
    with SlidePool() as pool:
        cached = evaluate(
            samples,
            ["sam", "wsi-sam"],
            ["box", "3"],
            wsi=model,
            progress=False,
            features=lambda sample: cache.features(sample, Augmentation(), pool),
        )
    encoded = evaluate(samples, ["sam", "wsi-sam"], ["box", "3"], wsi=model, progress=False)
    assert cached.encoder_calls == 0 and cache.encoder_calls == 4
    assert encoded.encoder_calls == 4
    pairs = list(zip(cached.results, encoded.results, strict=True))
    assert len(pairs) == 2 * 2 * 2
    for a, b in pairs:
        assert (a.model, a.prompt, a.name) == (b.model, b.prompt, b.name)
        assert a.dice == pytest.approx(b.dice, abs=0.01)  # the cache holds half precision
