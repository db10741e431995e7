"""QuPath GeoJSON in and out: real QuPath exports, every format variant, and bad input."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import shape

from qupath_bridge import (
    REPAIRED_METADATA_KEY,
    Annotation,
    GeoJSONError,
    GeometryRepairedWarning,
    PathClass,
    read_geojson,
    to_geojson_obj,
    write_geojson,
)
from qupath_bridge.geojson import parse_path_class

DATA = Path(__file__).parent / "data" / "qupath"
REAL_GEOJSON = sorted(
    p
    for p in DATA.rglob("*")
    if p.suffix in (".geojson", ".json") and not p.name.startswith(("classes", "derived-class"))
)
LEGACY_TYPE_IDS = {"PathAnnotationObject", "PathDetectionObject", "PathCellObject"}


def assert_same_annotation(a: Annotation, b: Annotation, tolerance: float = 1e-9) -> None:
    """Equal up to float precision in the geometry; NaN measurements compare equal."""
    assert a.id == b.id
    assert a.object_type == b.object_type
    assert a.path_class == b.path_class
    assert a.name == b.name
    assert a.locked == b.locked
    assert a.metadata == b.metadata
    assert a.extra_properties == b.extra_properties
    assert a.geometry.geom_type == b.geometry.geom_type
    assert a.geometry.equals_exact(b.geometry, tolerance)
    if a.nucleus_geometry is None:
        assert b.nucleus_geometry is None
    else:
        assert b.nucleus_geometry is not None
        assert a.nucleus_geometry.equals_exact(b.nucleus_geometry, tolerance)
    assert a.measurements.keys() == b.measurements.keys()
    for key, value in a.measurements.items():
        other = b.measurements[key]
        assert (math.isnan(value) and math.isnan(other)) or value == other, key


def assert_same_annotations(first: list[Annotation], second: list[Annotation]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert_same_annotation(a, b)


def raw_features(path: Path) -> list[dict[str, Any]]:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(obj, list):
        return obj
    if obj.get("type") == "FeatureCollection":
        return list(obj["features"])
    if obj.get("type") == "Feature":
        return [obj]
    return [{"type": "Feature", "geometry": obj, "properties": {}}]


# ----------------------------------------------------------------------------- real files


def test_all_real_files_are_found() -> None:
    assert len(REAL_GEOJSON) == 9


@pytest.mark.parametrize("path", REAL_GEOJSON, ids=lambda p: p.name)
def test_real_file_round_trip(path: Path, tmp_path: Path) -> None:
    annotations = read_geojson(path)
    out = tmp_path / "out.geojson"
    write_geojson(out, annotations)
    again = read_geojson(out)
    assert_same_annotations(annotations, again)


@pytest.mark.parametrize("path", REAL_GEOJSON, ids=lambda p: p.name)
def test_real_file_matches_source(path: Path) -> None:
    """What the bridge reads (and writes back) is what QuPath wrote: ids, names, classes,
    object types and coordinates."""
    features = raw_features(path)
    annotations = read_geojson(path)
    written = to_geojson_obj(annotations)["features"]
    assert len(annotations) == len(features) == len(written)
    for feature, annotation, out in zip(features, annotations, written, strict=True):
        properties = feature.get("properties") or {}
        raw_id = feature.get("id")
        if raw_id is not None and raw_id not in LEGACY_TYPE_IDS:
            assert annotation.id == raw_id == out["id"]
        assert annotation.name == properties.get("name")
        assert out["properties"].get("name") == properties.get("name")
        classification = properties.get("classification")
        if classification is None:
            assert annotation.path_class is None
        else:
            assert annotation.path_class is not None
            assert annotation.path_class.name == classification["name"]
            assert out["properties"]["classification"]["name"] == classification["name"]
        expected_type = properties.get("objectType", "annotation")
        assert out["properties"]["objectType"] == expected_type
        source_geometry = shape(feature["geometry"])
        assert shape(out["geometry"]).equals_exact(source_geometry, 1e-9)
        for key in ("color", "isLocked"):
            if properties.get(key):
                assert out["properties"][key] == properties[key]


def test_qupath_04_cells_measurements_and_lock() -> None:
    annotations = read_geojson(DATA / "CosciaLab__Qupath_to_LMD/geojson/Single_cells.geojson")
    cells = [a for a in annotations if a.object_type == "cell"]
    assert len(cells) == 121
    assert all(len(a.measurements) > 10 for a in cells)
    assert cells[0].measurements["Cell: Area"] == 113.0
    first = annotations[0]
    assert first.locked is True
    assert first.path_class == PathClass(("class_1",), (3, 128, 17))


def test_detections_stay_detections() -> None:
    path = DATA / "CosciaLab__Qupath_to_LMD/geojson/cellpose_detections_CD163_CD31_CDH1.geojson"
    kinds = [a.object_type for a in read_geojson(path)]
    assert kinds.count("detection") == 217
    assert kinds.count("annotation") == 4


def test_qupath_02_list_with_colorrgb_and_measurement_list() -> None:
    annotations = read_geojson(DATA / "choosehappy__HistoQC/geojson_example.json")
    assert [a.object_type for a in annotations] == ["annotation", "annotation"]
    # -3670016 is QuPath's packed ARGB for Tumor's (200, 0, 0)
    assert annotations[0].path_class == PathClass(("Tumor",), (200, 0, 0))
    assert annotations[0].geometry.geom_type == "MultiPolygon"
    # 0.2's type-name ids are not object ids: each object gets a fresh UUID
    assert annotations[0].id != "PathAnnotationObject"
    assert len({a.id for a in annotations}) == 2
    out = to_geojson_obj(annotations)["features"][0]
    assert out["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}


def test_polygon_with_hole_keeps_hole() -> None:
    (annotation,) = read_geojson(DATA / "choosehappy__HistoQC/holed.geojson")
    assert annotation.id == "2aa7e31c-8437-499d-ba61-88aacd9a2c3f"
    assert len(annotation.geometry.interiors) == 1
    out = to_geojson_obj([annotation])["features"][0]["geometry"]
    assert len(out["coordinates"]) == 2


def test_bare_geometry_and_multipolygon_with_holes() -> None:
    path = DATA / "qupath__qupath-test-resources/polygon.geojson"
    (annotation,) = read_geojson(path)
    assert annotation.object_type == "annotation"
    assert annotation.geometry.geom_type == "MultiPolygon"
    raw = json.loads(path.read_text())["coordinates"]
    holes = sum(len(polygon) - 1 for polygon in raw)
    assert holes > 0
    assert sum(len(p.interiors) for p in annotation.geometry.geoms) == holes


def test_object_colour_kept_beside_class_colour() -> None:
    annotations = read_geojson(DATA / "CosciaLab__Qupath_to_LMD/geojson/objects_compact.geojson")
    coloured = [a for a in annotations if "color" in a.extra_properties]
    assert coloured and coloured[0].extra_properties["color"] == [0, 255, 0]


def test_path_class_json_forms_from_qupath_tests() -> None:
    derived = json.loads((DATA / "qupath__qupath-test-resources/derived-class.json").read_text())
    assert parse_path_class(derived) == PathClass(
        ("First", "Second", "Third", "Fourth"), (10, 20, 30)
    )
    legacy_path = DATA / "qupath__qupath-test-resources/derived-class-legacy.json"
    legacy = parse_path_class(json.loads(legacy_path.read_text()))
    assert legacy.names == ("First-legacy", "Second-legacy", "Third-legacy", "Fourth-legacy")
    assert legacy.color == (1, 2, 3)  # packed ARGB -16711165 = 0xFF010203
    assert legacy.name == "First-legacy: Second-legacy: Third-legacy: Fourth-legacy"


# ----------------------------------------------------------------------------- formats


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def test_sources_path_text_bytes_and_objects(tmp_path: Path) -> None:
    collection = {"type": "FeatureCollection", "features": [feature(SQUARE, name="a")]}
    text = json.dumps(collection)
    path = tmp_path / "a.geojson"
    path.write_text(text, encoding="utf-8")
    results = [
        read_geojson(path),
        read_geojson(str(path)),
        read_geojson(text),
        read_geojson(text.encode("utf-8")),
        read_geojson(b"\xef\xbb\xbf" + text.encode("utf-8")),  # UTF-8 with BOM
        read_geojson(collection),
        read_geojson([feature(SQUARE, name="a")]),
        read_geojson(feature(SQUARE, name="a")),
    ]
    for result in results:
        assert [a.name for a in result] == ["a"]
        assert result[0].geometry.equals(shapely.box(0, 0, 10, 10))


def test_qupath_03_object_type_and_04_names() -> None:
    (a, b) = read_geojson(
        [
            feature(SQUARE, object_type="detection", isLocked=True),
            feature(SQUARE, objectType="tmaCore", classification={"names": ["Tumor", "Positive"]}),
        ]
    )
    assert (a.object_type, a.locked) == ("detection", True)
    assert b.object_type == "tma_core"
    assert b.path_class == PathClass(("Tumor", "Positive"))
    assert b.path_class.name == "Tumor: Positive"
    out = to_geojson_obj([a, b])["features"]
    assert out[0]["properties"]["objectType"] == "detection"
    assert out[1]["properties"]["objectType"] == "tmaCore"
    assert out[1]["properties"]["classification"] == {"names": ["Tumor", "Positive"]}


def test_derived_class_from_name_string() -> None:
    (a,) = read_geojson([feature(SQUARE, classification={"name": "Tumor: Positive"})])
    assert a.path_class is not None and a.path_class.names == ("Tumor", "Positive")


def test_cell_with_nucleus_round_trip() -> None:
    nucleus = {"type": "Polygon", "coordinates": [[[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]}
    cell = feature(SQUARE, objectType="cell", measurements={"Nucleus: Area": 4.0})
    cell["nucleusGeometry"] = nucleus
    cell["id"] = "7f7c3e0a-3b0e-4bb4-9a4e-6f2b6d0c1a11"
    (annotation,) = read_geojson([cell])
    assert annotation.object_type == "cell"
    assert annotation.nucleus_geometry is not None
    assert annotation.nucleus_geometry.equals(shapely.box(2, 2, 4, 4))
    out = to_geojson_obj([annotation])["features"][0]
    assert out["nucleusGeometry"]["type"] == "Polygon"
    assert_same_annotations(read_geojson(to_geojson_obj([annotation])), [annotation])


def test_all_geometry_types_round_trip() -> None:
    geometries = [
        {"type": "Point", "coordinates": [1.5, 2.5]},
        {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
        {"type": "LineString", "coordinates": [[0, 0], [5, 5], [9, 1]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
        SQUARE,
        {
            "type": "MultiPolygon",
            "coordinates": [
                [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [4, 2], [4, 4], [2, 2]]],
                [[[20, 20], [30, 20], [30, 30], [20, 20]]],
            ],
        },
        {
            "type": "GeometryCollection",
            "geometries": [SQUARE, {"type": "LineString", "coordinates": [[0, 0], [3, 3]]}],
        },
    ]
    annotations = read_geojson([feature(g) for g in geometries])
    assert [a.geometry.geom_type for a in annotations] == [g["type"] for g in geometries]
    assert_same_annotations(read_geojson(json.dumps(to_geojson_obj(annotations))), annotations)


def test_measurements_list_nan_and_metadata() -> None:
    (a,) = read_geojson(
        [
            feature(
                SQUARE,
                measurements=[{"name": "Area", "value": 100}, {"name": "Mean", "value": None}],
                metadata={"origin": "scan 3", "pass": 2},
            )
        ]
    )
    assert a.measurements["Area"] == 100.0
    assert math.isnan(a.measurements["Mean"])
    assert a.metadata == {"origin": "scan 3", "pass": "2"}
    text = json.dumps(to_geojson_obj([a]))
    (b,) = read_geojson(text)
    assert_same_annotation(a, b)


def test_output_is_what_qupath_imports() -> None:
    annotation = Annotation(
        geometry=shapely.Polygon(
            [(0, 0), (10.5, 0), (10.5, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4)]]
        ),
        path_class=PathClass(("Tumor",), (200, 0, 0)),
        name="lesion 1",
        locked=True,
        measurements={"Area": 1.0},
        metadata={"model": "wsi-sam"},
    )
    obj = to_geojson_obj([annotation])
    assert obj["type"] == "FeatureCollection"
    (out,) = obj["features"]
    assert out["type"] == "Feature"
    assert out["id"] == annotation.id and len(out["id"]) == 36
    assert out["geometry"]["type"] == "Polygon"
    assert out["geometry"]["coordinates"][0][1] == [10.5, 0]  # whole numbers as ints
    assert out["properties"] == {
        "objectType": "annotation",
        "name": "lesion 1",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "isLocked": True,
        "measurements": {"Area": 1.0},
        "metadata": {"model": "wsi-sam"},
    }


def test_new_annotations_get_distinct_uuids() -> None:
    first, second = Annotation(shapely.box(0, 0, 1, 1)), Annotation(shapely.box(0, 0, 1, 1))
    assert first.id != second.id and len(first.id) == 36


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out.geojson"
    write_geojson(path, [Annotation(shapely.box(0, 0, 1, 1), name="old")])
    before = path.read_bytes()
    with pytest.raises(GeoJSONError, match="annotation 1"):
        write_geojson(path, [Annotation(shapely.box(0, 0, 2, 2)), Annotation(shapely.Polygon())])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]
    write_geojson(path, [Annotation(shapely.box(0, 0, 3, 3), name="new")])
    assert [a.name for a in read_geojson(path)] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]


def test_self_intersecting_polygon_is_repaired_and_reported() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    with pytest.warns(GeometryRepairedWarning, match=r"feature 1: Self-intersection"):
        annotations = read_geojson([feature(SQUARE), feature(bowtie, name="bow tie")])
    repaired = annotations[1]
    assert repaired.name == "bow tie"  # kept, not dropped
    assert repaired.geometry.is_valid
    assert repaired.geometry.geom_type == "MultiPolygon"
    assert repaired.geometry.area == pytest.approx(50.0)
    assert repaired.metadata[REPAIRED_METADATA_KEY].startswith("Self-intersection")
    assert REPAIRED_METADATA_KEY not in annotations[0].metadata


def test_repair_can_be_switched_off() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    with pytest.warns(GeometryRepairedWarning, match="kept unrepaired"):
        (annotation,) = read_geojson([feature(bowtie)], repair=False)
    assert not annotation.geometry.is_valid


def test_valid_file_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_geojson([feature(SQUARE)])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            '{"type": "FeatureCollection", "features": [',
            r"GeoJSON text is not valid JSON: .* at line 1, column \d+",
        ),
        ("   ", "empty text: expected GeoJSON"),
        ("42", "cannot read GeoJSON 42: no such file"),  # other text is taken as a path
        (42, "file path, JSON text or a parsed GeoJSON object, not int"),
        ({"type": "FeatureCollection", "features": {}}, "'features' must be a list, got object"),
        ({"type": "Topology"}, "got an object with type 'Topology'"),
        ({"pathClasses": []}, "got an object without 'type'"),
        ("[1]", "feature 0: expected a JSON object, got a number"),
        ([{"type": "Feature", "properties": {}}], "feature 0: has no 'geometry'"),
        ([{"type": "Feature", "geometry": None}], "feature 0: 'geometry' is null"),
        ([{"type": "Fеature", "geometry": SQUARE}], "feature 0: 'type' is 'Fеature'"),
        (
            [
                feature(SQUARE),
                {"type": "Feature", "id": "abc", "geometry": SQUARE, "properties": []},
            ],
            r"feature 1 \(id 'abc'\): 'properties' must be an object, got a list",
        ),
        ([feature(SQUARE, objectType="polygon")], "feature 0: unknown objectType 'polygon'"),
        ([feature(SQUARE, object_type=3)], "feature 0: 'object_type' must be a string"),
        ([feature(SQUARE, name=5)], "feature 0: 'name' must be a string, got a number"),
        ([feature(SQUARE, isLocked="yes")], "feature 0: 'isLocked' must be true or false"),
        ([feature(SQUARE, measurements="big")], "'measurements' must be an object or a list"),
        ([feature(SQUARE, measurements={"Area": "big"})], "measurement 'Area' is not a number"),
        ([feature(SQUARE, metadata={"a": [1]})], "metadata 'a' must be a string, got a list"),
        (
            [feature(SQUARE, classification={"name": "Tumor", "color": [300, 0, 0]})],
            r"feature 0: bad 'classification': a colour must be three integers",
        ),
        (
            [feature(SQUARE, classification={"name": "A:"})],
            "feature 0: bad 'classification': a class name may not be blank",
        ),
        ([feature(SQUARE, classification={"color": [1, 2, 3]})], "neither 'name' nor 'names'"),
        ([feature({"type": "Circle", "coordinates": [0, 0]})], "unknown geometry type 'Circle'"),
        ([feature({"type": "Polygon"})], "the Polygon has no 'coordinates'"),
        (
            [feature({"type": "Polygon", "coordinates": [[["a", 0], [1, 0], [1, 1], [0, 0]]]})],
            r"feature 0: bad Polygon coordinates: expected a list of positions \[x, y\] "
            r"with numbers, got \[\[\"a\", 0\]",
        ),
        (
            [feature({"type": "Polygon", "coordinates": [[0, 0], [1, 0], [1, 1]]})],
            r"bad Polygon coordinates: expected a list of positions .*got \[0, 0\]",
        ),
        (
            [feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]})],
            "bad Polygon coordinates: a ring needs at least 4 positions",
        ),
        ([feature({"type": "Polygon", "coordinates": []})], "the Polygon has no coordinates"),
        (
            '[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [NaN, 1]}}]',
            "bad Point coordinates: not finite numbers",
        ),
        (
            [feature({"type": "LineString", "coordinates": [[0, 0], [1, 2, 3, 4]]})],
            "bad LineString coordinates: expected a list of positions",
        ),
        (
            [feature({"type": "LineString", "coordinates": [[0, 0]]})],
            "bad LineString coordinates: .*point array must contain 0 or >1 elements$",
        ),
        (
            [{"type": "Feature", "id": True, "geometry": SQUARE}],
            "'id' must be a string or an integer",
        ),
    ],
)
def test_bad_input_names_the_problem(source: Any, message: str) -> None:
    with pytest.raises(GeoJSONError, match=message):
        read_geojson(source)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match=r"cannot read GeoJSON .*nope.geojson: no such file"):
        read_geojson(tmp_path / "nope.geojson")
    with pytest.raises(GeoJSONError, match="it is a folder, not a file"):
        read_geojson(tmp_path)
    binary = tmp_path / "slide.svs"
    binary.write_bytes(b"II*\x00\xff\xfe\x00")
    with pytest.raises(GeoJSONError, match="it is not UTF-8 text"):
        read_geojson(binary)


def test_bad_annotations_are_refused_on_writing(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match="annotation 0: expected an Annotation, got dict"):
        to_geojson_obj([{"geometry": SQUARE}])  # type: ignore[list-item]
    with pytest.raises(GeoJSONError, match="geometry must be a shapely geometry"):
        to_geojson_obj([Annotation(geometry=SQUARE)])  # type: ignore[arg-type]
    with pytest.raises(GeoJSONError, match="unknown object_type 'region'"):
        to_geojson_obj([Annotation(shapely.box(0, 0, 1, 1), object_type="region")])
    with pytest.raises(GeoJSONError, match=r"the folder .*missing does not exist"):
        write_geojson(tmp_path / "missing" / "a.geojson", [])


def test_write_into_read_only_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom chmod does not make a folder read-only: simulate what
    # os.access reports for a read-only mount.
    import qupath_bridge.files as files

    real_access = os.access
    monkeypatch.setattr(
        files.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode)
    )
    with pytest.raises(GeoJSONError, match=r"cannot write .*a.geojson: the folder .* is read-only"):
        write_geojson(tmp_path / "a.geojson", [Annotation(shapely.box(0, 0, 1, 1))])
    assert not (tmp_path / "a.geojson").exists()


def test_path_class_validation() -> None:
    assert PathClass.from_name(" Tumor : Positive ").names == ("Tumor", "Positive")
    assert PathClass(("Tumor",), (200.0, 0, 0)).color == (200, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tuple of names"):
        PathClass("Tumor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contains ':'"):
        PathClass(("a:b",))
    with pytest.raises(ValueError, match="may not be blank"):
        PathClass(("  ",))
    with pytest.raises(ValueError, match="three integers"):
        PathClass(("Tumor",), (1, 2))  # type: ignore[arg-type]


def test_unwritable_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match="measurement 'Area' is not a number: 'big'"):
        to_geojson_obj([Annotation(shapely.box(0, 0, 1, 1), measurements={"Area": "big"})])  # type: ignore[dict-item]
    odd = Annotation(shapely.box(0, 0, 1, 1), extra_properties={"when": object()})
    with pytest.raises(GeoJSONError, match=r"cannot write .*odd.geojson: .*not JSON serializable"):
        write_geojson(tmp_path / "odd.geojson", [odd])
    assert not (tmp_path / "odd.geojson").exists()
