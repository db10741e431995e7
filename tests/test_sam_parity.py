"""Our SAM port against outputs of the original MobileSAM on real H&E / SVS crops.

The reference masks, IoU predictions and image embeddings in tests/data/golden/mobilesam were
made with the original implementation and the same checkpoint (see the README there). Each image
is encoded once per test module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.predictor import SamPredictor
from engine.sam.sam import Sam
from engine.weights import load_sam

GOLDEN = Path(__file__).parent / "data" / "golden" / "mobilesam"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
CASES: list[dict[str, Any]] = MANIFEST["cases"]
IMAGES = sorted({case["image"] for case in CASES})

MIN_MASK_IOU = 0.98
MAX_IOU_PRED_DIFF = 0.02
MIN_EMBEDDING_COSINE = 0.999


def _case_id(case: dict[str, Any]) -> str:
    return Path(case["masks"][0]).name.rsplit(".m0.png", 1)[0]


@pytest.fixture(scope="module")
def sam() -> Sam:
    return load_sam(device="cpu")


@pytest.fixture(scope="module")
def predictors(sam: Sam) -> dict[str, SamPredictor]:
    """One predictor per golden image, each encoded on first use and then kept."""

    class Lazy(dict[str, SamPredictor]):
        def __missing__(self, name: str) -> SamPredictor:
            predictor = SamPredictor(sam)
            predictor.set_image(np.asarray(Image.open(GOLDEN / name).convert("RGB")))
            self[name] = predictor
            return predictor

    return Lazy()


def test_manifest_has_the_fifteen_cases() -> None:
    assert len(CASES) == 15
    assert len(IMAGES) == 3
    for case in CASES:
        assert len(case["masks"]) == len(case["iou_predictions"])
        assert len(case["masks"]) == (3 if case["prompt"]["multimask"] else 1)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("image_name", IMAGES)
def test_image_embedding_matches_reference(
    predictors: dict[str, SamPredictor], image_name: str
) -> None:
    embedding = predictors[image_name].get_image_embedding()
    assert tuple(embedding.shape) == (1, 256, 64, 64)
    ours = embedding[0].numpy().astype(np.float64).ravel()
    stem = image_name.rsplit(".", 1)[0]
    reference = np.load(GOLDEN / f"{stem}.embedding.npy").astype(np.float64).ravel()
    cosine = ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference))
    assert cosine >= MIN_EMBEDDING_COSINE, f"{image_name}: cosine {cosine:.6f}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_prediction_matches_reference(
    predictors: dict[str, SamPredictor], case: dict[str, Any]
) -> None:
    predictor = predictors[case["image"]]
    prompt = case["prompt"]
    kwargs: dict[str, Any] = {}
    if "points" in prompt:
        kwargs["point_coords"] = np.array(prompt["points"], dtype=np.float64)
        kwargs["point_labels"] = np.array(prompt["labels"])
    if "box" in prompt:
        kwargs["box"] = np.array(prompt["box"], dtype=np.float64)
    masks, iou_predictions, low_res = predictor.predict(
        multimask_output=prompt["multimask"], **kwargs
    )

    n_masks = len(case["masks"])
    assert masks.shape[0] == iou_predictions.shape[0] == low_res.shape[0] == n_masks
    assert masks.dtype == np.bool_
    for i, mask_name in enumerate(case["masks"]):
        reference = np.asarray(Image.open(GOLDEN / mask_name)) > 127
        assert masks[i].shape == reference.shape
        iou = mask_iou(masks[i], reference)
        assert iou >= MIN_MASK_IOU, f"{mask_name}: mask IoU {iou:.4f}"
        diff = abs(float(iou_predictions[i]) - case["iou_predictions"][i])
        assert diff <= MAX_IOU_PRED_DIFF, f"{mask_name}: IoU prediction off by {diff:.4f}"
