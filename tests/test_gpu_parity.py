"""The golden parity cases (tests/test_sam_parity.py) on a CUDA GPU: torch in f32 and in half
precision (bf16 where the GPU supports it, else fp16), each against the original MobileSAM's
outputs with the tolerances of that module (half precision: its bf16 ones).

Skipped where there is no CUDA GPU; ``benchmarks/gpu_check.sh`` runs it on one (with
``WSI_SAM_REQUIRE_CUDA=1``, which turns the skip into a failure). Environment:

- ``WSI_SAM_GPU_PRECISIONS``: comma-separated precisions (default ``f32,half``; ``half`` is the
  GPU's own half precision, ``bf16`` / ``fp16`` ask for one).
- ``WSI_SAM_GPU_PARITY_DEVICE``: the device (default ``cuda``); ``cpu`` runs the same checks
  with torch on the CPU (f32 and bf16 autocast), to check this file without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# the golden data, its cases and tolerances live in the CPU parity module (tests/ is on sys.path)
from test_sam_parity import (  # type: ignore[import-not-found]
    BF16,
    BF16_POINTS,
    CASES,
    F32,
    GOLDEN,
    IMAGES,
    Tolerance,
    _case_id,
    mask_iou,
)

from engine.predictor import SamPredictor
from engine.sam.sam import Sam
from engine.weights import load_sam

DEVICE = os.environ.get("WSI_SAM_GPU_PARITY_DEVICE", "cuda")
PRECISIONS = [
    p.strip() for p in os.environ.get("WSI_SAM_GPU_PRECISIONS", "f32,half").split(",") if p.strip()
]
REQUIRE_CUDA = os.environ.get("WSI_SAM_REQUIRE_CUDA", "") not in ("", "0")


def _device_usable() -> str | None:
    """None when DEVICE can run the tests, else why not."""
    if DEVICE.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"no CUDA GPU (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        return None
    if DEVICE == "cpu":
        return None
    return f"WSI_SAM_GPU_PARITY_DEVICE must be cuda[:N] or cpu, got {DEVICE!r}"


def _concrete(precision: str) -> str:
    if precision != "half":
        return precision
    if DEVICE.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


@pytest.fixture(scope="module", params=PRECISIONS)
def gpu_model(request: pytest.FixtureRequest) -> tuple[Sam, Tolerance]:
    reason = _device_usable()
    if reason is not None:
        if REQUIRE_CUDA:
            pytest.fail(f"WSI_SAM_REQUIRE_CUDA is set: {reason}")
        pytest.skip(reason)
    precision = _concrete(request.param)
    sam = load_sam(device=DEVICE, backend="torch", precision=precision)
    where = torch.device(DEVICE).type.upper()
    assert sam.backend_label == f"torch {where} {precision}", sam.backend_label
    return sam, F32 if precision == "f32" else BF16


@pytest.fixture(scope="module")
def predictors(gpu_model: tuple[Sam, Tolerance]) -> dict[str, SamPredictor]:
    """One predictor per golden image, each encoded on first use and then kept."""
    sam = gpu_model[0]

    class Lazy(dict[str, SamPredictor]):
        def __missing__(self, name: str) -> SamPredictor:
            predictor = SamPredictor(sam)
            predictor.set_image(np.asarray(Image.open(GOLDEN / name).convert("RGB")))
            self[name] = predictor
            return predictor

    return Lazy()


@pytest.mark.parametrize("image_name", IMAGES)
def test_gpu_image_embedding_matches_reference(
    gpu_model: tuple[Sam, Tolerance], predictors: dict[str, SamPredictor], image_name: str
) -> None:
    tolerance = gpu_model[1]
    embedding = predictors[image_name].get_image_embedding()
    assert tuple(embedding.shape) == (1, 256, 64, 64)
    assert embedding.dtype == torch.float32
    ours = embedding[0].detach().cpu().numpy().astype(np.float64).ravel()
    stem = image_name.rsplit(".", 1)[0]
    reference = np.load(GOLDEN / f"{stem}.embedding.npy").astype(np.float64).ravel()
    cosine = ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference))
    assert cosine >= tolerance.min_embedding_cosine, f"{image_name}: cosine {cosine:.6f}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_gpu_prediction_matches_reference(
    gpu_model: tuple[Sam, Tolerance], predictors: dict[str, SamPredictor], case: dict[str, Any]
) -> None:
    tolerance = gpu_model[1]
    prompt = case["prompt"]
    if tolerance is BF16 and "points" in prompt:
        tolerance = BF16_POINTS
    kwargs: dict[str, Any] = {}
    if "points" in prompt:
        kwargs["point_coords"] = np.array(prompt["points"], dtype=np.float64)
        kwargs["point_labels"] = np.array(prompt["labels"])
    if "box" in prompt:
        kwargs["box"] = np.array(prompt["box"], dtype=np.float64)
    masks, iou_predictions, low_res = predictors[case["image"]].predict(
        multimask_output=prompt["multimask"], **kwargs
    )

    n_masks = len(case["masks"])
    assert masks.shape[0] == iou_predictions.shape[0] == low_res.shape[0] == n_masks
    assert masks.dtype == np.bool_
    for i, mask_name in enumerate(case["masks"]):
        reference = np.asarray(Image.open(GOLDEN / mask_name)) > 127
        assert masks[i].shape == reference.shape
        iou = mask_iou(masks[i], reference)
        assert iou >= tolerance.min_mask_iou, f"{mask_name}: mask IoU {iou:.4f}"
        diff = abs(float(iou_predictions[i]) - case["iou_predictions"][i])
        assert diff <= tolerance.max_iou_pred_diff, f"{mask_name}: IoU prediction off by {diff:.4f}"
