"""QuPath's ``data.qpdata`` read without Java (QuPath 0.2 to 0.7).

A ``data.qpdata`` file is one Java ``ObjectOutputStream``: the string "Data file version N", a
JSON header (N >= 3: ``dataVersion``, ``qupathVersion``, ``server``; N = 2 stores the image path
there), a ``Locale``, the ``ImageType`` enum, the colour-deconvolution stains (or null), a
``Workflow``, the ``PathObjectHierarchy`` (``rootObject``, ``tmaGrid``), a ``HashMap`` of
properties, and the string "EOF". The stream is decoded by :mod:`qupath_bridge._javaser` (a
focused reader of Java serialization; its docstring says why not ``javaobj-py3``); this module
gives QuPath's classes their meaning, following what each class's ``readExternal`` reads:

- every PathObject: name, colour (Integer or null), then either a MetadataMap (format 3: the
  UUID is under "Object ID" from QuPath 0.4 on) and the measurement list, or (format 4) a UUID, a
  field count and that many fields; then the child count and the children;
- PathROIObject (annotations, detections, cells, tiles, TMA cores): a locked Boolean (absent in
  very old files), the PathClass (``parentClass``, ``name``, ``colorRGB``: a derived class is
  the parent chain), the ROI and the classification probability; cells add a nucleus ROI; TMA
  cores add a "missing" flag;
- ROIs: ``GeometryROI$WKBSerializationProxy`` (WKB + plane + cached statistics, QuPath 0.2.0-m6
  on), the legacy ``AreaROI`` (float rings combined even-odd), polygon / polyline / points (float
  x, y arrays), rectangle / ellipse / line (x, y, x2, y2). Ellipses become the 100-point polygon
  QuPath's own conversion makes.

Files before QuPath 0.4 store no object ids; their objects get ids derived from their place in
the file, the same at every reading. Each object is converted as soon as its data has been read
(no Java object graph is kept), from a memory-mapped file. Where QuPath cached an area ROI's
area, the geometry read must give the same area (within 0.1 %), which catches damaged
coordinates (the format has no checksum: damage inside a measurement value cannot be seen).
Damaged or truncated files raise :class:`QpDataError` naming the file, the problem and the byte
offset; when only what follows the hierarchy is damaged, the objects are returned with a
:class:`QpDataWarning`. The bridge never writes ``data.qpdata``.

    >>> data = read_qpdata("project/data/1/data.qpdata")
    >>> data.qupath_version, len(data.objects)
    ('0.6.0', 131)
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ._javaser import (
    TC_BLOCKDATA,
    TC_BLOCKDATALONG,
    ClassDesc,
    ExternalReader,
    JavaEnum,
    JavaObject,
    JavaStream,
    JavaStreamError,
)
from .errors import BridgeError, GeometryRepairedWarning
from .geojson import REPAIRED_METADATA_KEY, _polygonal_part
from .model import Annotation, PathClass, rgb_from_packed

__all__ = ["QpData", "QpDataError", "QpDataWarning", "read_qpdata"]

_PKG = "qupath.lib.objects."
#: QuPath's PathObject classes -> the bridge's object types (None: the root).
_OBJECT_CLASSES: dict[str, str | None] = {
    _PKG + "PathRootObject": None,
    _PKG + "PathAnnotationObject": "annotation",
    _PKG + "PathDetectionObject": "detection",
    _PKG + "PathCellObject": "cell",
    _PKG + "PathTileObject": "tile",
    _PKG + "TMACoreObject": "tma_core",
}
_PATH_OBJECT = _PKG + "PathObject"
_ROI_OBJECT = _PKG + "PathROIObject"
_METADATA_MAP = _PKG + "MetadataMap"
_HIERARCHY = _PKG + "hierarchy.PathObjectHierarchy"
_PATH_CLASS = _PKG + "classes.PathClass"
_ID_KEY = "Object ID"
_ROI = "qupath.lib.roi."
#: Number of points of QuPath's ellipse polygons (JTS GeometricShapeFactory's default).
_ELLIPSE_POINTS = 100
#: Namespace of the ids given to objects of files that store none.
_NO_ID_NAMESPACE = uuid.UUID("5d0c2a4e-8f7b-4c59-9a51-3f1e7b2d6c10")
#: Relative tolerance between QuPath's cached area and the area of the geometry read.
_AREA_TOLERANCE = 1e-3


class QpDataError(BridgeError, ValueError):
    """A ``data.qpdata`` (or other QuPath object file) that cannot be read; the message names
    the file, the problem and how far reading got."""


class QpDataWarning(UserWarning):
    """Part of a ``data.qpdata`` could not be read, but every object was (the objects are
    returned), or an object was left out (the message says which and why)."""


@dataclass
class QpData:
    """What :func:`read_qpdata` read.

    Attributes:
        path: the file.
        data_version: the data file version (3 for QuPath 0.3 to 0.7, 2 before), or None for a
            bare serialized hierarchy or object.
        qupath_version: the QuPath version that wrote the file (from the header), if recorded.
        server: the image server description in the header (its ``uri`` names the image).
        header: the whole JSON header ({} when the file has none).
        image_type: QuPath's image type (``"BRIGHTFIELD_H_E"``, ``"FLUORESCENCE"``, ...).
        objects: every object below the root, parents before their children, in QuPath's
            order, as :class:`Annotation` (level-0 pixels; ``parent_id`` set).
        complete: False when the file was damaged after the hierarchy (see :class:`QpDataWarning`).
    """

    path: Path
    data_version: int | None
    qupath_version: str | None
    server: dict[str, Any] | None
    header: dict[str, Any]
    image_type: str | None
    objects: list[Annotation] = field(default_factory=list)
    complete: bool = True


@dataclass(eq=False)
class _Node:
    """One PathObject as read, before its place in the hierarchy is known."""

    object_type: str | None
    annotation: Annotation | None
    children: list[_Node]
    offset: int


class _ObjectError(Exception):
    """An object's data makes no sense (turned into a QpDataError with the file's name)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class _Reader:
    """Decodes QuPath's classes while the Java stream is read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.objects_read = 0
        self.warnings: list[tuple[type[Warning], str]] = []
        self._classes: dict[int, PathClass | None] = {}
        self._class_refs: list[JavaObject] = []  # keeps the ids in _classes valid

    def handlers(self) -> dict[str, Any]:
        handlers: dict[str, Any] = {name: self._path_object for name in _OBJECT_CLASSES}
        handlers[_METADATA_MAP] = _metadata_map
        return handlers

    def handler_for(self, desc: ClassDesc) -> Any:
        """A handler for PathObject subclasses this module does not name (extensions)."""
        names = {cls.name for cls in desc.chain()}
        return self._path_object if _PATH_OBJECT in names else None

    # ------------------------------------------------------------------ PathObject

    def _path_object(self, data: ExternalReader, desc: ClassDesc) -> _Node:
        start = data.offset
        chain = [cls.name for cls in desc.chain()]
        object_type = _object_type(chain)
        name = data.read_object()
        if name is not None and not isinstance(name, str):
            raise _ObjectError(f"a {_short(desc.name)} has a name that is not a string", start)
        color = data.read_object()
        metadata: dict[str, str] = {}
        measurements: Any = None
        object_id: str | None = None
        item = data.read_object()
        if isinstance(item, str) and _is_uuid(item):
            # Data file version 4 (QuPath 0.5+ when requested): the UUID, a field count, fields.
            object_id = item
            count = data.read_int()
            if not 0 <= count <= 64:
                raise _ObjectError(f"a {_short(desc.name)} claims {count} extra fields", start)
            for _ in range(count):
                item = data.read_object()
                if isinstance(item, dict):
                    metadata = item
                elif item is not None:
                    measurements = item
        else:
            if isinstance(item, dict):
                metadata = dict(item)
                candidate = metadata.get(_ID_KEY)
                if isinstance(candidate, str) and _is_uuid(candidate):
                    object_id = candidate
                    del metadata[_ID_KEY]
                item = data.read_object()
            measurements = item
        n_children = data.read_int()
        if n_children < 0:
            raise _ObjectError(f"a {_short(desc.name)} claims {n_children} children", start)
        children: list[_Node] = []
        for _ in range(n_children):
            child = data.read_object()
            if not isinstance(child, _Node):
                raise _ObjectError(
                    f"a child of a {_short(desc.name)} is a {_what(child)}, not a QuPath object",
                    data.offset,
                )
            children.append(child)
        if object_type is None:
            self.objects_read += 1
            return _Node(None, None, children, start)
        if _ROI_OBJECT not in chain:
            raise _ObjectError(f"{desc.name} is not a QuPath object with a ROI", start)

        item = data.read_object()
        locked = False
        if isinstance(item, bool):
            locked = item
            item = data.read_object()
        path_class = self._path_class(item, start)
        roi = data.read_object()
        data.read_double()  # classification probability: not kept
        nucleus = data.read_object() if object_type == "cell" else None
        missing = data.read_boolean() if object_type == "tma_core" else None

        # Files before QuPath 0.4 store no ids: derive one from the object's place in the file,
        # so that reading the same file again gives the same ids.
        annotation_id = object_id or str(uuid.uuid5(_NO_ID_NAMESPACE, f"{self.size}:{start}"))
        where = f"the {object_type} {annotation_id}"
        geometry, repaired = _roi_geometry(roi, where, start)
        if repaired is not None:
            metadata[REPAIRED_METADATA_KEY] = repaired
            self.warnings.append(
                (GeometryRepairedWarning, f"{where}: invalid geometry repaired ({repaired})")
            )
        nucleus_geometry = None
        if nucleus is not None:
            nucleus_geometry, nucleus_repaired = _roi_geometry(nucleus, f"{where} nucleus", start)
            if nucleus_repaired is not None:
                self.warnings.append(
                    (GeometryRepairedWarning, f"{where} nucleus: invalid geometry repaired")
                )
        extra: dict[str, Any] = {}
        if isinstance(color, int) and not isinstance(color, bool):
            extra["color"] = list(rgb_from_packed(color))
        if missing is not None:
            extra["isMissing"] = missing
        self.objects_read += 1
        node = _Node(object_type, None, children, start)
        if geometry is None or geometry.is_empty:
            self.warnings.append((QpDataWarning, f"{where} has an empty ROI and is left out"))
            return node
        node.annotation = Annotation(
            geometry=geometry,
            object_type=object_type,
            path_class=path_class,
            name=name,
            id=annotation_id,
            locked=locked,
            measurements=_measurements(measurements, where, start),
            metadata=metadata,
            nucleus_geometry=nucleus_geometry,
            extra_properties=extra,
        )
        return node

    def _path_class(self, value: Any, offset: int) -> PathClass | None:
        if value is None:
            return None
        if not isinstance(value, JavaObject) or value.class_name != _PATH_CLASS:
            raise _ObjectError(f"a classification was expected, found a {_what(value)}", offset)
        key = id(value)
        if key in self._classes:
            return self._classes[key]
        names: list[str] = []
        node: Any = value
        depth = 0
        while node is not None:
            if not isinstance(node, JavaObject) or node.class_name != _PATH_CLASS or depth > 64:
                raise _ObjectError(f"a derived classification has a bad parent: {node!r}", offset)
            name = node.fields.get("name")
            if name is not None:
                if not isinstance(name, str):
                    raise _ObjectError(f"a class name is a {_what(name)}", offset)
                names.append(name)
            node = node.fields.get("parentClass")
            depth += 1
        names.reverse()
        color_value = value.fields.get("colorRGB")
        color = None
        if isinstance(color_value, int) and not isinstance(color_value, bool):
            color = rgb_from_packed(color_value)
        path_class = None
        if names:  # QuPath's "null class" has no name and no parent: unclassified
            try:
                path_class = PathClass(tuple(names), color)
            except ValueError as exc:
                raise _ObjectError(f"bad classification {names!r}: {exc}", offset) from None
        self._classes[key] = path_class
        self._class_refs.append(value)
        return path_class


def _metadata_map(data: ExternalReader, _desc: ClassDesc) -> dict[str, str]:
    start = data.offset
    data.read_object()  # version
    keys = data.read_object()
    values = data.read_object()
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise _ObjectError("an object's metadata has unequal or missing keys and values", start)
    result: dict[str, str] = {}
    for key, value in zip(keys, values, strict=True):
        if not isinstance(key, str) or not isinstance(value, str | None):
            raise _ObjectError(f"an object's metadata entry {key!r} is not text", start)
        if value is not None:
            result[key] = value
    return result


def _object_type(chain: list[str]) -> str | None:
    for name in reversed(chain):
        if name in _OBJECT_CLASSES:
            return _OBJECT_CLASSES[name]
    if _ROI_OBJECT in chain:
        return "detection" if _PKG + "PathDetectionObject" in chain else "annotation"
    return None


def _is_uuid(text: str) -> bool:
    if len(text) > 36 or "-" not in text:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _short(class_name: str) -> str:
    return class_name.rsplit(".", 1)[-1]


def _what(value: Any) -> str:
    if isinstance(value, JavaObject):
        return _short(value.class_name)
    if isinstance(value, _Node):
        return "QuPath object"
    return type(value).__name__


# ---------------------------------------------------------------------- measurements


def _measurements(value: Any, where: str, offset: int) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, JavaObject):
        raise _ObjectError(f"{where}: the measurements are a {_what(value)}", offset)
    fields = value.fields
    result: dict[str, float] = {}
    if isinstance(fields.get("list"), list):  # DefaultMeasurementList: (name, value) objects
        for item in fields["list"]:
            if not isinstance(item, JavaObject) or not isinstance(item.fields.get("name"), str):
                raise _ObjectError(f"{where}: a measurement is a {_what(item)}", offset)
            number = item.fields.get("value")
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise _ObjectError(
                    f"{where}: measurement {item.fields['name']!r} has no value", offset
                )
            result[item.fields["name"]] = float(number)
        return result
    names, values = fields.get("names"), fields.get("values")
    if isinstance(names, list) and isinstance(values, np.ndarray):  # NumericMeasurementList
        if len(values) < len(names) or not all(isinstance(n, str) for n in names):
            raise _ObjectError(
                f"{where}: {len(names)} measurement names but {len(values)} values", offset
            )
        for key, number in zip(names, values[: len(names)].tolist(), strict=True):
            result[key] = float(number)
        return result
    raise _ObjectError(f"{where}: unknown measurement list {value.class_name}", offset)


# ---------------------------------------------------------------------- ROIs


def _roi_geometry(roi: Any, where: str, offset: int) -> tuple[BaseGeometry | None, str | None]:
    """(geometry in level-0 pixels, reason it was repaired or None)."""
    if not isinstance(roi, JavaObject) or not roi.class_name.startswith(_ROI):
        raise _ObjectError(f"{where}: a ROI was expected, found a {_what(roi)}", offset)
    kind = roi.class_name[len(_ROI) :].split("$")[0]
    fields = roi.fields
    try:
        if kind == "GeometryROI":
            wkb = fields.get("wkb")
            if not isinstance(wkb, bytes):
                raise _ObjectError(f"{where}: unsupported ROI {roi.class_name}", offset)
            geometry = shapely.from_wkb(wkb)
            return _checked_area(geometry, _cached_area(fields.get("stats")), where, offset)
        if kind == "PolygonROI":
            ring = _vertices(fields, where, offset)
            if len(ring) == 0:
                return None, None
            return _checked_area(_polygon(ring), _cached_area(fields.get("stats")), where, offset)
        if kind == "AreaROI":
            return _area_roi(fields, where, offset)
        if kind == "PolylineROI":
            line = _vertices(fields, where, offset)
            if len(line) == 0:
                return None, None
            return (shapely.LineString(line) if len(line) > 1 else shapely.Point(line[0])), None
        if kind == "PointsROI":
            points = _vertices(fields, where, offset)
            if len(points) == 0:
                return None, None
            if len(points) == 1:
                return shapely.Point(points[0]), None
            return shapely.MultiPoint(points), None
        if kind in ("RectangleROI", "EllipseROI", "LineROI"):
            x, y, x2, y2 = (_number(fields, key, where, offset) for key in ("x", "y", "x2", "y2"))
            if kind == "LineROI":
                return shapely.LineString([(x, y), (x2, y2)]), None
            return _bounded(kind, x, y, x2, y2), None
    except (shapely.errors.ShapelyError, ValueError, TypeError) as exc:
        raise _ObjectError(f"{where}: the {kind} cannot be read: {exc}", offset) from None
    raise _ObjectError(f"{where}: unsupported ROI {roi.class_name}", offset)


def _number(fields: dict[str, Any], key: str, where: str, offset: int) -> float:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _ObjectError(f"{where}: the ROI's {key} is {value!r}", offset)
    return float(value)


def _vertices(fields: dict[str, Any], where: str, offset: int) -> np.ndarray:
    x, y = fields.get("x"), fields.get("y")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or x.shape != y.shape:
        raise _ObjectError(f"{where}: the ROI has no matching x and y vertices", offset)
    xy = np.column_stack([x.astype(np.float64), y.astype(np.float64)])
    if not np.isfinite(xy).all():
        raise _ObjectError(f"{where}: the ROI has vertices that are not numbers", offset)
    return xy


def _polygon(ring: np.ndarray) -> BaseGeometry:
    if len(ring) < 3:
        return shapely.LineString(ring) if len(ring) > 1 else shapely.Point(ring[0])
    return shapely.Polygon(ring)


def _bounded(kind: str, x: float, y: float, x2: float, y2: float) -> BaseGeometry:
    x0, x1 = sorted((x, x2))
    y0, y1 = sorted((y, y2))
    if x0 == x1 and y0 == y1:
        return shapely.Point(x0, y0)
    if x0 == x1 or y0 == y1:
        return shapely.LineString([(x0, y0), (x1, y1)])
    if kind == "RectangleROI":
        return shapely.box(x0, y0, x1, y1)
    # As JTS's GeometricShapeFactory.createEllipse (what QuPath uses): 100 points from angle 0.
    rx, ry = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    angles = np.arange(_ELLIPSE_POINTS) * (2.0 * math.pi / _ELLIPSE_POINTS)
    ring = np.column_stack([rx * np.cos(angles) + x0 + rx, ry * np.sin(angles) + y0 + ry])
    return shapely.Polygon(ring)


def _area_roi(
    fields: dict[str, Any], where: str, offset: int
) -> tuple[BaseGeometry | None, str | None]:
    xs, ys = fields.get("x"), fields.get("y")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
        raise _ObjectError(f"{where}: the AreaROI has no matching rings", offset)
    polygons = []
    for x, y in zip(xs, ys, strict=True):
        ring = _vertices({"x": x, "y": y}, where, offset)
        if len(ring) >= 3:
            polygon = shapely.Polygon(ring)
            polygons.append(polygon if polygon.is_valid else shapely.make_valid(polygon))
    if not polygons:
        return None, None
    # Java's Area rings combine even-odd: a ring inside another is a hole.
    geometry = reduce(shapely.symmetric_difference, polygons)
    geometry = _polygonal_part(geometry) or geometry
    return _checked_area(geometry, _cached_area(fields.get("stats")), where, offset)


def _cached_area(stats: Any) -> float | None:
    if not isinstance(stats, JavaObject):
        return None
    for key in ("area", "areaCached"):
        value = stats.fields.get(key)
        if isinstance(value, float) and math.isfinite(value):
            return value
    return None


def _checked_area(
    geometry: BaseGeometry, cached: float | None, where: str, offset: int
) -> tuple[BaseGeometry, str | None]:
    """Repair an invalid polygon (as the GeoJSON reader does) and compare the area with what
    QuPath cached: a mismatch means damaged coordinates."""
    reason = None
    fixed = geometry
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        made = shapely.make_valid(geometry)
        fixed = _polygonal_part(made) or made
    if cached is not None and cached > 0:
        areas = (fixed.area, geometry.area)
        if all(abs(area - cached) > _AREA_TOLERANCE * cached + 1e-6 for area in areas):
            raise _ObjectError(
                f"{where}: QuPath stored an area of {cached:.6g} px² but the outline read gives "
                f"{fixed.area:.6g} px²: the coordinates are damaged",
                offset,
            )
    return fixed, reason


# ---------------------------------------------------------------------- the file


def read_qpdata(path: str | os.PathLike[str]) -> QpData:
    """Read the objects (and header) of a QuPath ``data.qpdata`` without Java.

    Also reads a bare serialized ``PathObjectHierarchy`` or PathObject (QuPath's own test files),
    with ``data_version`` None.

    Raises:
        QpDataError: the file is missing, not a QuPath data file, truncated or damaged before the
            hierarchy was complete; the message names the file, the problem and the byte offset.
    """
    file = Path(path)
    try:
        handle = open(file, "rb")  # noqa: SIM115 (closed below, after the mmap)
    except OSError as exc:
        raise QpDataError(f"cannot read {file}: {exc.strerror or exc}") from None
    with handle, _mapped(handle, file) as data:
        return _read(file, data)


@contextlib.contextmanager
def _mapped(handle: Any, file: Path) -> Iterator[Any]:
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        raise QpDataError(f"{file} is empty: it is not a QuPath data file")
    try:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        yield handle.read()
        return
    try:
        yield mapped
    finally:
        mapped.close()


def _read(file: Path, data: Any) -> QpData:
    reader = _Reader(len(data))
    try:
        stream = JavaStream(data, reader.handlers(), str(file), reader.handler_for)
    except JavaStreamError as exc:
        raise QpDataError(f"{file} is not a QuPath data file: {exc}") from None
    result = QpData(file, None, None, None, {}, None)
    root: _Node | None = None
    loose: list[_Node] = []
    try:
        if stream.at_end():
            raise JavaStreamError("it holds nothing but the stream header", stream.pos)
        if stream.peek_type() in (TC_BLOCKDATA, TC_BLOCKDATALONG):  # a data file
            first = ExternalReader(stream).read_utf()
            if not first.startswith("Data file version"):
                raise JavaStreamError(f"it starts with {first[:40]!r}, not 'Data file version'", 0)
            result.data_version = _version_number(first)
            _header(result, stream.read_object(), file)
            while not stream.at_end():
                item = stream.read_object()
                if item == "EOF":
                    break
                if isinstance(item, JavaEnum) and item.class_name.endswith("ImageData$ImageType"):
                    result.image_type = item.constant
                elif isinstance(item, JavaObject) and item.class_name == _HIERARCHY:
                    root = _hierarchy_root(item, file)
        else:  # a bare hierarchy or object
            while not stream.at_end():
                item = stream.read_object()
                if isinstance(item, JavaObject) and item.class_name == _HIERARCHY:
                    root = _hierarchy_root(item, file)
                    break
                if isinstance(item, _Node):
                    loose.append(item)
            if root is None and not loose:
                raise JavaStreamError("it holds no QuPath hierarchy or object", stream.pos)
    except (JavaStreamError, _ObjectError) as exc:
        message = _progress(file, exc, stream, reader)
        if root is None:
            raise QpDataError(message) from None
        warnings.warn(f"{message}; every object had been read", QpDataWarning, stacklevel=3)
        result.complete = False
    except RecursionError:
        raise QpDataError(
            _progress(
                file, _ObjectError("objects are nested too deeply", stream.pos), stream, reader
            )
        ) from None
    if result.data_version is not None and root is None:
        raise QpDataError(f"{file} has no object hierarchy (read to the end, {stream.size} bytes)")
    nodes = root.children if root is not None else loose
    result.objects = list(_flatten(nodes, None))
    for category, message in reader.warnings:
        warnings.warn(f"{file}: {message}", category, stacklevel=3)
    return result


def _progress(file: Path, exc: Exception, stream: JavaStream, reader: _Reader) -> str:
    offset = getattr(exc, "offset", stream.pos)
    percent = 100.0 * offset / stream.size if stream.size else 0.0
    return (
        f"{file}: {exc} (stopped at byte {offset} of {stream.size}, {percent:.0f} %, after "
        f"{reader.objects_read} objects)"
    )


def _version_number(first: str) -> int | None:
    tail = first[len("Data file version") :].strip()
    return int(tail) if tail.isdigit() else None


def _header(result: QpData, value: Any, file: Path) -> None:
    if not isinstance(value, str):
        raise JavaStreamError(f"the header is a {_what(value)}, not text", 0)
    text = value.strip()
    if text.startswith("{"):
        try:
            header = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JavaStreamError(f"its JSON header is damaged ({exc.msg})", 0) from None
        if not isinstance(header, dict):
            raise JavaStreamError("its JSON header is not an object", 0)
        result.header = header
        version = header.get("qupathVersion")
        result.qupath_version = str(version) if version is not None else None
        server = header.get("server")
        result.server = server if isinstance(server, dict) else None
    else:  # QuPath 0.2: the image path
        result.header = {"serverPath": text}


def _hierarchy_root(hierarchy: JavaObject, file: Path) -> _Node:
    root = hierarchy.fields.get("rootObject")
    if not isinstance(root, _Node):
        raise JavaStreamError(f"the hierarchy's root is a {_what(root)}", 0)
    grid = hierarchy.fields.get("tmaGrid")
    if isinstance(grid, JavaObject) and isinstance(grid.fields.get("cores"), list):
        known = {id(node) for node in _walk(root.children)}
        for core in grid.fields["cores"]:
            if isinstance(core, _Node) and id(core) not in known:
                root.children.append(core)
    return root


def _walk(nodes: list[_Node]) -> Iterator[_Node]:
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _flatten(nodes: list[_Node], parent_id: str | None) -> Iterator[Annotation]:
    """Parents before children, in QuPath's order, without recursion."""
    stack: list[tuple[_Node, str | None]] = [(node, parent_id) for node in reversed(nodes)]
    while stack:
        node, parent = stack.pop()
        own = parent
        if node.annotation is not None:
            node.annotation.parent_id = parent
            own = node.annotation.id
            yield node.annotation
        stack.extend((child, own) for child in reversed(node.children))
