"""WSI-SAM model: fresh heads equal SAM, token aggregation, heads checkpoint, frozen SAM."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.build import load_wsi_sam
from engine.wsi_sam import (
    HeadsError,
    PatchFeatures,
    Prompts,
    WsiSam,
    read_heads_checkpoint,
)


@pytest.fixture(scope="module")
def field_features(
    fresh_wsi_sam: WsiSam, sample_slide: Path
) -> tuple[PatchFeatures, PatchFeatures]:
    """Real HR/LR features of one field of the sample slide (two encoder passes)."""
    from engine.patches import choose_field, read_field
    from engine.slides import open_slide

    with open_slide(sample_slide) as slide:
        field = choose_field(slide, (900, 1300, 1100, 1500), magnification=10.0, adaptive=False)
        hr, lr = read_field(slide, field)
    batch = torch.from_numpy(np.stack([hr, lr])).permute(0, 3, 1, 2).float()
    features = fresh_wsi_sam.encode(batch)
    return features[0], features[1]


def _box_prompt() -> Prompts:
    return Prompts(boxes=torch.tensor([[400.0, 420.0, 640.0, 600.0]]))


def test_heads_have_the_papers_size(fresh_wsi_sam: WsiSam) -> None:
    n = sum(p.numel() for p in fresh_wsi_sam.trainable_parameters())
    assert 0.8e6 < n < 1.0e6  # "about 0.9 M trainable parameters in all"
    assert all(p.requires_grad for p in fresh_wsi_sam.trainable_parameters())
    assert not any(p.requires_grad for p in fresh_wsi_sam.sam.parameters())


def test_encode_returns_late_and_early_features(field_features: tuple[PatchFeatures, ...]) -> None:
    hr, _ = field_features
    assert tuple(hr.embedding.shape) == (1, 256, 64, 64)
    assert tuple(hr.early.shape) == (1, 160, 64, 64)


@pytest.mark.parametrize("multimask", [False, True])
def test_fresh_heads_equal_sam(
    fresh_wsi_sam: WsiSam, field_features: tuple[PatchFeatures, PatchFeatures], multimask: bool
) -> None:
    hr, lr = field_features
    prompts = (
        _box_prompt()
        if not multimask
        else Prompts(points=torch.tensor([[[512.0, 512.0]]]), labels=torch.tensor([[1]]))
    )
    with torch.no_grad():
        out = fresh_wsi_sam(hr, lr, prompts, multimask_output=multimask)
        sam_logits, sam_iou = fresh_wsi_sam.sam_forward(hr, prompts, multimask_output=multimask)
        sam_lr_logits, _ = fresh_wsi_sam.sam_forward(lr, prompts.to_lr(), multimask)
    channels = 3 if multimask else 1
    assert tuple(out.hr_logits.shape) == (1, channels, 256, 256)
    torch.testing.assert_close(out.hr_logits, sam_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.lr_logits, sam_lr_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.iou_predictions, sam_iou)
    # and it is a real segmentation, not an empty map
    assert (sam_logits > 0).float().mean() > 0.001
    # the inference path keeps the property
    with torch.no_grad():
        fast_logits, fast_iou = fresh_wsi_sam.predict_hr(hr, lr, prompts, multimask)
    torch.testing.assert_close(fast_logits, sam_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_iou, sam_iou)


@pytest.mark.parametrize("multimask", [False, True])
def test_inference_path_equals_forward_with_trained_heads(
    fresh_wsi_sam: WsiSam, field_features: tuple[PatchFeatures, PatchFeatures], multimask: bool
) -> None:
    """predict_hr (batched HR/LR token runs, cached static features) = forward's HR output."""
    hr, lr = field_features
    model = copy.deepcopy(fresh_wsi_sam)
    torch.manual_seed(2)
    for p in model.trainable_parameters():
        p.data.normal_(0, 0.02)
    # three prompts in one batch over one field: box, box + points, points with a coarse mask
    prompts = Prompts(
        boxes=torch.tensor(
            [[400.0, 420.0, 640.0, 600.0], [300, 300, 700, 650], [100, 90, 900, 980]]
        ),
        points=torch.tensor(
            [[[512.0, 512.0], [450, 470]], [[500, 480], [310, 320]], [[520, 500], [600, 610]]]
        ),
        labels=torch.tensor([[1, 1], [1, 0], [1, 1]]),
        masks=torch.randn(3, 1, 256, 256),
    )
    with torch.no_grad():
        out = model(hr, lr, prompts, multimask_output=multimask)
        static = model.hr_static_features(hr)
        fast, fast_iou = model.predict_hr(hr, lr, prompts, multimask, hr_static=static)
        uncached, _ = model.predict_hr(hr, lr, prompts, multimask)
    assert not torch.allclose(out.hr_logits, out.sam_hr_logits, atol=1e-3)
    assert tuple(fast.shape) == (3, 3 if multimask else 1, 256, 256)
    torch.testing.assert_close(fast, out.hr_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(uncached, fast)
    torch.testing.assert_close(fast_iou, out.iou_predictions)


@pytest.mark.parametrize("multimask", [False, True])
def test_batched_forward_equals_the_per_head_computation(
    fresh_wsi_sam: WsiSam, field_features: tuple[PatchFeatures, PatchFeatures], multimask: bool
) -> None:
    """forward (HR+LR runs batched, residuals without autograd) = head by head, outputs and
    gradients, on a batch of two different fields (HR and LR swapped) with random heads."""
    hr, lr = field_features
    hr2, lr2 = PatchFeatures.cat([hr, lr]), PatchFeatures.cat([lr, hr])
    prompts = Prompts(
        boxes=torch.tensor([[400.0, 420.0, 640.0, 600.0], [200, 250, 800, 700]]),
        points=torch.tensor([[[512.0, 512.0], [450, 470]], [[500, 480], [310, 320]]]),
        labels=torch.tensor([[1, 1], [1, 0]]),
        masks=torch.randn(2, 1, 256, 256),
    )
    grads = []
    outs = []
    for method in ("forward", "forward_per_head"):
        model = copy.deepcopy(fresh_wsi_sam).train()
        torch.manual_seed(3)
        for p in model.trainable_parameters():
            p.data.normal_(0, 0.02)
        out = getattr(model, method)(hr2, lr2, prompts, multimask_output=multimask)
        (out.hr_logits.sigmoid().mean() + 0.5 * out.lr_logits.sigmoid().mean()).backward()
        grads.append([p.grad for p in model.trainable_parameters()])
        outs.append(out)
    batched, reference = outs
    assert not torch.allclose(reference.hr_logits, reference.sam_hr_logits, atol=1e-3)
    for name in ("hr_logits", "lr_logits", "sam_hr_logits", "sam_lr_logits", "iou_predictions"):
        got, want = getattr(batched, name), getattr(reference, name)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
    assert all(g is not None for g in grads[0])
    for got_grad, want_grad in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-3, atol=1e-6)


