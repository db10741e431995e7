"""Property tests: any annotation the app can make survives a QuPath GeoJSON round trip."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_qupath_geojson import assert_same_annotations

from qupath_bridge import Annotation, PathClass, read_geojson, to_geojson_obj, write_geojson

coordinate = st.floats(min_value=0, max_value=200_000, allow_nan=False, allow_infinity=False)
# Class names: any Unicode QuPath accepts (no ':' or line breaks, not blank).
class_name = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":\n\r"),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)
colour = st.none() | st.tuples(*[st.integers(0, 255)] * 3)
path_class = st.none() | st.builds(
    PathClass, st.lists(class_name, min_size=1, max_size=3).map(tuple), colour
)


@st.composite
def star_polygon(draw: st.DrawFn, cx: float, cy: float, radius: float) -> shapely.Polygon:
    """A simple polygon around (cx, cy): 5-12 vertices at jittered, evenly spaced angles and
    radii in [0.7 r, r] (star-shaped about its centre, so always simple)."""
    count = draw(st.integers(5, 12))
    step = 2 * math.pi / count
    jitter = st.floats(-0.3 * step, 0.3 * step)
    angles = [k * step + draw(jitter) for k in range(count)]
    radii = draw(st.lists(st.floats(0.7 * radius, radius), min_size=count, max_size=count))
    return shapely.Polygon(
        [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
    )


@st.composite
def polygon_with_holes(
    draw: st.DrawFn, cx: float | None = None, cy: float | None = None, radius: float | None = None
) -> shapely.Polygon:
    cx = draw(coordinate) if cx is None else cx
    cy = draw(coordinate) if cy is None else cy
    radius = draw(st.floats(10, 5_000)) if radius is None else radius
    outer = draw(star_polygon(cx, cy, radius))
    holes = []
    for k in range(draw(st.integers(0, 2))):
        # Small holes either side of the centre, inside the outer ring's inscribed circle.
        hx = cx + (k * 2 - 1) * radius * 0.15
        holes.append(draw(star_polygon(hx, cy, radius * 0.08)).exterior.coords)
    polygon = shapely.Polygon(outer.exterior.coords, holes)
    assume(polygon.is_valid)
    return polygon


@st.composite
def multipolygon(draw: st.DrawFn) -> shapely.MultiPolygon:
    cx, cy = draw(coordinate), draw(coordinate)
    radius = draw(st.floats(10, 5_000))
    count = draw(st.integers(2, 3))
    # Parts side by side, 2.5 radii apart, so they never touch.
    parts = [draw(polygon_with_holes(cx + k * 2.5 * radius, cy, radius)) for k in range(count)]
    geometry = shapely.MultiPolygon(parts)
    assume(geometry.is_valid)
    return geometry


annotation = st.builds(
    Annotation,
    geometry=polygon_with_holes() | multipolygon(),
    object_type=st.sampled_from(["annotation", "detection", "tile"]),
    path_class=path_class,
    name=st.none() | st.text(max_size=30),
    locked=st.booleans(),
    measurements=st.dictionaries(
        st.text(min_size=1, max_size=15), st.floats(allow_nan=False, allow_infinity=False)
    ),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(annotation, max_size=4))
def test_json_text_round_trip(annotations: list[Annotation]) -> None:
    text = json.dumps(to_geojson_obj(annotations), ensure_ascii=False)
    assert_same_annotations(read_geojson(text), annotations)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(annotation, min_size=1, max_size=3))
def test_file_round_trip(annotations: list[Annotation]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "annotations.geojson"
        write_geojson(path, annotations)
        assert_same_annotations(read_geojson(path), annotations)


@settings(max_examples=100, deadline=None)
@given(path_class.filter(lambda c: c is not None))
def test_class_name_survives_qupath_display_name(cls: PathClass) -> None:
    # QuPath writes derived classes as names, and shows them as "A: B"; both parse back.
    assert PathClass.from_name(cls.name, cls.color) == cls
