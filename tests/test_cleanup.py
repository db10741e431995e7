"""Mask cleanup in physical units, and provenance written with an object to GeoJSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry import box as shapely_box

from engine.cleanup import (
    CleanupSettings,
    area_to_pixels,
    clean_geometry,
    length_to_pixels,
    pixels_to_area,
)
from engine.patches import Field
from engine.provenance import Provenance, read_provenance
from qupath_bridge import Annotation, read_geojson, write_geojson

MPP = (0.5, 0.5)  # 0.25 um^2 per px^2


def _um2(geometry) -> float:  # type: ignore[no-untyped-def]
    return float(geometry.area) * MPP[0] * MPP[1]


def test_units() -> None:
    assert area_to_pixels(100.0, MPP) == pytest.approx(400.0)
    assert pixels_to_area(400.0, MPP) == pytest.approx(100.0)
    assert length_to_pixels(10.0, MPP) == pytest.approx(20.0)
    assert area_to_pixels(100.0, None) == 100.0  # px^2 without a pixel size
    with pytest.raises(ValueError):
        CleanupSettings(fill_holes_below=-1)


def test_fill_holes_below_an_area_in_um2() -> None:
    # a 200 x 200 px square (10,000 um^2) with a 10 x 10 px hole (25 um^2) and a 40 x 40 one (400)
    shell = shapely_box(0, 0, 200, 200)
    small, large = shapely_box(20, 20, 30, 30), shapely_box(100, 100, 140, 140)
    polygon = Polygon(shell.exterior, [small.exterior, large.exterior])
    assert _um2(polygon) == pytest.approx(10000 - 25 - 400)
    cleaned = clean_geometry(polygon, CleanupSettings(fill_holes_below=100.0), MPP)
    assert cleaned is not None and len(cleaned.interiors) == 1
    assert _um2(cleaned) == pytest.approx(10000 - 400)
    all_filled = clean_geometry(polygon, CleanupSettings(fill_holes_below=math.inf), MPP)
    assert _um2(all_filled) == pytest.approx(10000)


def test_drop_small_parts_and_keep_largest() -> None:
    big, medium, tiny = (
        shapely_box(0, 0, 100, 100),
        shapely_box(200, 0, 260, 60),
        shapely_box(400, 0, 404, 404),
    )
    multi = MultiPolygon([big, medium, tiny])  # 2500, 900 and 404 um^2
    dropped = clean_geometry(multi, CleanupSettings(drop_parts_below=500.0), MPP)
    assert isinstance(dropped, MultiPolygon) and len(dropped.geoms) == 2
    assert _um2(dropped) == pytest.approx(2500 + 900)
    largest = clean_geometry(multi, CleanupSettings(keep_largest_only=True), MPP)
    assert isinstance(largest, Polygon) and _um2(largest) == pytest.approx(2500)
    assert clean_geometry(multi, CleanupSettings(drop_parts_below=1e6), MPP) is None
    untouched = clean_geometry(multi, CleanupSettings(), MPP)
    assert untouched is not None and _um2(untouched) == pytest.approx(_um2(multi))


def test_expand_and_contract_by_a_distance_in_um() -> None:
    disc = Point(0, 0).buffer(100, quad_segs=64)  # r = 100 px = 50 um
    grown = clean_geometry(disc, CleanupSettings(expand=5.0), MPP)  # + 5 um = + 10 px
    shrunk = clean_geometry(disc, CleanupSettings(expand=-5.0), MPP)
    assert _um2(grown) == pytest.approx(math.pi * 55**2, rel=0.01)
    assert _um2(shrunk) == pytest.approx(math.pi * 45**2, rel=0.01)
    # without a pixel size the distance is in pixels
    grown_px = clean_geometry(disc, CleanupSettings(expand=5.0), None)
    assert grown_px is not None and grown_px.area == pytest.approx(math.pi * 105**2, rel=0.01)


def test_smoothing_removes_a_spur_and_fills_a_notch_but_keeps_the_body() -> None:
    body = shapely_box(0, 0, 200, 200)
    spur = shapely_box(200, 95, 260, 105)  # 10 px (5 um) wide
    notch = shapely_box(0, 95, 30, 105)
    jagged = body.union(spur).difference(notch)
    smooth = clean_geometry(jagged, CleanupSettings(smooth=4.0), MPP)  # 8 px radius
    assert smooth is not None
    assert smooth.bounds[2] < 210  # the spur is gone (it reached x = 260)
    assert smooth.contains(Point(10, 100))  # the notch is filled
    assert _um2(smooth) == pytest.approx(_um2(body), rel=0.02)


def test_provenance_goes_to_geojson_as_measurements_and_metadata(tmp_path: Path) -> None:
    class Model:
        def __init__(self) -> None:
            self.metadata = {"path": str(tmp_path / "heads.pt")}

    (tmp_path / "heads.pt").write_bytes(b"heads")
    field = Field((512.0, 512.0), 2.0, 10.0)
    prov = Provenance.create(
        Model(), "wsi-sam", "box", field=field, predicted_iou=0.93, box=(1, 2, 30, 40)
    )
    assert prov.heads == "heads.pt" and len(prov.heads_sha256) == 64
    annotation = Annotation(geometry=shapely_box(0, 0, 10, 10), measurements={"Area": 100.0})
    prov.apply(annotation.measurements, annotation.metadata)
    write_geojson(tmp_path / "out.geojson", [annotation])
    feature = json.loads((tmp_path / "out.geojson").read_text())["features"][0]
    measurements = feature["properties"]["measurements"]
    assert measurements["WSI-SAM predicted IoU"] == pytest.approx(0.93)
    assert measurements["WSI-SAM field magnification"] == 10.0 and measurements["Area"] == 100.0
    metadata = feature["properties"]["metadata"]
    assert metadata["wsi-sam model"] == "WSI-SAM" and metadata["wsi-sam prompt kind"] == "box"
    assert json.loads(metadata["wsi-sam prompt"]) == {"box": [1.0, 2.0, 30.0, 40.0]}
    back = read_geojson(tmp_path / "out.geojson")[0]
    again = read_provenance(back.measurements, back.metadata)
    assert again is not None and again.predicted_iou == pytest.approx(0.93)
    assert again.heads_sha256 == prov.heads_sha256 and again.time == prov.time
    # plain SAM has no heads
    sam = Provenance.create(
        Model(), "sam", "points", field=field, predicted_iou=0.5, points=[(3, 4)]
    )
    assert (sam.model, sam.heads, sam.prompt["labels"]) == ("SAM", "none", [1])
