"""The windowed upsampling of low-res logits equals thresholding the whole field's upsampling,
and the polygon traced on the window equals the whole field's within a pixel."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from torch.nn import functional as F

from engine.geometry import mask_to_geometry
from engine.mask_window import upsample_window


def _full(logits: torch.Tensor, size: int = 1024) -> np.ndarray:
    up = F.interpolate(logits[None, None], (size, size), mode="bilinear", align_corners=False)
    return (up[0, 0] > 0).numpy()


def _blob_logits(seed: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    """Smooth logits of a lumpy object (with a hole) at ``centre`` of a 256x256 map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    angle = np.arctan2(yy - centre[1], xx - centre[0])
    wobble = sum(rng.uniform(0, 3) * np.sin(k * angle + rng.uniform(0, 6)) for k in (2, 3, 5))
    distance = np.hypot(xx - centre[0], yy - centre[1])
    logits = (radius + wobble - distance) * rng.uniform(0.5, 3.0)
    hole = np.hypot(xx - centre[0] - 2, yy - centre[1] + 1) < radius / 4
    logits[hole] = -5.0
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    return torch.from_numpy(logits.astype(np.float32))


CASES = [
    (0, (128.0, 128.0), 30.0),
    (1, (3.0, 200.0), 20.0),  # touches the left edge
    (2, (250.0, 252.0), 12.0),  # the bottom-right corner
    (3, (60.0, 10.0), 4.0),  # small, near the top
    (4, (128.0, 128.0), 400.0),  # covers the whole field
]


@pytest.mark.parametrize(("seed", "centre", "radius"), CASES)
def test_window_equals_the_whole_upsampling(seed: int, centre: tuple, radius: float) -> None:
    logits = _blob_logits(seed, centre, radius)
    window = upsample_window(logits, 1024)
    assert window is not None
    full = _full(logits)
    assert np.array_equal(window.full(), full)
    # and the window is small when the object is
    if radius < 100:
        assert window.mask.size < 0.5 * full.size


def test_nothing_positive_gives_no_window() -> None:
    assert upsample_window(torch.full((256, 256), -3.0)) is None
    # a single positive logit too weak to show after upsampling still gives an (empty) window
    logits = torch.full((256, 256), -10.0)
    logits[100, 100] = 0.01
    window = upsample_window(logits)
    assert window is not None and np.array_equal(window.full(), _full(logits))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        upsample_window(torch.zeros(1, 256, 256))
    with pytest.raises(ValueError):
        upsample_window(torch.zeros(256, 256), 1000)


@pytest.mark.parametrize(("seed", "centre", "radius"), CASES[:4])
def test_window_polygon_equals_the_whole_fields_within_a_pixel(
    seed: int, centre: tuple, radius: float
) -> None:
    logits = _blob_logits(seed, centre, radius)
    window = upsample_window(logits, 1024)
    assert window is not None
    scale, origin = 4.0, (5000.0, 7000.0)
    whole = mask_to_geometry(_full(logits), scale=scale, offset=origin, min_area=4 * scale**2)
    windowed = mask_to_geometry(
        window.mask,
        scale=scale,
        offset=(origin[0] + window.col * scale, origin[1] + window.row * scale),
        min_area=4 * scale**2,
    )
    assert whole is not None and windowed is not None
    # one HR pixel is `scale` level-0 pixels
    assert shapely.hausdorff_distance(whole, windowed) <= scale
    assert abs(whole.area - windowed.area) <= 1e-6 * whole.area + scale**2


def test_predictor_polygon_equals_the_whole_field_tracing(sample_slide) -> None:  # type: ignore[no-untyped-def]
    """WsiSamPredictor.segment (windowed) against the whole-field path it replaced."""
    import engine
    from engine.wsi_predictor import WsiSamPredictor
    from engine.wsi_sam import postprocess_logits

    model = engine.load_wsi_sam(heads="none", device="cpu", backend="torch")
    predictor = WsiSamPredictor(model)
    with engine.open_slide(sample_slide) as slide:
        for box, points in [((900, 1300, 1150, 1520), None), (None, [(1000.0, 1400.0)])]:
            result = predictor.segment(slide, box=box, points=points, mode="sam")
            chosen = result.field
            entry = predictor._cache[(predictor._slide_key(slide), chosen.key)]
            from engine.wsi_predictor import _validate_prompt

            prompts = predictor._patch_prompts(chosen, _validate_prompt(slide, box, points, None))
            logits, iou = predictor._decode(entry, prompts, "sam", result.candidates != [])
            best = int(torch.argmax(iou[0]))
            full = (postprocess_logits(logits)[0, best] > 0).numpy()
            full &= WsiSamPredictor._inside_slide(slide, chosen)
            assert np.array_equal(result.mask, full)
            reference = WsiSamPredictor._to_geometry(full, chosen)
            assert reference is not None and result.geometry is not None
            tolerance = chosen.hr_downsample  # one HR pixel
            assert shapely.hausdorff_distance(reference, result.geometry) <= tolerance
