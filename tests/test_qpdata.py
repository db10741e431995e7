"""QuPath's data.qpdata read without Java, checked on files written by real QuPath."""

from __future__ import annotations

import math
import random
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import shapely

from qupath_bridge import read_geojson
from qupath_bridge.errors import GeometryRepairedWarning
from qupath_bridge.qpdata import QpDataError, QpDataWarning, read_qpdata

DATA = Path(__file__).parent / "data" / "qupath"
DEMO = DATA / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
DEMO_QPDATA = DEMO / "data" / "1" / "data.qpdata"
DEMO_GEOJSON = DATA / "CosciaLab__Qupath_to_LMD" / "geojson" / "Single_cells.geojson"
RESOURCES = DATA / "qupath__qupath-test-resources"
HIERARCHY = RESOURCES / "test-objects.hierarchy"
DERIVED = RESOURCES / "derived-class-object.serialized"


def _same_number(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_demo_project_objects_equal_its_geojson_export() -> None:
    data = read_qpdata(DEMO_QPDATA)
    exported = {annotation.id: annotation for annotation in read_geojson(DEMO_GEOJSON)}
    kinds = [annotation.object_type for annotation in data.objects]
    assert kinds.count("annotation") == 10
    assert kinds.count("cell") == 121
    assert {annotation.id for annotation in data.objects} == set(exported)
    for obj in data.objects:
        expected = exported[obj.id]
        assert obj.object_type == expected.object_type
        assert obj.path_class == expected.path_class  # names and colour
        assert obj.name == expected.name
        assert obj.locked == expected.locked
        assert obj.metadata == expected.metadata
        assert obj.extra_properties == expected.extra_properties
        assert obj.measurements.keys() == expected.measurements.keys()
        for key, value in obj.measurements.items():
            assert _same_number(value, expected.measurements[key]), (obj.id, key)
        assert obj.geometry.geom_type == expected.geometry.geom_type
        if expected.geometry.area:
            assert obj.geometry.area == pytest.approx(expected.geometry.area, rel=1e-3)
        else:
            assert obj.geometry.distance(expected.geometry) < 0.01
    # The cells lie inside the locked rectangle annotation, their parent in QuPath.
    parent = next(obj for obj in data.objects if obj.locked)
    cells = [obj for obj in data.objects if obj.object_type == "cell"]
    assert {cell.parent_id for cell in cells} == {parent.id}
    assert parent.parent_id is None
    assert data.objects.index(parent) < data.objects.index(cells[0])


def test_demo_project_header() -> None:
    data = read_qpdata(DEMO_QPDATA)
    assert data.data_version == 3
    assert data.qupath_version == "0.6.0"
    assert data.image_type == "FLUORESCENCE"
    assert data.server is not None
    assert data.server["uri"].endswith("TD_01_verysmall_mIF.ome.tif")
    assert data.complete


def test_bare_hierarchy_gives_every_roi_kind() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_qpdata(HIERARCHY)
    assert data.data_version is None
    objects = data.objects
    assert len(objects) == 12
    assert all(obj.object_type == "annotation" for obj in objects)
    kinds = {obj.name: obj.geometry.geom_type for obj in objects}
    assert kinds == {
        "Rectangle": "Polygon",
        "Line": "LineString",
        "Ellipse": "Polygon",
        "Polygon": "Polygon",
        "Polygon (self-intersecting)": "MultiPolygon",
        "Polyline": "LineString",
        "Ring": "Polygon",
        "Eight": "Polygon",
        "Disjointed": "MultiPolygon",
        "Disjointed rings": "MultiPolygon",
        "Complex": "MultiPolygon",
        None: "MultiPoint",
    }
    by_name = {obj.name: obj for obj in objects}
    assert len(by_name["Ring"].geometry.interiors) == 1  # the legacy AreaROI's hole is kept
    assert len(by_name["Line"].geometry.coords) == 2
    assert len(by_name["Ellipse"].geometry.exterior.coords) == 101  # as QuPath's conversion
    assert by_name["Polygon (self-intersecting)"].geometry.is_valid
    assert [w for w in caught if issubclass(w.category, GeometryRepairedWarning)]
    # This 2019 file stores no ids: they are derived, the same at every reading.
    assert [obj.id for obj in read_qpdata(HIERARCHY).objects] == [obj.id for obj in objects]
    assert len({obj.id for obj in objects}) == 12


def test_derived_class_chain() -> None:
    (obj,) = read_qpdata(DERIVED).objects
    assert obj.path_class is not None
    assert obj.path_class.names == ("First-object", "Second-object", "Third-object")
    assert obj.id == "f891da67-a514-4974-b9fd-c0e3929c48c4"
    assert obj.path_class.color is not None


def _copy(tmp_path: Path, data: bytes, name: str = "data.qpdata") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    data = DEMO_QPDATA.read_bytes()
    path = _copy(tmp_path, data[: len(data) // 2])
    with pytest.raises(QpDataError) as info:
        read_qpdata(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    assert "objects" in message and "byte" in message


def test_damage_after_the_hierarchy_keeps_the_objects(tmp_path: Path) -> None:
    data = DEMO_QPDATA.read_bytes()
    path = _copy(tmp_path, data[:-2])  # inside the final "EOF" marker
    with pytest.warns(QpDataWarning, match="every object had been read"):
        result = read_qpdata(path)
    assert len(result.objects) == 131
    assert not result.complete


def test_flipped_type_code_gives_a_clear_error(tmp_path: Path) -> None:
    data = bytearray(DEMO_QPDATA.read_bytes())
    offset = data.index(b"\x73\x72\x00\x27qupath.lib.objects.PathAnnotationObject")
    data[offset] ^= 0xFF
    path = _copy(tmp_path, bytes(data))
    with pytest.raises(QpDataError, match=rf"unknown type code 0x8c at byte {offset}") as info:
        read_qpdata(path)
    assert str(path) in str(info.value)


def test_flipped_vertex_is_caught_by_the_stored_area(tmp_path: Path) -> None:
    reference = read_qpdata(DEMO_QPDATA).objects
    cell = next(obj for obj in reference if obj.object_type == "cell")
    x0 = float(shapely.get_coordinates(cell.geometry)[2, 0])
    data = bytearray(DEMO_QPDATA.read_bytes())
    offset = data.index(struct.pack(">f", x0))
    data[offset] ^= 0x08  # an exponent bit: the vertex moves far away
    path = _copy(tmp_path, bytes(data))
    with pytest.raises(QpDataError, match="the coordinates are damaged"):
        read_qpdata(path)


def test_random_flips_never_crash(tmp_path: Path) -> None:
    """Damage anywhere gives a QpDataError or objects; never another exception.

    (The format has no checksum: a flip inside a measurement value cannot be noticed.)"""
    original = DEMO_QPDATA.read_bytes()
    rng = random.Random(16)
    errors = 0
    for trial in range(60):
        data = bytearray(original)
        for _ in range(rng.choice([1, 3, 10])):
            index = rng.randrange(len(data))
            data[index] ^= 1 << rng.randrange(8)
        path = _copy(tmp_path, bytes(data), f"flip{trial}.qpdata")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_qpdata(path)
            except QpDataError as exc:
                assert str(path) in str(exc)
                errors += 1
    assert errors > 20


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is empty"),
        (b'{"type": "FeatureCollection"}', "not a Java serialization stream"),
        (b"\xac\xed\x00\x05", "nothing but the stream header"),
        (b"\xac\xed\x00\x05\x74\x00\x02hi", "no QuPath hierarchy or object"),
    ],
)
def test_not_a_qupath_data_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = _copy(tmp_path, content)
    with pytest.raises(QpDataError, match=match):
        read_qpdata(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QpDataError, match="cannot read"):
        read_qpdata(tmp_path / "nothing.qpdata")


def test_reading_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "data.qpdata"
    shutil.copy2(DEMO_QPDATA, path)
    before = (path.stat().st_mtime_ns, path.read_bytes())
    read_qpdata(path)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


# ------------------------------------------------------------------------------------------
# GeometryROI$WKBSerializationProxy (QuPath 0.2.0-m6 on: brush, wand, boolean operations).
# None of the real files at hand holds one, so one is written here with Java's stream grammar
# into the real derived-class-object.serialized, in place of its rectangle ROI.


def _utf(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _class_desc(name: str, fields: list[tuple[str, str, str | None]]) -> bytes:
    out = b"\x72" + _utf(name) + struct.pack(">q", 1) + b"\x02" + struct.pack(">h", len(fields))
    for code, field_name, type_name in fields:
        out += code.encode() + _utf(field_name)
        if type_name is not None:
            out += b"\x74" + _utf(type_name)
    return out + b"\x78\x70"  # no class annotation, no superclass


def _wkb_proxy(geometry: shapely.Geometry, cached_area: float) -> bytes:
    stats = (
        b"\x73"
        + _class_desc("qupath.lib.roi.GeometryROI$GeometryStats", [("D", "area", None)])
        + struct.pack(">d", cached_area)
    )
    wkb = shapely.to_wkb(geometry, byte_order=0)
    array = b"\x75" + _class_desc("[B", []) + struct.pack(">i", len(wkb)) + wkb
    fields = [
        ("I", "c", None),
        ("I", "t", None),
        ("I", "z", None),
        ("L", "stats", "Lqupath/lib/roi/GeometryROI$GeometryStats;"),
        ("[", "wkb", "[B"),
    ]
    desc = _class_desc("qupath.lib.roi.GeometryROI$WKBSerializationProxy", fields)
    return b"\x73" + desc + struct.pack(">iii", -1, 0, 0) + stats + array


def _with_roi(roi: bytes) -> bytes:
    data = DERIVED.read_bytes()
    start = data.index(b"\x73\x72\x00\x2equpath.lib.roi.RectangleROI")
    end = data.rindex(b"\x77\x08")  # the classification probability after the ROI
    return data[:start] + roi + data[end:]


def test_wkb_area_roi_with_a_hole(tmp_path: Path) -> None:
    shape = shapely.Polygon(
        [(0, 0), (100, 0), (100, 50), (0, 50)], [[(10, 10), (20, 10), (20, 20), (10, 20)]]
    )
    path = _copy(tmp_path, _with_roi(_wkb_proxy(shape, shape.area)))
    (obj,) = read_qpdata(path).objects
    assert obj.geometry.equals(shape)
    assert len(obj.geometry.interiors) == 1
    assert obj.path_class is not None and obj.path_class.names[-1] == "Third-object"


def test_wkb_with_a_wrong_stored_area_is_refused(tmp_path: Path) -> None:
    shape = shapely.box(0, 0, 100, 50)
    path = _copy(tmp_path, _with_roi(_wkb_proxy(shape, 1234.0)))
    with pytest.raises(QpDataError, match="stored an area of 1234"):
        read_qpdata(path)
