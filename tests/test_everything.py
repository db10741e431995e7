"""Segment everything in a region: each object once across tile borders, area limits, region,
cancel; real MobileSAM on a GlaS-like image built here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide

from engine.everything import (
    EverythingCancelledError,
    EverythingResult,
    EverythingSettings,
    point_grid,
    segment_everything,
    tile_fields,
)
from engine.slides import Slide, open_slide
from engine.wsi_predictor import PromptError, WsiSamPredictor
from engine.wsi_sam import WsiSam

# 0.5 um/px (20x); fields at 20x are 1024 px. The region (an L: the top right corner cut out)
# spans two fields, 0..1024 and 776..1800 in x.
WIDTH, HEIGHT = 1800, 1000
ACROSS = (1000.0, 372.0, 120.0, 110.0)  # crosses the first field's right border (x = 1024)
WHOLE = (1416.0, 628.0, 75.0, 65.0)  # only in the second field
LEFT = (384.0, 628.0, 90.0, 70.0)  # only in the first field
SMALL = (128.0, 884.0, 22.0, 22.0)  # 380 um^2: below the minimum area
LARGE = (640.0, 200.0, 190.0, 150.0)  # 22,400 um^2: above the maximum area
OUTSIDE = (1672.0, 116.0, 70.0, 60.0)  # in the cut-out corner, outside the region
GLANDS: list[Gland] = [ACROSS, WHOLE, LEFT, SMALL, LARGE, OUTSIDE]
REGION = shapely_box(0, 0, WIDTH, HEIGHT).difference(shapely_box(1300, 0, WIDTH, 300))
SETTINGS = EverythingSettings(
    points_per_side=4,
    points_per_batch=16,
    magnification=20.0,
    tile_overlap=0.2,
    min_area=1000,
    max_area=15000,
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slide]:
    path = Path(tmp_path_factory.mktemp("everything")) / "glands.tif"
    write_gland_slide(path, WIDTH, HEIGHT, GLANDS)
    with open_slide(path) as opened:
        yield opened


@pytest.fixture(scope="module")
def predictor(fresh_wsi_sam: WsiSam) -> WsiSamPredictor:
    return WsiSamPredictor(fresh_wsi_sam)


@pytest.fixture(scope="module")
def result(predictor: WsiSamPredictor, slide: Slide) -> EverythingResult:
    reports: list[tuple[int, int]] = []
    found = segment_everything(
        predictor,
        slide,
        REGION,
        mode="sam",
        settings=SETTINGS,
        progress=lambda done, total: reports.append((done, total)),
    )
    assert reports == [(1, 2), (2, 2)]
    return found


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    return float(a.intersection(b).area / a.union(b).area)


def _matches(result: EverythingResult, gland: Gland) -> list[float]:
    truth = gland_polygon(gland)
    return [_iou(o.geometry, truth) for o in result.objects if o.geometry.intersects(truth)]


def test_region_is_tiled_by_overlapping_fields(slide: Slide) -> None:
    fields = tile_fields(slide, REGION, 20.0, overlap=0.2)
    assert len(fields) == 2
    (a0, _, a1, _), (b0, _, b1, _) = (f.hr_bounds for f in fields)
    assert a0 <= 0 and b1 >= WIDTH and a1 - b0 >= 0.2 * 1024
    assert point_grid(4)[:, 0].tolist()[:4] == [128.0, 384.0, 640.0, 896.0]
    with pytest.raises(PromptError):
        tile_fields(slide, (5000, 5000, 6000, 6000), 20.0)


def test_an_object_across_a_tile_border_comes_back_once_and_whole(
    result: EverythingResult,
) -> None:
    assert len(result.fields) == 2
    overlaps = _matches(result, ACROSS)
    assert len(overlaps) == 1, overlaps  # one object, not one per tile
    assert overlaps[0] > 0.85  # the whole gland, not the part the first tile saw
    for gland in (WHOLE, LEFT):
        overlaps = _matches(result, gland)
        assert len(overlaps) == 1 and overlaps[0] > 0.85, (gland, overlaps)


def test_area_limits_and_the_region_outline_are_respected(result: EverythingResult) -> None:
    mpp_area = 0.25  # um^2 per px^2
    for obj in result.objects:
        area_um2 = obj.geometry.area * mpp_area
        assert SETTINGS.min_area <= area_um2 <= SETTINGS.max_area
        assert obj.geometry.difference(REGION).area < 1.0
        assert 0.0 <= obj.stability <= 1.0 and obj.score >= SETTINGS.pred_iou_thresh
    assert not any(iou > 0.5 for iou in _matches(result, SMALL))
    assert not any(iou > 0.5 for iou in _matches(result, LARGE))
    assert not _matches(result, OUTSIDE)


def test_without_limits_the_small_and_large_glands_are_found(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    settings = EverythingSettings(points_per_side=4, magnification=20.0)
    found = segment_everything(predictor, slide, shapely_box(0, 0, 1000, 1000), "sam", settings)
    assert max(_matches(found, LARGE)) > 0.85


def test_cancel_stops_without_partial_results(predictor: WsiSamPredictor, slide: Slide) -> None:
    asked: list[int] = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2  # after the first field's batch

    progress: list[int] = []
    with pytest.raises(EverythingCancelledError):
        segment_everything(
            predictor,
            slide,
            REGION,
            mode="sam",
            settings=SETTINGS,
            progress=lambda done, _total: progress.append(done),
            cancel=cancel,
        )
    assert progress == [1]  # it stopped in the second field


def test_wsi_sam_mode_finds_the_gland(predictor: WsiSamPredictor, slide: Slide) -> None:
    settings = EverythingSettings(points_per_side=3, magnification=20.0, min_area=1000)
    region = shapely_box(1024, 300, 1800, 1000)
    found = segment_everything(predictor, slide, region, "wsi-sam", settings)
    assert len(found.fields) == 1
    assert max(_matches(found, WHOLE)) > 0.85
