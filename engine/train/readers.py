"""Readers for the annotations that training and evaluation data come with.

Each reader returns plain :class:`AnnotatedObject` values: a shapely geometry in level-0 pixels of
its image or slide, and a class name. QuPath GeoJSON is read by ``qupath_bridge`` in the command
line layer (the engine never imports it); this module covers the two other formats users have:

- instance label maps (PNG / TIFF, 0 = background, one integer per object) and binary masks
  (0 / 255), whose 4-connected components become the objects;
- ASAP XML (CAMELYON16 lesions) and Aperio ImageScope XML, with their groups / layers as classes
  and their exclusion regions as holes.

Geometries from label maps are exact: each object is the union of its pixels (pixel ``(x, y)``
covers the square ``[x, x+1] x [y, y+1]``), so rasterising it again gives back the same pixels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry


class AnnotationReadError(ValueError):
    """An annotation file could not be read; the message names the file and the reason."""


@dataclass(frozen=True)
class AnnotatedObject:
    """One object to segment: its outline in level-0 pixels and its class.

    ``geometry`` is a valid shapely Polygon or MultiPolygon; ``class_name`` is ``None`` when the
    source has no classes (a label map); ``name`` is the source's own label (instance value,
    annotation name) for messages.
    """

    geometry: BaseGeometry
    class_name: str | None = None
    name: str | None = None


# ---------------------------------------------------------------------------------- label maps

LABEL_MAP_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")


def read_label_image(path: str | Path) -> np.ndarray:
    """Load a label map or mask file as a 2-D integer array (H, W).

    Colour label maps (one RGB colour per object) are turned into one integer per colour;
    16-bit PNG and TIFF keep their values.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationReadError(f"{path}: no such label map")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(str(path)))
        else:
            from PIL import Image

            with Image.open(path) as opened:
                image: Image.Image = opened
                if image.mode in ("P", "RGBA", "LA", "CMYK", "YCbCr", "HSV"):
                    image = image.convert("RGB")
                array = np.asarray(image)
    except Exception as exc:  # PIL and tifffile raise many types for damaged files
        raise AnnotationReadError(f"{path}: cannot read as an image ({exc})") from exc
    array = np.squeeze(array)
    colour = array.ndim == 3
    if array.ndim == 3:
        if array.shape[-1] not in (3, 4):
            raise AnnotationReadError(
                f"{path}: expected a 2-D label map or an RGB image, got shape {array.shape}"
            )
        rgb = array[..., :3].astype(np.int64)
        array = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if array.ndim != 2:
        raise AnnotationReadError(f"{path}: expected a 2-D label map, got shape {array.shape}")
    integral = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if not integral and not np.all(np.isfinite(array)):
        raise AnnotationReadError(f"{path}: label map has NaN or infinite values")
    if not integral and not np.all(np.equal(np.mod(array, 1), 0)):
        raise AnnotationReadError(f"{path}: label map has non-integer values")
    labels = array.astype(np.int64)
    from engine.validation import check_label_values

    try:
        check_label_values(labels, path, colour=colour)
    except ValueError as exc:
        raise AnnotationReadError(str(exc)) from None
    return labels


