"""SamPredictor: embedding cache, shapes and meanings of outputs, input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.predictor import SamPredictor
from engine.sam.sam import Sam
from engine.weights import load_sam

IMAGE = Path(__file__).parent / "data" / "golden" / "mobilesam" / "hgsc_nest_crop.png"
# a non-square crop, so that resizing, padding and unpadding are all exercised
CROP = (slice(100, 700), slice(0, 900))  # 600 x 900
BOX = np.array([484, 352, 708, 627])  # a tumour nest, in crop pixels


@pytest.fixture(scope="module")
def sam() -> Sam:
    return load_sam(device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.asarray(Image.open(IMAGE).convert("RGB"))[CROP]


class EncoderCounter:
    """Counts image encoder runs, whatever backend runs the encoder."""

    def __init__(self, sam: Sam) -> None:
        self.calls = 0
        self._sam = sam
        original = sam.encode_preprocessed

        def counting(images):  # type: ignore[no-untyped-def]
            self.calls += 1
            return original(images)

        sam.encode_preprocessed = counting  # type: ignore[method-assign]

    def remove(self) -> None:
        del self._sam.encode_preprocessed


@pytest.fixture(scope="module")
def predictor(sam: Sam, image: np.ndarray) -> SamPredictor:
    p = SamPredictor(sam)
    p.set_image(image)
    return p


def test_embedding_is_computed_once_and_reused(
    sam: Sam, predictor: SamPredictor, image: np.ndarray
) -> None:
    counter = EncoderCounter(sam)
    try:
        before = predictor.get_image_embedding().clone()
        predictor.predict(box=BOX, multimask_output=False)
        predictor.predict(point_coords=np.array([[600, 480]]), point_labels=np.array([1]))
        predictor.predict(
            point_coords=np.array([[600, 480], [100, 100]]),
            point_labels=np.array([1, 0]),
            box=BOX,
            multimask_output=False,
        )
        predictor.get_image_embedding()
        assert counter.calls == 0
        assert torch.equal(predictor.get_image_embedding(), before)
        # each set_image encodes exactly once
        other = SamPredictor(sam)
        other.set_image(image)
        other.predict(box=BOX)
        other.predict(box=BOX)
        assert counter.calls == 1
    finally:
        counter.remove()


def test_output_shapes_and_types(predictor: SamPredictor, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    masks, iou, low_res = predictor.predict(point_coords=np.array([[600, 480]]), point_labels=[1])
    assert masks.shape == (3, h, w) and masks.dtype == np.bool_
    assert iou.shape == (3,) and iou.dtype == np.float32
    assert low_res.shape == (3, 256, 256) and low_res.dtype == np.float32

    masks, iou, low_res = predictor.predict(box=BOX, multimask_output=False)
    assert masks.shape == (1, h, w)
    assert iou.shape == (1,)
    assert low_res.shape == (1, 256, 256)
    assert predictor.original_size == (h, w)
    assert predictor.input_size == (683, 1024)


def test_box_mask_lies_around_the_box(predictor: SamPredictor) -> None:
    masks, iou, _ = predictor.predict(box=BOX, multimask_output=False)
    mask = masks[0]
    x0, y0, x1, y1 = BOX
    inside = mask[y0:y1, x0:x1].sum()
    assert mask.sum() > 1000
    assert inside / mask.sum() > 0.9
    assert 0.0 < iou[0] <= 1.2


def test_logits_threshold_to_the_masks(predictor: SamPredictor) -> None:
    masks, _, _ = predictor.predict(box=BOX, multimask_output=False)
    logits, _, _ = predictor.predict(box=BOX, multimask_output=False, return_logits=True)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > predictor.model.mask_threshold, masks)


def test_low_res_logits_can_be_fed_back(predictor: SamPredictor) -> None:
    point = np.array([[600, 480]])
    _, iou, low_res = predictor.predict(point_coords=point, point_labels=np.array([1]))
    best = low_res[int(np.argmax(iou))][None]
    masks, _, _ = predictor.predict(
        point_coords=point, point_labels=np.array([1]), mask_input=best, multimask_output=False
    )
    assert masks.shape[0] == 1 and masks.any()


def test_predict_torch_batches_prompts(predictor: SamPredictor) -> None:
    boxes = np.stack([BOX, BOX // 2])
    boxes_t = torch.as_tensor(
        predictor.transform.apply_boxes(boxes, predictor.original_size), dtype=torch.float32
    )
    masks, iou, low_res = predictor.predict_torch(None, None, boxes=boxes_t, multimask_output=False)
    h, w = predictor.original_size
    assert masks.shape == (2, 1, h, w)
    assert iou.shape == (2, 1)
    assert low_res.shape == (2, 1, 256, 256)
    single, _, _ = predictor.predict(box=BOX, multimask_output=False)
    # batch element 0 is the same prompt as the single prediction
    agreement = (masks[0, 0].numpy() == single[0]).mean()
    assert agreement > 0.999


def test_bgr_input_gives_the_rgb_embedding(sam: Sam, image: np.ndarray) -> None:
    rgb = SamPredictor(sam)
    rgb.set_image(image)
    bgr = SamPredictor(sam)
    bgr.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(rgb.get_image_embedding(), bgr.get_image_embedding())


def test_predict_before_set_image(sam: Sam) -> None:
    fresh = SamPredictor(sam)
    assert not fresh.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=BOX)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.get_image_embedding()
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict_torch(None, None, boxes=torch.zeros(1, 4))


def test_reset_image_forgets_the_embedding(sam: Sam) -> None:
    p = SamPredictor(sam)
    # an already-transformed tensor skips the resize; any content will do for this test
    p.set_torch_image(torch.zeros(1, 3, 512, 1024), (256, 512))
    assert p.is_image_set
    assert p.input_size == (512, 1024) and p.original_size == (256, 512)
    p.reset_image()
    assert not p.is_image_set
    with pytest.raises(RuntimeError):
        p.predict(box=BOX)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((64, 64), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((0, 64, 3), np.uint8), "empty"),
    ],
)
def test_bad_images_are_rejected(sam: Sam, bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamPredictor(sam).set_image(bad)


def test_bad_image_arguments(sam: Sam) -> None:
    p = SamPredictor(sam)
    with pytest.raises(TypeError, match="numpy"):
        p.set_image([[[0, 0, 0]]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")
    with pytest.raises(ValueError, match="max"):
        p.set_torch_image(torch.zeros(1, 3, 512, 512), (512, 512))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"point_coords": np.array([[1, 2]])}, "point_labels is missing"),
        ({"point_labels": np.array([1])}, "point_coords is missing"),
        ({"point_coords": np.array([[1, 2], [3, 4]]), "point_labels": np.array([1])}, "one label"),
        ({"point_coords": np.array([1, 2]), "point_labels": np.array([1])}, r"\(N, 2\)"),
        ({"point_coords": np.array([[1, 2]]), "point_labels": np.array([2])}, "foreground"),
        ({"point_coords": np.array([[np.nan, 2]]), "point_labels": np.array([1])}, "NaN"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "empty"),
        ({"box": np.array([1, 2, 3])}, "4 numbers"),
        ({"box": np.array([10, 10, 5, 20])}, "x0 <= x1"),
        ({"mask_input": np.zeros((1, 64, 64))}, "mask_input"),
    ],
)
def test_bad_prompts_are_rejected(
    predictor: SamPredictor, kwargs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)