def test_trained_heads_change_the_output_and_aggregation_matters(
    fresh_wsi_sam: WsiSam, field_features: tuple[PatchFeatures, PatchFeatures]
) -> None:
    hr, lr = field_features
    model = copy.deepcopy(fresh_wsi_sam)
    torch.manual_seed(1)
    for p in model.trainable_parameters():
        p.data.normal_(0, 0.02)
    with torch.no_grad():
        mean_out = model(hr, lr, _box_prompt())
        model.aggregation = "sum"
        sum_out = model(hr, lr, _box_prompt())
    assert not torch.allclose(mean_out.hr_logits, mean_out.sam_hr_logits)
    # sum = 2 x mean for the head's contribution
    torch.testing.assert_close(
        sum_out.hr_logits - sum_out.sam_hr_logits,
        2 * (mean_out.hr_logits - mean_out.sam_hr_logits),
        rtol=1e-4,
        atol=1e-4,
    )


def test_gradient_reaches_the_heads_only(
    fresh_wsi_sam: WsiSam, field_features: tuple[PatchFeatures, PatchFeatures]
) -> None:
    hr, lr = field_features
    model = copy.deepcopy(fresh_wsi_sam).train()
    out = model(hr, lr, _box_prompt())
    loss = out.hr_logits.sigmoid().mean() + out.lr_logits.sigmoid().mean()
    loss.backward()
    last = model.hr_head.token_mlp.layers[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.sam.parameters())


