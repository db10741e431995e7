"""Segmenting real slides from prompts in level-0 pixels, with the field cache."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box as shapely_box
from shapely.geometry import shape

from engine.slides import Slide, open_slide
from engine.wsi_predictor import PromptError, WsiSamPredictor
from engine.wsi_sam import WsiSam

# A box around a tissue fragment of the bundled sample slide (2220 x 2967, 0.499 um/px).
BOX = (900.0, 1300.0, 1100.0, 1500.0)


@pytest.fixture(scope="module")
def slide(sample_slide: Path) -> Iterator[Slide]:
    with open_slide(sample_slide) as opened:
        yield opened


@pytest.fixture(scope="module")
def counted_model(fresh_wsi_sam: WsiSam) -> Iterator[tuple[WsiSam, list[int]]]:
    """The session's fresh WSI-SAM with a counter on its image encoder (whatever the backend)."""
    sam = fresh_wsi_sam.sam
    original = sam.encode_preprocessed
    calls: list[int] = []

    def counting(x):  # type: ignore[no-untyped-def]
        calls.append(int(x.shape[0]))
        return original(x)

    sam.encode_preprocessed = counting  # type: ignore[method-assign]
    yield fresh_wsi_sam, calls
    del sam.encode_preprocessed


@pytest.fixture(scope="module")
def predictor(counted_model: tuple[WsiSam, list[int]]) -> WsiSamPredictor:
    return WsiSamPredictor(counted_model[0])


def test_box_gives_a_valid_polygon_overlapping_the_box_and_reprompts_hit_the_cache(
    predictor: WsiSamPredictor, slide: Slide, counted_model: tuple[WsiSam, list[int]]
) -> None:
    _, calls = counted_model
    before = sum(calls)
    result = predictor.segment(slide, box=BOX, mode="wsi-sam")
    assert result.encoded and sum(calls) - before == 2  # HR and LR patches, one batch
    assert result.geometry is not None and result.geometry.is_valid
    drawn = shapely_box(*BOX)
    overlap = result.geometry.intersection(drawn).area
    assert overlap > 0.3 * result.geometry.area
    assert result.field.hr_magnification == pytest.approx(10.0)
    assert result.mask.shape == (1024, 1024) and result.mask.any()
    assert 0.0 <= result.score <= 1.5

    # a second prompt inside the same field runs only the decoders
    encoded = sum(calls)
    again = predictor.segment(slide, box=(950.0, 1350.0, 1080.0, 1480.0), mode="wsi-sam")
    points = predictor.segment(slide, points=[(1000.0, 1400.0)], mode="sam")
    assert sum(calls) == encoded
    assert not again.encoded and not points.encoded
    assert again.field == result.field and points.field == result.field
    assert predictor.is_cached(slide, box=BOX)


def test_fresh_heads_give_sams_mask(predictor: WsiSamPredictor, slide: Slide) -> None:
    wsi = predictor.segment(slide, box=BOX, mode="wsi-sam")
    sam = predictor.segment(slide, box=BOX, mode="sam")
    assert np.array_equal(wsi.mask, sam.mask)
    assert wsi.score == pytest.approx(sam.score)


def test_sam_mode_encodes_only_the_hr_patch(
    slide: Slide, counted_model: tuple[WsiSam, list[int]]
) -> None:
    model, calls = counted_model
    fresh = WsiSamPredictor(model)
    before = sum(calls)
    fresh.segment(slide, box=(300.0, 300.0, 500.0, 500.0), mode="sam")
    assert sum(calls) - before == 1
    fresh.segment(slide, box=(300.0, 300.0, 500.0, 500.0), mode="wsi-sam")
    assert sum(calls) - before == 2  # the LR patch is added to the cached field


def test_single_point_gives_ranked_candidates(predictor: WsiSamPredictor, slide: Slide) -> None:
    result = predictor.segment(slide, points=[(1000.0, 1400.0)], labels=[1], mode="wsi-sam")
    assert len(result.candidates) == 3
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert result.score == scores[0]
    two = predictor.segment(slide, points=[(1000.0, 1400.0), (700.0, 1400.0)], labels=[1, 0])
    assert two.candidates == []


def test_masks_never_leave_the_slide(predictor: WsiSamPredictor, slide: Slide) -> None:
    width, height = slide.dimensions
    result = predictor.segment(slide, box=(width - 150.0, -50.0, width + 80.0, 120.0), mode="sam")
    assert result.geometry is not None  # the box covers tissue at the slide's corner
    minx, miny, maxx, maxy = result.geometry.bounds
    assert minx >= 0 and miny >= 0 and maxx <= width and maxy <= height
    # the mask reaches the slide's edges, so the clipping is what keeps it inside
    assert miny == 0 or maxx == width