def _row_runs(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of equal non-zero value: (row, x_start, x_end exclusive, value) arrays."""
    h, w = label_map.shape
    padded = np.zeros((h, w + 2), dtype=label_map.dtype)
    padded[:, 1:-1] = label_map
    change = padded[:, 1:] != padded[:, :-1]  # (h, w + 1): a run boundary before column j
    rows, cols = np.nonzero(change)
    # consecutive boundaries in one row delimit runs; values come from the run's first pixel
    same_row = rows[:-1] == rows[1:]
    starts = cols[:-1][same_row]
    ends = cols[1:][same_row]
    run_rows = rows[:-1][same_row]
    values = label_map[run_rows, starts] if len(starts) else np.zeros(0, label_map.dtype)
    keep = values != 0
    return run_rows[keep], starts[keep], ends[keep], values[keep]


def _union_of_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> BaseGeometry:
    boxes = shapely.box(starts, rows, ends, rows + 1)
    return shapely.union_all(boxes)


def label_map_to_objects(
    label_map: np.ndarray,
    instances: str = "auto",
    class_name: str | None = None,
    min_area: float = 1.0,
) -> list[AnnotatedObject]:
    """Objects of a label map (H, W), in pixel coordinates of the map.

    ``instances``: ``"labels"`` makes one object per non-zero value (an object in pieces stays one
    MultiPolygon); ``"components"`` splits every non-zero region into 4-connected components (for
    binary masks, where touching objects cannot be told apart anyway); ``"auto"`` uses components
    when the map has a single non-zero value (a binary 0/1 or 0/255 mask) and labels otherwise.
    Objects smaller than ``min_area`` pixels are dropped. Objects come ordered by label value, then
    top-to-bottom.
    """
    if label_map.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label_map.shape}")
    if instances not in ("auto", "labels", "components"):
        raise ValueError(f"instances must be 'auto', 'labels' or 'components', got {instances!r}")
    rows, starts, ends, values = _row_runs(np.asarray(label_map))
    if len(values) == 0:
        return []
    distinct = np.unique(values)
    split = instances == "components" or (instances == "auto" and len(distinct) == 1)
    objects: list[AnnotatedObject] = []
    for value in distinct:
        sel = values == value
        shape = _union_of_runs(rows[sel], starts[sel], ends[sel])
        pieces = _polygons(shape)
        if split:
            pieces.sort(key=lambda p: (p.bounds[1], p.bounds[0]))
            for i, piece in enumerate(pieces):
                if piece.area >= min_area:
                    objects.append(AnnotatedObject(piece, class_name, f"{value}.{i}"))
        else:
            geometry = pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)
            if geometry.area >= min_area:
                objects.append(AnnotatedObject(geometry, class_name, str(value)))
    return objects


def read_label_map(
    path: str | Path, instances: str = "auto", class_name: str | None = None
) -> list[AnnotatedObject]:
    """Objects of a label map or mask file (see :func:`label_map_to_objects`)."""
    return label_map_to_objects(read_label_image(path), instances=instances, class_name=class_name)


def _polygons(shape: BaseGeometry) -> list[Polygon]:
    if shape.is_empty:
        return []
    if isinstance(shape, Polygon):
        return [shape]
    if hasattr(shape, "geoms"):
        out: list[Polygon] = []
        for part in shape.geoms:
            out.extend(_polygons(part))
        return out
    return []


def _as_area(shape: BaseGeometry) -> BaseGeometry | None:
    """Valid polygonal part of ``shape`` (None when it has no area)."""
    if not shape.is_valid:
        shape = shapely.make_valid(shape)
    pieces = [p for p in _polygons(shape) if p.area > 0]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)


# ------------------------------------------------------------------------------------- XML

# CAMELYON16 groups: "_0" and "_1" are tumour, "_2" marks normal tissue to cut out of them.
_CAMELYON_TUMOUR_GROUPS = {"_0": "Tumor", "_1": "Tumor"}
_EXCLUSION_GROUPS = {"_2", "exclusion", "exclude", "excluded", "non-tumor", "normal"}


def read_annotation_xml(path: str | Path) -> list[AnnotatedObject]:
    """Areas of an ASAP (``<ASAP_Annotations>``) or Aperio ImageScope (``<Annotations>``) XML file.

    Coordinates are level-0 pixels of the slide the file belongs to. Points, arrows and rulers
    are skipped (they have no area).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationReadError(f"{path}: not a readable XML file ({exc})") from exc
    if root.tag == "ASAP_Annotations":
        return _read_asap(root, path)
    if root.tag == "Annotations":
        return _read_aperio(root, path)
    raise AnnotationReadError(
        f"{path}: unknown annotation XML (root <{root.tag}>; expected <ASAP_Annotations> or "
        "<Annotations>)"
    )


def _float(element: ET.Element, name: str, path: Path) -> float:
    value = element.get(name)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AnnotationReadError(
            f"{path}: <{element.tag}> has a missing or bad {name}={value!r}"
        ) from None


def _ring(coords: list[tuple[float, float]], kind: str, path: Path) -> BaseGeometry | None:
    """Area for one ASAP / ImageScope shape, or None when it has none."""
    if kind in ("rectangle",) and len(coords) >= 2:
        xs, ys = zip(*coords, strict=True)
        return box(min(xs), min(ys), max(xs), max(ys))
    if kind == "ellipse" and len(coords) >= 2:
        (x0, y0), (x1, y1) = coords[0], coords[1]
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
        if rx == 0 or ry == 0:
            return None
        circle = Point(0, 0).buffer(1.0, quad_segs=32)
        return shapely.affinity.affine_transform(circle, [rx, 0, 0, ry, cx, cy])
    if len(coords) < 3:
        return None
    return _as_area(Polygon(coords))


def _combine(
    areas: Iterable[tuple[str, BaseGeometry, str | None]], exclusions: list[BaseGeometry]
) -> list[AnnotatedObject]:
    """Cut exclusion regions out of every area they overlap."""
    cut = shapely.union_all(exclusions) if exclusions else None
    objects: list[AnnotatedObject] = []
    for class_name, geometry, name in areas:
        if cut is not None and geometry.intersects(cut):
            geometry = geometry.difference(cut)
        shape = _as_area(geometry)
        if shape is not None:
            objects.append(AnnotatedObject(shape, class_name, name))
    return objects


def _read_asap(root: ET.Element, path: Path) -> list[AnnotatedObject]:
    areas: list[tuple[str, BaseGeometry, str | None]] = []
    exclusions: list[BaseGeometry] = []
    for annotation in root.iter("Annotation"):
        kind = (annotation.get("Type") or "Polygon").lower()
        if kind in ("dot", "pointset", "measurement"):
            continue
        coordinates = annotation.find("Coordinates")
        points = [] if coordinates is None else list(coordinates.iter("Coordinate"))
        points.sort(key=lambda c: float(c.get("Order", "0")))
        coords = [(_float(c, "X", path), _float(c, "Y", path)) for c in points]
        geometry = _ring(coords, kind, path)
        if geometry is None:
            continue
        group = annotation.get("PartOfGroup") or "None"
        if group.lower() in _EXCLUSION_GROUPS:
            exclusions.append(geometry)
            continue
        class_name = _CAMELYON_TUMOUR_GROUPS.get(group, group if group != "None" else None)
        areas.append((class_name or "Unclassified", geometry, annotation.get("Name")))
    return _combine(areas, exclusions)


# ImageScope region types (Region/@Type). Files in the wild also use 0 and 1 for freehand
# polygons, so the vertices decide: two vertices make a rectangle / an ellipse, more a polygon.
_APERIO_TWO_POINT_KINDS = {"1": "rectangle", "2": "ellipse"}


def _aperio_kind(region_type: str, n_vertices: int) -> str:
    if n_vertices == 2:
        return _APERIO_TWO_POINT_KINDS.get(region_type, "line")
    return "polygon"


def _read_aperio(root: ET.Element, path: Path) -> list[AnnotatedObject]:
    objects: list[AnnotatedObject] = []
    for layer_index, annotation in enumerate(root.iter("Annotation")):
        class_name = annotation.get("Name") or ""
        if not class_name:
            attribute = annotation.find("Attributes/Attribute")
            class_name = (attribute.get("Name") or "") if attribute is not None else ""
        if not class_name:
            class_name = f"Layer {annotation.get('Id', layer_index + 1)}"
        areas: list[tuple[str, BaseGeometry, str | None]] = []
        negatives: list[BaseGeometry] = []
        for region in annotation.iter("Region"):
            coords = [(_float(v, "X", path), _float(v, "Y", path)) for v in region.iter("Vertex")]
            kind = _aperio_kind(region.get("Type", "0"), len(coords))
            if kind == "line":  # rulers and arrows have no area
                continue
            geometry = _ring(coords, kind, path)
            if geometry is None:
                continue
            if region.get("NegativeROA", "0") == "1":
                negatives.append(geometry)
            else:
                areas.append((class_name, geometry, region.get("Id")))
        # a negative region cuts holes in the regions of its own layer only
        objects.extend(_combine(areas, negatives))
    return objects