def test_prompts_map_to_the_lr_patch() -> None:
    prompts = Prompts(
        boxes=torch.tensor([[100.0, 200.0, 300.0, 400.0]]),
        points=torch.tensor([[[0.0, 1024.0]]]),
        labels=torch.tensor([[1]]),
    )
    lr = prompts.to_lr()
    assert lr.boxes is not None and lr.points is not None
    torch.testing.assert_close(lr.boxes, torch.tensor([[306.0, 356.0, 406.0, 456.0]]))
    torch.testing.assert_close(lr.points, torch.tensor([[[256.0, 768.0]]]))
    with pytest.raises(ValueError, match="needs a box"):
        Prompts()


def test_heads_checkpoint_round_trip(fresh_wsi_sam: WsiSam, tmp_path: Path) -> None:
    model = copy.deepcopy(fresh_wsi_sam)
    torch.manual_seed(2)
    for p in model.trainable_parameters():
        p.data.normal_(0, 0.02)
    model.aggregation = "sum"
    path = tmp_path / "heads.pt"
    model.save_heads(path, trained_on="unit test", magnification=10.0)
    assert path.stat().st_size < 8 * 2**20  # heads only, not SAM
    payload = read_heads_checkpoint(path)
    assert payload["metadata"]["trained_on"] == "unit test"
    assert payload["metadata"]["aggregation"] == "sum"
    assert all(k.startswith(("hr_head.", "lr_head.")) for k in payload["state_dict"])

    other = copy.deepcopy(fresh_wsi_sam)
    other.load_heads(path)
    assert other.aggregation == "sum" and other.metadata["magnification"] == 10.0
    for a, b in zip(model.trainable_parameters(), other.trainable_parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_heads_checkpoints(fresh_wsi_sam: WsiSam, tmp_path: Path) -> None:
    model = copy.deepcopy(fresh_wsi_sam)
    with pytest.raises(HeadsError, match="not found"):
        model.load_heads(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HeadsError, match="not a readable heads checkpoint"):
        model.load_heads(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(HeadsError, match="not a WSI-SAM heads checkpoint"):
        model.load_heads(foreign)
    path = tmp_path / "partial.pt"
    model.save_heads(path)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["hr_head.token.weight"]
    torch.save(payload, path)
    with pytest.raises(HeadsError, match=r"hr_head\.token\.weight"):
        model.load_heads(path)


def test_load_wsi_sam_with_fresh_heads() -> None:
    model = load_wsi_sam(heads="none", device="cpu")
    assert model.aggregation == "mean"
    assert model.metadata["trained_on"] is None


@pytest.mark.parametrize("batch", [1, 3])
def test_token_folded_into_the_last_conv_equals_the_dot_with_the_block(batch: int) -> None:
    from engine.wsi_sam import WsiSamHead, conv_block_token_dot

    torch.manual_seed(3)
    head = WsiSamHead()
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(1, 32, 40, 36)
    vectors = torch.randn(batch, 32)
    with torch.no_grad():
        want = torch.einsum(
            "bc,bchw->bhw", vectors, head.embedding_maskfeature(x).expand(batch, -1, -1, -1)
        )
        got = conv_block_token_dot(head.embedding_maskfeature, x, vectors)
    assert got.shape == (batch, 40, 36)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a zero vector (fresh heads) adds exactly nothing
    zero = conv_block_token_dot(head.embedding_maskfeature, x, torch.zeros(1, 32))
    assert torch.count_nonzero(zero) == 0
