"""Evaluation with several prompt seeds: one batch per object and setting, the same figures as
one run per seed; WSI-SAM's inference path scores what its training forward computes."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.evaluate import evaluate
from engine.train.data import SlidePool, make_samples, usable
from engine.train.readers import read_label_map
from engine.wsi_sam import WsiSam


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list:  # type: ignore[type-arg]
    """Two glands of different sizes on an H&E-like background."""
    folder = tmp_path_factory.mktemp("eval_seeds")
    h, w = 320, 420
    rng = np.random.default_rng(0)
    background = np.array([232, 208, 224])
    image = (rng.normal(0, 6, (h, w, 3)) + background).clip(0, 255).astype(np.uint8)
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for i, (cx, cy, r) in enumerate([(110, 160, 45), (290, 150, 60)]):
        gland = ((xx - cx) / 1.3) ** 2 + (yy - cy) ** 2 < r**2
        image[gland] = (120, 60, 160)
        labels[gland] = i + 1
    Image.fromarray(image).save(folder / "a.png")
    with SlidePool(default_magnification=20) as pool:
        found = make_samples(
            folder / "a.png",
            read_label_map(_labels(folder, labels)),
            "test",
            pool=pool,
            default_magnification=20,
        )
    kept, _ = usable(found)
    assert len(kept) == 2
    return kept


def _labels(folder: Path, labels: np.ndarray) -> Path:
    path = folder / "a_labels.png"
    Image.fromarray(labels).save(path)
    return path


def _random_heads(model: WsiSam, seed: int) -> WsiSam:
    """A copy of ``model`` with random heads, strong enough to change the masks."""
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    for p in model.trainable_parameters():
        p.data.normal_(0, 0.1)
    return model


def _dice_by_key(results: list) -> dict[tuple[str, str, str | None], list[float]]:  # type: ignore[type-arg]
    by_key: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for r in results:
        by_key[(r.model, r.prompt, r.name)].append(r.dice)
    return by_key


def test_several_seeds_in_one_batch_equal_one_run_per_seed(
    fresh_wsi_sam: WsiSam,
    samples: list,  # type: ignore[type-arg]
) -> None:
    model = _random_heads(fresh_wsi_sam, 5)
    settings = ["box", "1", "3"]
    batched = evaluate(
        samples, ["sam", "wsi-sam"], settings, wsi=model, seed=[0, 1, 2], progress=False
    )
    single = []
    for seed in (0, 1, 2):
        single += evaluate(
            samples, ["sam", "wsi-sam"], settings, wsi=model, seed=seed, progress=False
        ).results
    got, want = _dice_by_key(batched.results), _dice_by_key(single)
    assert set(got) == set(want) and len(got) == 2 * 3 * 2  # models x settings x objects
    for key in want:
        assert len(got[key]) == 3  # one result per seed
        np.testing.assert_allclose(got[key], want[key], atol=2e-3, err_msg=str(key))
    # the seeds draw different prompts, and the heads do change the masks
    assert any(len(set(np.round(v, 4))) > 1 for v in got.values())
    assert any(
        abs(a - b) > 1e-3
        for key in got
        if key[0] == "wsi-sam"
        for a, b in zip(got[key], got[("sam", key[1], key[2])], strict=True)
    )


def test_evaluation_scores_the_training_forward(
    fresh_wsi_sam: WsiSam,
    samples: list,  # type: ignore[type-arg]
) -> None:
    """The inference path evaluation uses gives the masks of the forward that training fits."""
    from engine.evaluate import _upsampled_mask, dice, simulate_prompt, stack_prompts
    from engine.train.data import target_masks

    model = _random_heads(fresh_wsi_sam, 6)
    run = evaluate(samples, ["wsi-sam"], ["box", "5"], wsi=model, seed=[0, 1], progress=False)
    got = _dice_by_key(run.results)
    with SlidePool() as pool:
        for index, sample in enumerate(samples):
            from engine.train.data import load_patches

            hr_image, lr_image = load_patches(sample, pool)
            batch = torch.from_numpy(np.stack([hr_image, lr_image])).permute(0, 3, 1, 2).float()
            features = model.encode(batch)
            hr_mask, _ = target_masks(sample)
            for setting in ("box", "5"):
                prompts = stack_prompts(
                    [simulate_prompt(hr_mask, setting, s, index) for s in (0, 1)], model.device
                )
                with torch.no_grad():
                    out = model(features[0], features[1], prompts)
                want = [dice(_upsampled_mask(out.hr_logits[b : b + 1]), hr_mask) for b in (0, 1)]
                np.testing.assert_allclose(got[("wsi-sam", setting, sample.name)], want, atol=2e-3)
