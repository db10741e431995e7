"""Object features: measurements in um, grouping by field, pooled HR embedding and LR context
with the real encoder on a GlaS-like image built here, the cache, objects refused by name."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from shapely.affinity import scale as shapely_scale
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide

from engine.objects.classifier import ObjectClassifier
from engine.objects.features import (
    FEATURE_SETS,
    FeaturesCancelledError,
    FeatureSettings,
    ObjectError,
    assign_fields,
    feature_dimensions,
    measurement_features,
    object_features,
)
from engine.objects.measurements import (
    MEASUREMENT_NAMES,
    hed_optical_density,
    shape_measurements,
    stain_means,
)
from engine.slides import Slide, open_slide
from engine.wsi_predictor import WsiSamPredictor
from engine.wsi_sam import WsiSam

# --- measurements ------------------------------------------------------------------------------


def test_a_disc_is_round_solid_and_not_eccentric() -> None:
    disc = Point(100, 100).buffer(50, quad_segs=256)
    area, perimeter, circularity, solidity, eccentricity = shape_measurements(disc, (0.5, 0.5))
    assert area == pytest.approx(math.pi * 25**2, rel=1e-3)  # radius 25 um
    assert perimeter == pytest.approx(2 * math.pi * 25, rel=1e-3)
    assert circularity == pytest.approx(1.0, abs=1e-3)
    assert solidity == pytest.approx(1.0, abs=1e-6)
    assert eccentricity < 0.01


def test_an_ellipse_has_its_eccentricity_and_an_l_its_solidity() -> None:
    ellipse = shapely_scale(Point(0, 0).buffer(1.0, quad_segs=256), 80, 60, origin=(0, 0))
    values = shape_measurements(ellipse, None)  # pixels without a pixel size
    assert values[0] == pytest.approx(math.pi * 80 * 60, rel=1e-3)
    assert values[4] == pytest.approx(math.sqrt(1 - (60 / 80) ** 2), abs=1e-3)
    rotated = shapely_scale(Point(0, 0).buffer(1.0, quad_segs=256), 60, 80, origin=(0, 0))
    assert shape_measurements(rotated, None)[4] == pytest.approx(values[4], abs=1e-3)
    ell = shapely_box(0, 0, 20, 20).difference(shapely_box(10, 10, 20, 20))
    assert shape_measurements(ell, None)[3] == pytest.approx(300 / 350)


def test_holes_are_not_area_and_parts_add_up() -> None:
    ring = shapely_box(0, 0, 10, 10).difference(shapely_box(3, 3, 7, 7))
    area, perimeter, *_ = shape_measurements(ring, None)
    assert area == pytest.approx(84)
    assert perimeter == pytest.approx(40 + 16)
    two = MultiPolygon([shapely_box(0, 0, 2, 2), shapely_box(10, 0, 12, 2)])
    assert shape_measurements(two, None)[0] == pytest.approx(8)


def test_haematoxylin_is_higher_in_purple_nuclei_than_in_pink_stroma() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = (95, 45, 130)  # nuclei
    image[1] = (232, 188, 208)  # stroma
    hed = hed_optical_density(image)
    nuclei = stain_means(hed, np.array([[True, True], [False, False]]))
    stroma = stain_means(hed, np.array([[False, False], [True, True]]))
    assert nuclei[0] > 5 * stroma[0]
    assert np.isnan(stain_means(hed, np.zeros((2, 2), bool))).all()


def test_measurement_columns_are_finite_with_sizes_on_a_log_scale() -> None:
    values = np.array([[999.0, 99.0, 0.5, 0.9, 0.3, np.nan, 0.1]])
    out = measurement_features(values)
    assert out.dtype == np.float32 and out.shape == (1, len(MEASUREMENT_NAMES))
    assert out[0, :2] == pytest.approx([3.0, 2.0])
    assert out[0, 5] == 0.0
    assert [feature_dimensions(s) for s in FEATURE_SETS] == [7, 263, 519]


# --- fields ------------------------------------------------------------------------------------

# 0.5 um/px: 20x; fields at 20x are 1024 px wide


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slide]:
    path = Path(tmp_path_factory.mktemp("objects")) / "wide.tif"
    write_gland_slide(path, 2000, 1000, [])
    with open_slide(path) as opened:
        yield opened


def test_objects_are_grouped_by_a_field_that_holds_them_whole(wide: Slide) -> None:
    small = [
        shapely_box(x, y, x + 30, y + 30).bounds for x, y in [(10, 10), (1900, 900), (990, 500)]
    ]
    large = shapely_box(300, 100, 1700, 900).bounds  # wider than a field: its own field
    bounds = np.array([*small, large])
    fields, index = assign_fields(wide, bounds, 20.0, default_magnification=20.0)
    # three tiles along x (centres 512, 1000, 1488), one row; the large object is centred on
    # the middle one (and pooled over the part inside it)
    assert [f.centre for f in fields] == [(512.0, 500.0), (1000.0, 500.0), (1488.0, 500.0)]
    assert list(index) == [0, 2, 1, 1]
    for box, i in zip(bounds[:3], index[:3], strict=True):
        x0, y0, x1, y1 = fields[i].hr_bounds
        assert x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1
    # an object's field does not depend on the other objects
    alone, index_alone = assign_fields(wide, bounds[2:3], 20.0, default_magnification=20.0)
    assert alone[index_alone[0]] == fields[index[2]]


# --- features with the real encoder ------------------------------------------------------------

# one field: 1024 x 1000 pixels
GLANDS: list[Gland] = [
    (200.0, 200.0, 110.0, 80.0),
    (520.0, 560.0, 90.0, 100.0),
    (820.0, 220.0, 120.0, 90.0),
    (830.0, 820.0, 100.0, 80.0),
]
# pieces of stroma between the glands (not objects)
STROMA = [Point(x, y).buffer(50) for x, y in [(500, 150), (200, 800), (130, 500), (900, 520)]]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slide]:
    path = Path(tmp_path_factory.mktemp("objects")) / "glands.tif"
    write_gland_slide(path, 1024, 1000, GLANDS)
    with open_slide(path) as opened:
        yield opened


@pytest.fixture(scope="module")
def predictor(fresh_wsi_sam: WsiSam) -> WsiSamPredictor:
    return WsiSamPredictor(fresh_wsi_sam, magnification=20.0, default_magnification=20.0)


def test_features_have_their_shapes_and_come_back_from_the_cache(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    outlines = [gland_polygon(g) for g in GLANDS] + STROMA + [Point(330, 420).buffer(0.2)]
    reports: list[tuple[int, int]] = []
    first = object_features(
        predictor, slide, outlines, progress=lambda done, total: reports.append((done, total))
    )
    n = len(outlines)
    assert first.hr.shape == (n, 256) and first.lr is not None and first.lr.shape == (n, 256)
    assert first.measurements.shape == (n, len(MEASUREMENT_NAMES))
    assert np.isfinite(first.hr).all() and np.isfinite(first.lr).all()
    assert np.isfinite(first.measurements).all()
    assert reports[-1] == (len(first.fields), len(first.fields)) == (1, 1)
    # the sub-pixel object still gets the cell it lies in
    assert np.abs(first.hr[-1]).sum() > 0
    # area in um^2 (0.5 um/px)
    assert first.measurements[0, 0] == pytest.approx(math.pi * 110 * 80 * 0.25, rel=0.01)
    # glands are haematoxylin-rich, stroma is not
    assert first.measurements[:4, 5].min() > first.measurements[4:8, 5].max()
    calls = predictor.encoder_calls
    again = object_features(predictor, slide, outlines[::-1])
    assert predictor.encoder_calls == calls  # encodes and features both cached
    np.testing.assert_array_equal(again.hr[::-1], first.hr)
    assert again.lr is not None
    np.testing.assert_array_equal(again.lr[::-1], first.lr)
    for name in FEATURE_SETS:
        assert first.matrix(name).shape == (n, feature_dimensions(name))


def test_a_classifier_on_these_features_tells_glands_from_stroma(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    glands = [gland_polygon(g) for g in GLANDS]
    features = object_features(predictor, slide, glands + STROMA)
    x = features.matrix("hr+lr+measurements")
    train = [0, 1, 4, 5]
    test = [2, 3, 6, 7]
    labels = ["Gland", "Gland", "Ignore*", "Ignore*"]
    classifier = ObjectClassifier.train(x[train], labels, feature_set="hr+lr+measurements")
    predicted = classifier.predict(x[test])
    assert list(predicted.classes) == ["Gland", "Gland", "Ignore*", "Ignore*"]
    assert list(predicted.ignored()) == [False, False, True, True]
    assert ((predicted.probability > 0.5) & (predicted.probability <= 1)).all()


def test_without_context_only_hr_patches_are_encoded(fresh_wsi_sam: WsiSam, slide: Slide) -> None:
    predictor = WsiSamPredictor(fresh_wsi_sam, magnification=20.0, default_magnification=20.0)
    features = object_features(predictor, slide, STROMA[:2], context=False)
    assert features.lr is None and predictor.encoder_calls == 1
    with pytest.raises(ValueError, match="no LR context"):
        features.matrix("hr+lr+measurements")
    assert features.matrix("hr+measurements").shape == (2, 263)


def test_objects_outside_the_slide_are_refused_by_name(
    predictor: WsiSamPredictor, slide: Slide
) -> None:
    outlines = [STROMA[0], shapely_box(1500, 100, 1600, 200), shapely_box(-300, -300, -10, -10)]
    with pytest.raises(ObjectError, match=r"2 objects lie outside.*far-away, object 3"):
        object_features(predictor, slide, outlines, names=["ok", "far-away", ""])
    with pytest.raises(ObjectError, match=r"without an area.*the line"):
        object_features(
            predictor, slide, [Polygon(), STROMA[0]], names=["the line", "ok"], context=False
        )


def test_cancel_stops_between_fields(predictor: WsiSamPredictor, slide: Slide) -> None:
    with pytest.raises(FeaturesCancelledError):
        object_features(predictor, slide, STROMA, cancel=lambda: True)
    empty = object_features(predictor, slide, [], settings=FeatureSettings(context_cells=1))
    assert len(empty) == 0
