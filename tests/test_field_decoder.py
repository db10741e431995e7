"""The field decoder (segment-everything's decoder of many points on one field) computes what
SAM's and WSI-SAM's generic decoders compute, in torch and converted to OpenVINO."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.field_decoder import FieldDecoder
from engine.wsi_sam import PatchFeatures, Prompts, WsiSam


def _points(count: int = 5) -> Prompts:
    xy = torch.tensor([[100.0, 120.0], [512.0, 500.0], [900.0, 60.0], [33.0, 990.0], [700, 700]])
    return Prompts(points=xy[:count, None, :], labels=torch.ones(count, 1, dtype=torch.int64))


def _features(seed: int) -> PatchFeatures:
    generator = torch.Generator().manual_seed(seed)
    return PatchFeatures(
        torch.randn(1, 256, 64, 64, generator=generator) * 0.5,
        torch.randn(1, 160, 64, 64, generator=generator) * 0.5,
    )


@pytest.fixture(scope="module")
def trained_model(fresh_wsi_sam: WsiSam) -> WsiSam:
    """Heads whose token is not zero (fresh heads add nothing to SAM's logits)."""
    model = copy.deepcopy(fresh_wsi_sam)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def _reference(model: WsiSam, hr: PatchFeatures, lr: PatchFeatures, prompts: Prompts):  # type: ignore[no-untyped-def]
    hr_sparse, hr_dense = model._embed_prompts(prompts)
    lr_sparse, lr_dense = model._embed_prompts(prompts.to_lr())
    static = model.hr_static_features(hr)
    sam = model.decode_sam(hr.embedding, hr_sparse, hr_dense)
    wsi = model.decode_hr(
        hr.embedding, lr.embedding, static, hr_sparse, lr_sparse, hr_dense, lr_dense
    )
    return sam, wsi, (hr_sparse, lr_sparse, hr_dense[:1], static)


@torch.inference_mode()
def test_field_decoder_equals_the_generic_decoders(trained_model: WsiSam) -> None:
    model = trained_model
    hr, lr = _features(0), _features(1)
    prompts = _points()
    (sam_logits, sam_iou), (wsi_logits, wsi_iou), inputs = _reference(model, hr, lr, prompts)
    hr_sparse, lr_sparse, dense, static = inputs
    decoder = FieldDecoder(model)
    logits, iou = decoder.sam(hr.embedding, dense, hr_sparse)
    assert logits.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
    torch.testing.assert_close(logits, sam_logits[:, 1:], rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(iou, sam_iou[:, 1:], rtol=1e-5, atol=1e-5)
    logits, iou = decoder.wsi_sam(hr.embedding, lr.embedding, static, dense, hr_sparse, lr_sparse)
    torch.testing.assert_close(logits, wsi_logits[:, 1:], rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(iou, wsi_iou[:, 1:], rtol=1e-5, atol=1e-5)
    # the heads change the logits, so the comparison above saw the heads' part
    assert (wsi_logits - sam_logits).abs().max() > 0.1


@torch.inference_mode()
def test_predictor_decode_points_equals_decode_field(
    fresh_wsi_sam: WsiSam, sample_slide: Path
) -> None:
    from engine.patches import choose_field
    from engine.slides import open_slide
    from engine.wsi_predictor import WsiSamPredictor

    predictor = WsiSamPredictor(fresh_wsi_sam)
    points = np.array([[300.0, 400.0], [512.0, 512.0], [800.0, 100.0]])
    with open_slide(sample_slide) as slide:
        chosen = choose_field(slide, (900, 1300, 1150, 1520))
        prompts = Prompts(
            points=torch.as_tensor(points, dtype=torch.float32)[:, None, :],
            labels=torch.ones(3, 1, dtype=torch.int64),
        )
        for mode in ("sam", "wsi-sam"):
            ref, ref_iou, _ = predictor.decode_field(slide, chosen, prompts, mode, multimask=True)
            logits, iou, encoded = predictor.decode_points(slide, chosen, points, mode)
            assert not encoded  # the field was cached by decode_field
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=2e-4)
            torch.testing.assert_close(iou, ref_iou, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_openvino_field_graphs_equal_torch_in_f32(trained_model: WsiSam) -> None:
    from engine.backends import openvino_available

    if not openvino_available():
        pytest.skip("openvino not installed")
    from engine.backends.openvino_field_decoder import OpenVinoFieldDecoders

    model = trained_model
    hr, lr = _features(0), _features(1)
    with torch.inference_mode():
        (sam_logits, sam_iou), (wsi_logits, wsi_iou), inputs = _reference(model, hr, lr, _points(3))
    hr_sparse, lr_sparse, dense, static = inputs
    graphs = OpenVinoFieldDecoders(model, "f32")
    logits, iou = graphs.sam(hr.embedding, dense, hr_sparse)
    torch.testing.assert_close(logits, sam_logits[:, 1:], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(iou, sam_iou[:, 1:], rtol=1e-4, atol=1e-4)
    logits, iou = graphs.wsi_sam(hr.embedding, lr.embedding, static, dense, hr_sparse, lr_sparse)
    torch.testing.assert_close(logits, wsi_logits[:, 1:], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(iou, wsi_iou[:, 1:], rtol=1e-4, atol=1e-4)