def test_large_objects_step_the_magnification_down(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    result = predictor.segment(slide, box=(100.0, 100.0, 2100.0, 2000.0), mode="sam")
    # 2000 level-0 px = 1000 HR px at 10x (does not fit with a margin) -> 5x
    assert result.field.hr_magnification == pytest.approx(5.0)
    fixed = WsiSamPredictor(predictor.model, adaptive=False)
    assert not fixed.is_cached(slide, box=(100.0, 100.0, 2100.0, 2000.0))
    fixed_result = fixed.segment(slide, box=(100.0, 100.0, 2100.0, 2000.0), mode="sam")
    assert fixed_result.field.hr_magnification == pytest.approx(10.0)
    fixed.clear_cache()
    assert not fixed.is_cached(slide, box=(100.0, 100.0, 2100.0, 2000.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box": (5000.0, 5000.0, 5100.0, 5100.0)}, "outside the slide"),
        ({"box": (100.0, 100.0, 50.0, 200.0)}, "empty"),
        ({"box": (1.0, 2.0, 3.0)}, "four finite numbers"),
        ({"points": [(100.0, 100.0)], "labels": [0]}, "positive point"),
        ({"points": [(100.0, 100.0)], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [(-10.0, 100.0)]}, "outside the slide"),
        ({}, "needs a box"),
    ],
)
def test_bad_prompts_are_refused_clearly(
    predictor: WsiSamPredictor, slide: Slide, kwargs: dict, message: str
) -> None:
    with pytest.raises(PromptError, match=message):
        predictor.segment(slide, **kwargs)


def test_unknown_mode(predictor: WsiSamPredictor, slide: Slide) -> None:
    with pytest.raises(ValueError, match="mode"):
        predictor.segment(slide, box=BOX, mode="medsam")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sam", "wsi-sam"])
def test_segment_cli_writes_qupath_geojson(sample_slide: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / f"{mode}.geojson"
    box = ",".join(str(int(v)) for v in BOX)
    done = subprocess.run(
        [sys.executable, "-m", "app", "segment", str(sample_slide), "--box", box,
         "--mode", mode, "--class", "Tumor", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "time" in done.stdout
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 1
    feature = data["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tumor"
    geometry = shape(feature["geometry"])
    assert geometry.is_valid and geometry.intersects(shapely_box(*BOX))

    from qupath_bridge import read_geojson

    (annotation,) = read_geojson(out)
    assert annotation.geometry.equals(geometry)


def test_segment_cli_reports_bad_input(sample_slide: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a slide")
    done = subprocess.run(
        [sys.executable, "-m", "app", "segment", str(bad), "--box", "1,1,5,5",
         "--out", str(tmp_path / "x.geojson")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "broken.svs" in done.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_preencoded_view_centre_answers_the_first_prompt_from_the_cache(
    counted_model: tuple[WsiSam, list[int]], slide: Slide
) -> None:
    model, calls = counted_model
    predictor = WsiSamPredictor(model)
    width, height = slide.dimensions
    cx, cy = width / 2, height / 2
    chosen = predictor.field_at(slide, cx, cy, extent=300)
    before = sum(calls)
    assert predictor.preencode(slide, chosen, "hr")
    assert not predictor.is_field_cached(slide, chosen)
    assert predictor.is_field_cached(slide, chosen, need_lr=False)
    assert predictor.preencode(slide, chosen, "lr")
    assert not predictor.preencode(slide, chosen, "lr")  # already there: nothing runs
    assert sum(calls) - before == 2
    result = predictor.segment(slide, box=(cx - 160, cy - 130, cx + 140, cy + 150))
    assert not result.encoded and result.field == chosen
    clicked = predictor.segment(slide, points=[(cx + 20, cy - 10)])
    assert not clicked.encoded and clicked.field == chosen
    assert sum(calls) - before == 2


def test_static_head_features_are_cached_per_field_and_heads(
    counted_model: tuple[WsiSam, list[int]], slide: Slide, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = counted_model
    predictor = WsiSamPredictor(model)
    computed: list[int] = []
    original = model.hr_static_features

    def counting(hr):  # type: ignore[no-untyped-def]
        computed.append(1)
        return original(hr)

    monkeypatch.setattr(model, "hr_static_features", counting)
    first = predictor.segment(slide, box=BOX, mode="wsi-sam")
    again = predictor.segment(slide, box=BOX, mode="wsi-sam")
    assert len(computed) == 1 and not again.encoded
    assert np.array_equal(first.mask, again.mask)
    predictor.segment(slide, box=BOX, mode="sam")  # plain SAM needs no head features
    assert len(computed) == 1
    monkeypatch.setattr(model, "heads_version", model.heads_version + 1)  # new heads loaded
    predictor.segment(slide, box=BOX, mode="wsi-sam")
    assert len(computed) == 2
