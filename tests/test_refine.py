"""Refining existing outlines with the real MobileSAM on a GlaS-like image built here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import Point
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide

from engine.refine import (
    RefineCancelledError,
    mask_prompt_logits,
    refine,
    refine_field,
    refine_many,
)
from engine.slides import Slide, open_slide
from engine.wsi_predictor import PromptError, WsiSamPredictor
from engine.wsi_sam import WsiSam

GLANDS: list[Gland] = [(400.0, 300.0, 120.0, 80.0), (700.0, 520.0, 90.0, 110.0)]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slide]:
    path = Path(tmp_path_factory.mktemp("refine")) / "glands.tif"
    write_gland_slide(path, 1000, 800, GLANDS)
    with open_slide(path) as opened:
        yield opened


@pytest.fixture(scope="module")
def predictor(fresh_wsi_sam: WsiSam) -> WsiSamPredictor:
    return WsiSamPredictor(fresh_wsi_sam)


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    return float(a.intersection(b).area / a.union(b).area)


@pytest.mark.parametrize("mode", ["sam", "wsi-sam"])
def test_a_dilated_outline_is_pulled_onto_the_gland(
    predictor: WsiSamPredictor, slide: Slide, mode: str
) -> None:
    truth = gland_polygon(GLANDS[0])
    dilated = truth.buffer(40)
    before = _iou(dilated, truth)
    result = refine(predictor, slide, dilated, mode=mode)
    assert result.refined and result.message == ""
    assert result.field is not None and result.field.hr_magnification == pytest.approx(10.0)
    after = _iou(result.geometry, truth)
    assert before < 0.6 and after > 0.9 and after > before + 0.3
    assert 0.0 < result.score <= 1.5


def test_the_mask_prompt_is_the_outline_on_the_hr_patch(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    outline = gland_polygon(GLANDS[1])
    chosen = refine_field(predictor, slide, outline)
    assert chosen is not None
    logits = mask_prompt_logits(outline, chosen)
    assert logits.shape == (1, 1, 256, 256)
    # the gland's centre is inside (positive logit), the field's corner outside
    cx, cy = chosen.level0_to_hr([[700.0, 520.0]])[0] / 4
    assert logits[0, 0, int(cy), int(cx)] > 5 and logits[0, 0, 0, 0] < -5


def test_extra_negative_points_remove_what_they_mark(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    # an outline around both glands; a negative point on the second keeps only the first
    both = gland_polygon(GLANDS[0]).union(gland_polygon(GLANDS[1])).convex_hull
    result = refine(predictor, slide, both, points=[(700.0, 520.0)], labels=[0], mode="sam")
    assert result.refined
    assert not result.geometry.contains(Point(700, 520))


def test_an_outline_too_large_for_any_field_is_left_as_it_was(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    # at the lowest magnification allowed (10x: 2 px per HR pixel) a field fits about 1640 px
    huge = shapely_box(-500, -500, 1500, 1300)
    assert refine_field(predictor, slide, huge, min_magnification=10.0) is None
    result = refine(predictor, slide, huge, mode="sam", min_magnification=10.0)
    assert not result.refined and result.geometry.equals(huge)
    assert "too large" in result.message
    # a smaller minimum magnification lets it be refined at 5x
    chosen = refine_field(predictor, slide, huge, min_magnification=5.0)
    assert chosen is not None and chosen.hr_magnification == pytest.approx(5.0)


def test_refine_many_reports_progress_and_cancels_without_results(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    outlines = [gland_polygon(g).buffer(30) for g in GLANDS] + [Point(5, 5)]
    done: list[tuple[int, int]] = []
    results = refine_many(
        predictor, slide, outlines, "sam", progress=lambda d, t: done.append((d, t))
    )
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert [r.refined for r in results] == [True, True, False]  # a point has no area
    for result, gland in zip(results, GLANDS, strict=False):
        assert _iou(result.geometry, gland_polygon(gland)) > 0.9
    with pytest.raises(RefineCancelledError):
        refine_many(predictor, slide, outlines, "sam", cancel=lambda: True)
    with pytest.raises(PromptError):
        refine(predictor, slide, Point(5, 5))
