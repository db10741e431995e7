"""QuPath GeoJSON in and out.

Reads what QuPath 0.2-0.6 exports (and what other tools write for QuPath):

- a FeatureCollection, a bare list of Features, a single Feature, or a bare geometry;
- QuPath 0.4+ ``properties.objectType``, ``classification.name`` / ``classification.names``
  (derived classes) with ``color: [r, g, b]``; 0.3's ``object_type``; 0.2's object type in the
  feature ``id`` (``"PathAnnotationObject"``) with ``classification.colorRGB`` (a packed int);
- measurements as a dict (0.4+) or as 0.2/0.3's list of ``{"name", "value"}``;
- Polygon (with holes), MultiPolygon, LineString, MultiLineString, Point, MultiPoint and
  GeometryCollection; cells keep their ``nucleusGeometry``.

Writes what QuPath 0.4-0.6 imports by drag and drop: a FeatureCollection of Features with a UUID
``id``, ``properties.objectType``, ``classification`` {``name`` or ``names``, ``color``}, ``name``,
``isLocked``, ``measurements`` and ``metadata``; coordinates in level-0 pixels. Properties the
bridge does not interpret are written back unchanged, so a read-write round trip changes nothing.

Invalid polygons (self-intersections, overlapping parts) are repaired with shapely's
``make_valid``, reported with a :class:`GeometryRepairedWarning` and marked in the object's
metadata under :data:`REPAIRED_METADATA_KEY`; they are never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .errors import DuplicateIdWarning, GeoJSONError, GeometryRepairedWarning
from .files import atomic_write_bytes, is_writable_dir
from .model import Annotation, PathClass, rgb_from_packed, validate_rgb

__all__ = [
    "REPAIRED_METADATA_KEY",
    "parse_path_class",
    "read_geojson",
    "to_geojson_obj",
    "write_geojson",
]

_log = logging.getLogger(__name__)

#: Metadata key set on objects whose geometry was repaired on reading (value: GEOS's reason).
REPAIRED_METADATA_KEY = "wsi-sam repaired geometry"

# QuPath 0.2 stored the object type in the feature "id".
_LEGACY_TYPE_IDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
    "PathRootObject": "root",
}
# Every spelling QuPath reads, mapped to the bridge's names.
_TYPE_ALIASES = {
    "annotation": "annotation",
    "detection": "detection",
    "cell": "cell",
    "tile": "tile",
    "tmaCore": "tma_core",
    "tma_core": "tma_core",
    "root": "root",
    **_LEGACY_TYPE_IDS,
}
# What QuPath 0.4-0.6 writes for each object type.
_TYPE_OUT = {
    "annotation": "annotation",
    "detection": "detection",
    "cell": "cell",
    "tile": "tile",
    "tma_core": "tmaCore",
    "root": "root",
}
# Nesting depth of "coordinates" (a position is depth 1).
_COORDINATE_DEPTH = {
    "Point": 1,
    "MultiPoint": 2,
    "LineString": 2,
    "MultiLineString": 3,
    "Polygon": 3,
    "MultiPolygon": 4,
}
_GEOMETRY_TYPES = (*_COORDINATE_DEPTH, "GeometryCollection")
# Properties interpreted by the bridge; everything else goes to Annotation.extra_properties.
_KNOWN_PROPERTIES = frozenset(
    {"objectType", "object_type", "name", "classification", "isLocked", "measurements", "metadata"}
)

Source = str | bytes | bytearray | os.PathLike[str] | Mapping[str, Any] | list[Any]


# --------------------------------------------------------------------------------------- reading


def read_geojson(source: Source, *, repair: bool = True) -> list[Annotation]:
    """Read QuPath GeoJSON into annotations.

    Args:
        source: a file path (``str`` or ``os.PathLike``), JSON text (``str`` starting with ``{``
            or ``[``, or ``bytes``), or an already parsed object (dict or list).
        repair: repair invalid polygons with shapely's ``make_valid`` (default). With False they
            are kept as they are; either way a :class:`GeometryRepairedWarning` reports them.

    Returns:
        One :class:`Annotation` per feature, in file order.

    Raises:
        GeoJSONError: unreadable file, malformed JSON, or a feature that cannot be understood;
            the message names the feature index (0-based) and the problem.
    """
    obj, where = _load(source)
    features = _features_of(obj, where)
    repaired: list[tuple[int, str]] = []
    try:
        annotations = [
            _parse_feature(feature, index, repair, repaired)
            for index, feature in enumerate(features)
        ]
    except GeoJSONError as exc:
        if where in ("GeoJSON object", "GeoJSON text"):
            raise
        raise GeoJSONError(f"{where}: {exc}") from None  # name the file, not only the feature
    annotations = _fresh_duplicate_ids(annotations, where)
    if repaired:
        shown = "; ".join(f"feature {i}: {reason}" for i, reason in repaired[:5])
        more = f" and {len(repaired) - 5} more" if len(repaired) > 5 else ""
        action = "repaired with shapely make_valid" if repair else "kept unrepaired"
        message = f"{where}: {len(repaired)} invalid geometries {action} ({shown}{more})"
        _log.warning(message)
        warnings.warn(message, GeometryRepairedWarning, stacklevel=2)
    return annotations


def _fresh_duplicate_ids(annotations: list[Annotation], where: str) -> list[Annotation]:
    """Give every feature after the first with an id already seen a fresh id, and say so: two
    objects under one id would become one at the next save (the other one lost)."""
    seen: set[str] = set()
    renamed: list[tuple[int, str]] = []
    out = []
    for index, annotation in enumerate(annotations):
        if annotation.id in seen:
            renamed.append((index, annotation.id))
            annotation = dataclasses.replace(annotation, id=str(uuid.uuid4()))
        seen.add(annotation.id)
        out.append(annotation)
    if renamed:
        shown = "; ".join(f"feature {i}: {old}" for i, old in renamed[:5])
        more = f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""
        message = (
            f"{where}: {len(renamed)} feature(s) repeated an earlier feature's id and got a "
            f"fresh id ({shown}{more})"
        )
        _log.warning(message)
        warnings.warn(message, DuplicateIdWarning, stacklevel=3)
    return out


def _load(source: Source) -> tuple[Any, str]:
    """Return the parsed JSON and a short description of where it came from."""
    if isinstance(source, Mapping | list):
        return source, "GeoJSON object"
    if isinstance(source, bytes | bytearray):
        return _parse_json(bytes(source).decode("utf-8-sig", errors="strict"), "GeoJSON text"), (
            "GeoJSON text"
        )
    if isinstance(source, str) and not source.strip():
        raise GeoJSONError("empty text: expected GeoJSON, a file path or a parsed object")
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        return _parse_json(source, "GeoJSON text"), "GeoJSON text"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        where = str(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            raise GeoJSONError(f"cannot read GeoJSON {where}: no such file") from None
        except IsADirectoryError:
            raise GeoJSONError(f"cannot read GeoJSON {where}: it is a folder, not a file") from None
        except UnicodeDecodeError as exc:
            raise GeoJSONError(
                f"{where} is not GeoJSON: it is not UTF-8 text (byte {exc.start})"
            ) from None
        except OSError as exc:
            raise GeoJSONError(f"cannot read GeoJSON {where}: {exc.strerror or exc}") from None
        return _parse_json(text, where), where
    raise GeoJSONError(
        "read_geojson() takes a file path, JSON text or a parsed GeoJSON object, "
        f"not {type(source).__name__}"
    )


def _parse_json(text: str, where: str) -> Any:
    if not text.strip():
        raise GeoJSONError(f"{where} is empty: expected GeoJSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeoJSONError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise GeoJSONError(f"{where} is not valid GeoJSON: nested too deeply") from None


def _features_of(obj: Any, where: str) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, Mapping):
        raise GeoJSONError(
            f"{where}: expected a GeoJSON FeatureCollection, Feature or list of Features, "
            f"got a JSON {_json_type(obj)}"
        )
    kind = obj.get("type")
    if kind == "FeatureCollection" or (kind is None and "features" in obj):
        features = obj.get("features")
        if not isinstance(features, list):
            raise GeoJSONError(
                f"{where}: the FeatureCollection's 'features' must be a list, "
                f"got {_json_type(features)}"
            )
        return features
    if kind == "Feature" or kind in _GEOMETRY_TYPES or (kind is None and "geometry" in obj):
        return [obj]
    got = "an object without 'type'" if kind is None else f"an object with type {kind!r}"
    raise GeoJSONError(
        f"{where}: expected a GeoJSON FeatureCollection, Feature or geometry, got {got}"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _parse_feature(
    feature: Any, index: int, repair: bool, repaired: list[tuple[int, str]]
) -> Annotation:
    where = f"feature {index}"
    if not isinstance(feature, Mapping):
        raise GeoJSONError(f"{where}: expected a JSON object, got a {_json_type(feature)}")
    kind = feature.get("type", "Feature")
    if kind in _GEOMETRY_TYPES:
        # A bare geometry where a Feature was expected: an unclassified annotation.
        feature = {"type": "Feature", "geometry": feature, "properties": {}}
    elif kind != "Feature":
        raise GeoJSONError(f"{where}: 'type' is {kind!r}, expected 'Feature'")

    raw_id = feature.get("id")
    if isinstance(raw_id, str) and raw_id:
        where = f"feature {index} (id {raw_id!r})"

    if "geometry" not in feature:
        raise GeoJSONError(f"{where}: has no 'geometry'")
    if feature["geometry"] is None:
        raise GeoJSONError(f"{where}: 'geometry' is null; a QuPath object needs a geometry")

    properties = feature.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, Mapping):
        raise GeoJSONError(
            f"{where}: 'properties' must be an object, got a {_json_type(properties)}"
        )

    object_id, legacy_type = _parse_id(raw_id, where)
    extra = {k: v for k, v in properties.items() if k not in _KNOWN_PROPERTIES}
    object_type = _parse_object_type(properties, legacy_type, extra, where)

    metadata = _parse_metadata(properties.get("metadata"), where)
    geometry, reason = _parse_geometry(feature["geometry"], where, repair)
    if reason is not None:
        repaired.append((index, reason))
        if repair:
            metadata[REPAIRED_METADATA_KEY] = reason
    nucleus = None
    if feature.get("nucleusGeometry") is not None:
        nucleus, reason = _parse_geometry(
            feature["nucleusGeometry"], f"{where} nucleusGeometry", repair
        )
        if reason is not None:
            repaired.append((index, f"nucleus: {reason}"))

    name = properties.get("name")
    if name is not None and not isinstance(name, str):
        raise GeoJSONError(f"{where}: 'name' must be a string, got a {_json_type(name)}")
    locked = properties.get("isLocked", False)
    if locked is None:
        locked = False
    if not isinstance(locked, bool):
        raise GeoJSONError(f"{where}: 'isLocked' must be true or false, got {locked!r}")

    path_class = None
    if properties.get("classification") is not None:
        try:
            path_class = parse_path_class(properties["classification"])
        except ValueError as exc:
            raise GeoJSONError(f"{where}: bad 'classification': {exc}") from None

    return Annotation(
        geometry=geometry,
        object_type=object_type,
        path_class=path_class,
        name=name,
        id=object_id,
        locked=locked,
        measurements=_parse_measurements(properties.get("measurements"), where),
        metadata=metadata,
        nucleus_geometry=nucleus,
        extra_properties=extra,
    )


def _parse_id(raw_id: Any, where: str) -> tuple[str, str | None]:
    """Return (object id, object type implied by a QuPath 0.2 id or None)."""
    if raw_id is None or raw_id == "":
        return str(uuid.uuid4()), None
    if isinstance(raw_id, str):
        if raw_id in _LEGACY_TYPE_IDS:
            return str(uuid.uuid4()), _LEGACY_TYPE_IDS[raw_id]
        return raw_id, None
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        return str(raw_id), None
    raise GeoJSONError(f"{where}: 'id' must be a string or an integer, got {raw_id!r}")


def _parse_object_type(
    properties: Mapping[str, Any], legacy_type: str | None, extra: dict[str, Any], where: str
) -> str:
    for key in ("objectType", "object_type"):
        if key in properties:
            value = properties[key]
            if not isinstance(value, str):
                raise GeoJSONError(f"{where}: '{key}' must be a string, got {value!r}")
            if value not in _TYPE_ALIASES:
                raise GeoJSONError(
                    f"{where}: unknown {key} {value!r}; QuPath knows "
                    "'annotation', 'detection', 'cell', 'tile' and 'tmaCore'"
                )
            return _TYPE_ALIASES[value]
    # QuPath also reads properties.type as an alias; other tools use "type" for their own
    # purposes, so an unrecognised value stays an ordinary property.
    alias = properties.get("type")
    if isinstance(alias, str) and alias in _TYPE_ALIASES:
        extra.pop("type", None)
        return _TYPE_ALIASES[alias]
    return legacy_type or "annotation"


def parse_path_class(value: Any) -> PathClass:
    """Parse a QuPath classification: ``{"name"|"names", "color"|"colorRGB"}``, the legacy
    nested ``parentClass`` form, or a plain string. Raises ValueError when malformed."""
    if isinstance(value, str):
        return PathClass.from_name(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object or a string, got a {_json_type(value)}")
    color = _parse_color(value)
    if "names" in value:
        names = value["names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"'names' must be a non-empty list of strings, got {names!r}")
        return PathClass(tuple(names), color)
    if "name" not in value:
        raise ValueError("it has neither 'name' nor 'names'")
    name = value["name"]
    if not isinstance(name, str):
        raise ValueError(f"'name' must be a string, got {name!r}")
    parent = value.get("parentClass")
    if parent is not None:  # QuPath <= 0.3 derived classes: a chain of parents
        return PathClass((*parse_path_class(parent).names, name), color)
    return PathClass.from_name(name, color)


def _parse_color(value: Mapping[str, Any]) -> tuple[int, int, int] | None:
    for key in ("color", "colorRGB"):
        color = value.get(key)
        if color is None:
            continue
        if isinstance(color, int) and not isinstance(color, bool):
            return rgb_from_packed(color)
        return validate_rgb(color)
    return None


def _parse_measurements(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):  # QuPath 0.2/0.3: [{"name": ..., "value": ...}, ...]
        pairs = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise GeoJSONError(
                    f"{where}: measurement {i} must be an object with 'name' and 'value'"
                )
            pairs.append((entry["name"], entry.get("value")))
        items = pairs
    else:
        raise GeoJSONError(
            f"{where}: 'measurements' must be an object or a list, got a {_json_type(value)}"
        )
    measurements: dict[str, float] = {}
    for key, number in items:
        if not isinstance(key, str):
            raise GeoJSONError(f"{where}: a measurement name must be a string, got {key!r}")
        if number is None:
            measurements[key] = math.nan
        elif isinstance(number, int | float) and not isinstance(number, bool):
            measurements[key] = float(number)
        else:
            raise GeoJSONError(f"{where}: measurement {key!r} is not a number: {number!r}")
    return measurements


def _parse_metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise GeoJSONError(f"{where}: 'metadata' must be an object, got a {_json_type(value)}")
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, str):
            metadata[key] = item
        elif isinstance(item, bool | int | float):
            metadata[key] = json.dumps(item)  # QuPath keeps metadata as strings
        else:
            raise GeoJSONError(
                f"{where}: metadata {key!r} must be a string, got a {_json_type(item)}"
            )
    return metadata


def _positions(value: Any, kind: str, where: str) -> np.ndarray:
    """A list of positions as an (N, 2) or (N, 3) float array, or a GeoJSONError saying why not.

    Checked with numpy rather than position by position: exports hold millions of points.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged nesting
        array = np.asarray([], dtype=object)
    if (
        not isinstance(value, list)
        or array.ndim != 2
        or array.shape[1] not in (2, 3)
        or array.dtype.kind not in "iuf"
    ):
        raise GeoJSONError(
            f"{where}: bad {kind} coordinates: expected a list of positions [x, y] with "
            f"numbers, got {_short(value)}"
        )
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise GeoJSONError(
            f"{where}: bad {kind} coordinates: not finite numbers in {_short(value)}"
        )
    return array


def _nested(value: Any, kind: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise GeoJSONError(f"{where}: bad {kind} coordinates: expected a list, got {_short(value)}")
    return value


def _ring(value: Any, kind: str, where: str) -> np.ndarray:
    ring = _positions(value, kind, where)
    closed = len(ring) > 0 and bool(np.array_equal(ring[0], ring[-1]))
    if len(ring) + (0 if closed else 1) < 4:
        raise GeoJSONError(
            f"{where}: bad {kind} coordinates: a ring needs at least 4 positions "
            f"(3 corners and the first again), got {_short(value)}"
        )
    return ring


def _polygon(rings: Any, kind: str, where: str) -> shapely.Polygon:
    rings = _nested(rings, kind, where)
    if not rings:
        return shapely.Polygon()
    shell, *holes = (_ring(ring, kind, where) for ring in rings)
    return shapely.Polygon(shell, holes)


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _geometry_from_obj(obj: Any, where: str) -> BaseGeometry:
    if not isinstance(obj, Mapping):
        raise GeoJSONError(f"{where}: 'geometry' must be an object, got a {_json_type(obj)}")
    kind = obj.get("type")
    if kind not in _GEOMETRY_TYPES:
        raise GeoJSONError(
            f"{where}: unknown geometry type {kind!r}; expected one of {', '.join(_GEOMETRY_TYPES)}"
        )
    if kind == "GeometryCollection":
        parts = obj.get("geometries")
        if not isinstance(parts, list):
            raise GeoJSONError(f"{where}: a GeometryCollection needs a 'geometries' list")
        return shapely.GeometryCollection(
            [_geometry_from_obj(part, f"{where} part {i}") for i, part in enumerate(parts)]
        )
    if "coordinates" not in obj:
        raise GeoJSONError(f"{where}: the {kind} has no 'coordinates'")
    coordinates = obj["coordinates"]
    try:
        if kind == "Point":
            if coordinates == []:
                return shapely.Point()
            return shapely.Point(_positions([coordinates], kind, where)[0])
        if kind == "MultiPoint":
            if coordinates == []:
                return shapely.MultiPoint()
            return shapely.MultiPoint(_positions(coordinates, kind, where))
        if kind == "LineString":
            if coordinates == []:
                return shapely.LineString()
            return shapely.LineString(_positions(coordinates, kind, where))
        if kind == "MultiLineString":
            lines = _nested(coordinates, kind, where)
            return shapely.MultiLineString([_positions(line, kind, where) for line in lines])
        if kind == "Polygon":
            return _polygon(coordinates, kind, where)
        polygons = _nested(coordinates, kind, where)
        return shapely.MultiPolygon([_polygon(rings, kind, where) for rings in polygons])
    except GeoJSONError:
        raise
    except (ValueError, TypeError, shapely.errors.ShapelyError) as exc:
        raise GeoJSONError(f"{where}: bad {kind} coordinates: {str(exc).strip()}") from None


def _parse_geometry(obj: Any, where: str, repair: bool) -> tuple[BaseGeometry, str | None]:
    """Return (geometry, reason it was invalid or None)."""
    geometry = _geometry_from_obj(obj, where)
    if geometry.is_empty:
        raise GeoJSONError(f"{where}: the {geometry.geom_type} has no coordinates")
    if geometry.is_valid:
        return geometry, None
    reason = shapely.is_valid_reason(geometry)
    if not repair:
        return geometry, reason
    fixed = _polygonal_part(shapely.make_valid(geometry)) if _is_polygonal(geometry) else None
    if fixed is None or fixed.is_empty:
        # Nothing with an area is left (e.g. a polygon folded onto a line): keep what
        # make_valid made of it rather than dropping the object.
        fixed = shapely.make_valid(geometry)
    if fixed.is_empty:
        raise GeoJSONError(f"{where}: invalid {geometry.geom_type} ({reason}) cannot be repaired")
    return fixed, reason


def _is_polygonal(geometry: BaseGeometry) -> bool:
    return geometry.geom_type in ("Polygon", "MultiPolygon")


def _polygonal_part(geometry: BaseGeometry) -> BaseGeometry | None:
    """The polygons of make_valid's result (which may add zero-area lines) as one geometry."""
    if _is_polygonal(geometry):
        return geometry
    polygons: list[shapely.Polygon] = []
    for part in getattr(geometry, "geoms", []):
        if part.geom_type == "Polygon":
            polygons.append(part)
        elif part.geom_type == "MultiPolygon":
            polygons.extend(part.geoms)
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)


# --------------------------------------------------------------------------------------- writing


def to_geojson_obj(annotations: Iterable[Annotation]) -> dict[str, Any]:
    """The QuPath 0.4-0.6 GeoJSON FeatureCollection of ``annotations`` (what
    :func:`write_geojson` writes)."""
    features = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, Annotation):
            raise GeoJSONError(
                f"annotation {index}: expected an Annotation, got {type(annotation).__name__}"
            )
        features.append(_feature_of(annotation, index))
    return {"type": "FeatureCollection", "features": features}


def _feature_of(annotation: Annotation, index: int) -> dict[str, Any]:
    where = f"annotation {index} (id {annotation.id!r})"
    if annotation.object_type not in _TYPE_OUT:
        raise GeoJSONError(
            f"{where}: unknown object_type {annotation.object_type!r}; "
            f"expected one of {', '.join(_TYPE_OUT)}"
        )
    feature: dict[str, Any] = {
        "type": "Feature",
        "id": annotation.id,
        "geometry": _geometry_obj(annotation.geometry, where),
    }
    if annotation.nucleus_geometry is not None:
        feature["nucleusGeometry"] = _geometry_obj(annotation.nucleus_geometry, where)
    properties: dict[str, Any] = {"objectType": _TYPE_OUT[annotation.object_type]}
    if annotation.name is not None:
        properties["name"] = annotation.name
    if annotation.path_class is not None:
        properties["classification"] = _classification_obj(annotation.path_class)
    if annotation.locked:
        properties["isLocked"] = True
    if annotation.measurements:
        measurements = {}
        for key, value in annotation.measurements.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise GeoJSONError(f"{where}: measurement {key!r} is not a number: {value!r}")
            measurements[str(key)] = float(value)
        properties["measurements"] = measurements
    if annotation.metadata:
        properties["metadata"] = {k: str(v) for k, v in annotation.metadata.items()}
    for key, value in annotation.extra_properties.items():
        if key not in properties and key not in _KNOWN_PROPERTIES:
            properties[key] = value
    feature["properties"] = properties
    return feature


def _classification_obj(path_class: PathClass) -> dict[str, Any]:
    obj: dict[str, Any]
    if path_class.is_derived:
        obj = {"names": list(path_class.names)}
    else:
        obj = {"name": path_class.names[0]}
    if path_class.color is not None:
        obj["color"] = list(path_class.color)
    return obj


def _geometry_obj(geometry: BaseGeometry, where: str) -> dict[str, Any]:
    if not isinstance(geometry, BaseGeometry):
        raise GeoJSONError(f"{where}: geometry must be a shapely geometry, got {geometry!r}")
    if geometry.is_empty:
        raise GeoJSONError(f"{where}: the {geometry.geom_type} is empty")
    kind = geometry.geom_type
    if kind == "GeometryCollection":
        parts = getattr(geometry, "geoms", [])
        return {"type": kind, "geometries": [_geometry_obj(part, where) for part in parts]}
    if kind == "LinearRing":
        kind = "LineString"
    return {"type": kind, "coordinates": _coordinates(geometry)}


def _coordinates(geometry: BaseGeometry) -> Any:
    kind = geometry.geom_type
    if kind == "Point":
        return _position_list(geometry)[0]
    if kind in ("LineString", "LinearRing", "MultiPoint"):
        return _position_list(geometry)
    if kind == "Polygon":
        rings = [geometry.exterior, *geometry.interiors]
        return [_position_list(ring) for ring in rings]
    return [_coordinates(part) for part in geometry.geoms]


def _position_list(geometry: BaseGeometry) -> list[Any]:
    """Positions as nested lists; whole-number coordinates as ints (QuPath writes 12104, not
    12104.0, and WSI-SAM polygons follow pixel edges)."""
    array = shapely.get_coordinates(geometry, include_z=geometry.has_z)
    if (np.abs(array) < 2**53).all() and (array == np.round(array)).all():
        return array.astype(np.int64).tolist()
    return array.tolist()


def write_geojson(path: str | os.PathLike[str], annotations: Iterable[Annotation]) -> None:
    """Write ``annotations`` to ``path`` as a QuPath GeoJSON FeatureCollection, atomically
    (a temporary file in the same folder, then a rename: the old file stays intact on failure).

    Raises:
        GeoJSONError: an annotation cannot be written, or the folder is missing or read-only.
    """
    target = Path(path)
    try:
        text = json.dumps(to_geojson_obj(annotations), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # e.g. an extra property that is not JSON
        raise GeoJSONError(f"cannot write {target}: {exc}") from None
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise GeoJSONError(f"cannot write {target}: the folder {folder} does not exist")
    if target.is_dir():
        raise GeoJSONError(f"cannot write {target}: it is a folder")
    if not is_writable_dir(folder):
        raise GeoJSONError(f"cannot write {target}: the folder {folder} is read-only")
    try:
        atomic_write_bytes(target, text.encode("utf-8"))
    except OSError as exc:
        raise GeoJSONError(f"cannot write {target}: {exc.strerror or exc}") from None
