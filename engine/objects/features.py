"""Per-object features on multi-resolution embeddings: HR embedding, LR context, measurements.

For a batch of objects on a slide (shapely outlines in level-0 pixels), each object gets

- ``hr`` (256,): the frozen encoder's HR embedding (256 x 64 x 64 at the working magnification)
  averaged over the object's mask, each 16 x 16-pixel cell weighted by the fraction of it the
  object covers (an object smaller than a cell still gets the cell it lies in);
- ``lr`` (256,): the LR embedding (the concentric patch at half the magnification) averaged over a
  disc around the object's centroid whose radius is the object's own (equivalent-disc) radius
  plus ``context_cells`` LR cells: the object together with its surroundings, its *context*;
- ``measurements`` (7,): :data:`~engine.objects.measurements.MEASUREMENT_NAMES` (area,
  perimeter, circularity, solidity, eccentricity in um, mean haematoxylin and eosin OD).

Objects are grouped by field so that one encode serves many: the slide is tiled (on a grid
anchored at its origin, so the same object always lands in the same field) by fields at the
working magnification overlapping by ``tile_overlap``; an object goes to the field, of those
containing it whole (``margin`` HR pixels inside), whose centre is nearest its own. An object
too large for any tile gets a field centred on it (shared with later large objects it holds);
one larger than a whole HR patch is pooled over the part inside (``clipped``). Fields are
encoded through the predictor's field cache, and the features computed on a field are kept in
that cache entry's extras, keyed by the object's outline, so asking again costs nothing while
the field stays cached.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from engine.geometry import geometry_to_mask
from engine.objects.measurements import (
    MEASUREMENT_NAMES,
    hed_optical_density,
    shape_measurements,
    stain_means,
)
from engine.patches import PATCH_SIZE, Field, make_field
from engine.slides import Slide
from engine.wsi_predictor import PromptError, WsiSamPredictor

__all__ = [
    "EMBEDDING_DIM",
    "FEATURE_SETS",
    "FeatureSettings",
    "FeaturesCancelledError",
    "ObjectError",
    "ObjectFeatures",
    "assign_fields",
    "feature_dimensions",
    "measurement_features",
    "object_features",
]

#: channels of the encoder's embedding, the length of ``hr`` and ``lr``
EMBEDDING_DIM = 256
#: embedding cells per side of a patch, and patch pixels per cell
GRID = 64
CELL = PATCH_SIZE // GRID
#: what a classifier may be trained on (columns of :meth:`ObjectFeatures.matrix`)
FEATURE_SETS: tuple[str, ...] = ("measurements", "hr+measurements", "hr+lr+measurements")
# the key of the per-object store in a cached field's extras
_STORE_KEY = "objects.features"


class ObjectError(PromptError):
    """Objects that cannot be used: off the slide, or without an area. The message names them."""


class FeaturesCancelledError(Exception):
    """:func:`object_features` was cancelled; nothing is returned."""


@dataclass(frozen=True)
class FeatureSettings:
    """How objects are turned into features (a classifier records them and applies them again).

    Attributes:
        magnification: the HR fields' magnification; None takes the predictor's working one.
        context_cells: the LR context disc's radius beyond the object's own radius, in LR
            embedding cells (one cell is 16 LR pixels, 32 HR pixels).
        tile_overlap: overlap of neighbouring tiles, as a fraction of the HR patch.
        margin: HR pixels an object must stay inside a field's HR patch to be whole in it (not
            needed along the slide's own edges).
    """

    magnification: float | None = None
    context_cells: float = 3.0
    tile_overlap: float = 0.25
    margin: int = 16

    def __post_init__(self) -> None:
        if self.magnification is not None and not (
            math.isfinite(self.magnification) and self.magnification > 0
        ):
            raise ValueError(f"magnification must be positive, got {self.magnification}")
        if not (math.isfinite(self.context_cells) and self.context_cells >= 0):
            raise ValueError(f"context_cells must be 0 or more, got {self.context_cells}")
        if not 0 <= self.tile_overlap < 0.9:
            raise ValueError(f"tile_overlap must be in [0, 0.9), got {self.tile_overlap}")
        if not 0 <= self.margin < PATCH_SIZE // 4:
            raise ValueError(f"margin must be in [0, {PATCH_SIZE // 4}), got {self.margin}")


@dataclass
class ObjectFeatures:
    """Features of N objects, in the order they were given.

    Attributes:
        hr: (N, 256) float32 mask-pooled HR embedding.
        lr: (N, 256) float32 pooled LR context, or None when it was not computed.
        measurements: (N, 7) float64, columns :data:`MEASUREMENT_NAMES`.
        fields: the fields the objects were pooled on.
        field_of: (N,) int64 index into ``fields`` of each object's field.
        clipped: (N,) bool: the object is larger than its field's HR patch (pooled over the
            part inside; its shape measurements are of the whole outline).
        timings: seconds: "encode", "read", "stain", "pool", "total"; "encodes" counts the
            patches encoded.
    """

    hr: NDArray[np.float32]
    lr: NDArray[np.float32] | None
    measurements: NDArray[np.float64]
    fields: list[Field] = field(default_factory=list)
    field_of: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    clipped: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.hr.shape[0])

    def matrix(self, feature_set: str) -> NDArray[np.float32]:
        """(N, D) float32 classifier input for ``feature_set`` (one of :data:`FEATURE_SETS`):
        the measurements as :func:`measurement_features`, after the HR embedding and then the
        LR context when the set names them."""
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")
        parts: list[NDArray[np.float32]] = []
        if "hr" in feature_set.split("+"):
            parts.append(self.hr.astype(np.float32, copy=False))
        if "lr" in feature_set.split("+"):
            if self.lr is None:
                raise ValueError("these features have no LR context (computed with context=False)")
            parts.append(self.lr.astype(np.float32, copy=False))
        parts.append(measurement_features(self.measurements))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def take(self, indices: Sequence[int] | NDArray[np.integer[Any]]) -> ObjectFeatures:
        """The features of the objects at ``indices`` (same fields)."""
        index = np.asarray(indices, dtype=np.int64)
        return ObjectFeatures(
            self.hr[index],
            None if self.lr is None else self.lr[index],
            self.measurements[index],
            self.fields,
            self.field_of[index],
            self.clipped[index],
            {},
        )


def feature_dimensions(feature_set: str) -> int:
    """D, the number of columns of :meth:`ObjectFeatures.matrix` for ``feature_set``."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")
    embeddings = sum(part in ("hr", "lr") for part in feature_set.split("+"))
    return embeddings * EMBEDDING_DIM + len(MEASUREMENT_NAMES)


def measurement_features(measurements: NDArray[np.float64]) -> NDArray[np.float32]:
    """(N, 7) measurements -> (N, 7) float32 classifier columns: area and perimeter as log10(1 +
    value) (sizes spread over orders of magnitude), the rest as they are; NaN -> 0."""
    values = np.asarray(measurements, dtype=np.float64).reshape(-1, len(MEASUREMENT_NAMES)).copy()
    values[:, :2] = np.log10(1.0 + np.maximum(values[:, :2], 0.0))
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# --- grouping objects by field ---------------------------------------------------------------


def assign_fields(
    slide: Slide,
    bounds: NDArray[np.float64],
    magnification: float,
    *,
    default_magnification: float = 40.0,
    overlap: float = 0.25,
    margin: int = 16,
) -> tuple[list[Field], NDArray[np.int64]]:
    """The fields to pool objects on, and each object's field.

    Args:
        slide: the slide (its size and magnification).
        bounds: (N, 4) level-0 x0, y0, x1, y1 of each object.
        magnification: the fields' HR magnification.
    Returns:
        the fields (tiles in row order, then fields centred on large objects) and (N,) the
        index of each object's field.
    """
    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    probe = make_field(
        slide, (0.0, 0.0), magnification, default_magnification=default_magnification
    )
    downsample = probe.hr_downsample
    side = PATCH_SIZE * downsample
    step = side * (1 - overlap)
    pad = margin * downsample
    width, height = slide.dimensions
    # tile centres are spread evenly over each axis of the slide, at most ``step`` apart (one
    # tile in the middle of a slide no larger than a patch); the margin is not needed at the
    # slide's own edges (nothing lies beyond them)
    x0 = np.maximum(bounds[:, 0], pad)
    y0 = np.maximum(bounds[:, 1], pad)
    x1 = np.minimum(bounds[:, 2], width - pad)
    y1 = np.minimum(bounds[:, 3], height - pad)

    def centres(extent: float) -> NDArray[np.float64]:
        if extent <= side:
            return np.array([extent / 2])
        count = math.ceil((extent - side) / step - 1e-9) + 1
        return np.linspace(side / 2, extent - side / 2, count)

    def axis(
        lo: NDArray[np.float64], hi: NDArray[np.float64], extent: float
    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.bool_]]:
        """Per object: the nearest tile along this axis that holds it, and whether one does."""
        places = centres(extent)
        spacing = places[1] - places[0] if len(places) > 1 else 1.0
        middle = (lo + hi) / 2
        nearest = np.clip(np.round((middle - places[0]) / spacing), 0, len(places) - 1)
        best = np.full(len(lo), -1, dtype=np.int64)
        distance = np.full(len(lo), np.inf)
        for shift in (0, -1, 1):
            k = np.clip(nearest + shift, 0, len(places) - 1).astype(np.int64)
            fits = (places[k] - side / 2 + pad <= lo + 1e-9) & (
                hi <= places[k] + side / 2 - pad + 1e-9
            )
            away = np.where(fits, np.abs(places[k] - middle), np.inf)
            better = away < distance
            best[better], distance[better] = k[better], away[better]
        return places, best, best >= 0

    places_x, kx, ok_x = axis(x0, x1, float(width))
    places_y, ky, ok_y = axis(y0, y1, float(height))
    tiled = ok_x & ok_y
    fields: list[Field] = []
    index = np.full(len(bounds), -1, dtype=np.int64)
    if tiled.any():
        keys = np.stack([ky[tiled], kx[tiled]], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        for row, col in unique:
            centre = (float(places_x[col]), float(places_y[row]))
            fields.append(
                make_field(
                    slide, centre, magnification, default_magnification=default_magnification
                )
            )
        index[tiled] = inverse.reshape(-1)
    # objects too large for a tile: a field centred on each, shared by later ones it holds
    own: list[int] = []
    for i in np.flatnonzero(~tiled):
        box = bounds[i]
        for j in own:
            if _holds(fields[j], box, pad):
                index[i] = j
                break
        else:
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            made = make_field(
                slide, centre, magnification, default_magnification=default_magnification
            )
            if made in fields:  # it is one of the tiles (an object wider than a field)
                index[i] = fields.index(made)
                continue
            fields.append(made)
            own.append(len(fields) - 1)
            index[i] = len(fields) - 1
    return fields, index


def _holds(chosen: Field, box: NDArray[np.float64], pad: float) -> bool:
    fx0, fy0, fx1, fy1 = chosen.hr_bounds
    return bool(
        box[0] >= fx0 + pad and box[1] >= fy0 + pad and box[2] <= fx1 - pad and box[3] <= fy1 - pad
    )


# --- the per-field store (kept in the predictor's field cache) ---------------------------------


@dataclass
class _Stored:
    hr: NDArray[np.float32]
    lr: NDArray[np.float32] | None
    measurements: NDArray[np.float64]
    clipped: bool


class _ObjectStore:
    """Features computed on one field, by (outline hash, settings): lives in the field's extras."""

    def __init__(self) -> None:
        self.items: dict[tuple[bytes, float], _Stored] = {}
        self.nbytes = 0

    def get(self, key: tuple[bytes, float], need_lr: bool) -> _Stored | None:
        found = self.items.get(key)
        if found is None or (need_lr and found.lr is None):
            return None
        return found

    def put(self, key: tuple[bytes, float], value: _Stored) -> None:
        old = self.items.get(key)
        if old is not None:
            self.nbytes -= _stored_bytes(old)
        self.items[key] = value
        self.nbytes += _stored_bytes(value)


def _stored_bytes(value: _Stored) -> int:
    lr = 0 if value.lr is None else value.lr.nbytes
    return value.hr.nbytes + lr + value.measurements.nbytes + 64


def _outline_key(geometry: BaseGeometry) -> bytes:
    return hashlib.blake2b(shapely.to_wkb(geometry), digest_size=16).digest()


# --- features --------------------------------------------------------------------------------


def _label(names: Sequence[str] | None, index: int) -> str:
    if names is not None and index < len(names) and names[index]:
        return str(names[index])
    return f"object {index + 1}"


def _listed(labels: list[str], limit: int = 5) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _checked_geometries(
    slide: Slide, geometries: Sequence[BaseGeometry], names: Sequence[str] | None
) -> list[BaseGeometry]:
    """Polygonal, valid outlines on the slide; an :class:`ObjectError` names the others."""
    width, height = slide.dimensions
    tolerance = 1.0
    empty: list[str] = []
    outside: list[str] = []
    checked: list[BaseGeometry] = []
    for i, geometry in enumerate(geometries):
        if geometry is not None and not geometry.is_empty and not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        if geometry is not None and geometry.geom_type == "GeometryCollection":
            parts = [g for g in shapely.get_parts(geometry) if g.geom_type == "Polygon"]
            geometry = shapely.union_all(parts) if parts else None
        if geometry is None or geometry.is_empty or geometry.area <= 0:
            empty.append(_label(names, i))
            checked.append(geometry)
            continue
        x0, y0, x1, y1 = geometry.bounds
        if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
            outside.append(_label(names, i))
        checked.append(geometry)
    if outside:
        raise ObjectError(
            f"{len(outside)} object{'s' * (len(outside) != 1)} lie{'s' * (len(outside) == 1)} "
            f"outside the slide ({width} x {height} pixels): {_listed(outside)}; are they from "
            "another image?"
        )
    if empty:
        raise ObjectError(
            f"{len(empty)} object{'s' * (len(empty) != 1)} without an area (points, lines or "
            f"empty outlines): {_listed(empty)}"
        )
    return checked


def object_features(
    predictor: WsiSamPredictor,
    slide: Slide,
    geometries: Sequence[BaseGeometry],
    settings: FeatureSettings | None = None,
    *,
    context: bool = True,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ObjectFeatures:
    """Features of each object (see the module's docstring).

    Args:
        predictor: its model encodes the fields, its field cache keeps them (and the features).
        slide: an open slide.
        geometries: N Polygons / MultiPolygons in level-0 pixels.
        settings: magnification, context radius, tiling.
        context: also compute the LR context (one more encode per field); False leaves
            ``lr`` None.
        names: N names for the messages (default "object i").
        progress: ``progress(fields done, fields)`` after each field.
        cancel: asked between fields; True raises :class:`FeaturesCancelledError`.
    Raises:
        ObjectError: some objects lie outside the slide or have no area (all named).
    """
    settings = settings or FeatureSettings()
    started = time.perf_counter()
    timings = {"encode": 0.0, "read": 0.0, "stain": 0.0, "pool": 0.0, "encodes": 0.0}
    outlines = _checked_geometries(slide, geometries, names)
    count = len(outlines)
    hr_out = np.zeros((count, EMBEDDING_DIM), np.float32)
    lr_out = np.zeros((count, EMBEDDING_DIM), np.float32) if context else None
    measured = np.zeros((count, len(MEASUREMENT_NAMES)), np.float64)
    clipped = np.zeros(count, bool)
    if count == 0:
        return ObjectFeatures(hr_out, lr_out, measured, [], np.zeros(0, np.int64), clipped, timings)
    magnification = settings.magnification or predictor.magnification
    bounds = np.array([g.bounds for g in outlines], dtype=np.float64)
    fields, field_of = assign_fields(
        slide,
        bounds,
        magnification,
        default_magnification=predictor.default_magnification,
        overlap=settings.tile_overlap,
        margin=settings.margin,
    )
    order = np.argsort(field_of, kind="stable")
    starts = np.searchsorted(field_of[order], np.arange(len(fields) + 1))
    keys = [(_outline_key(g), settings.context_cells) for g in outlines]
    for number, chosen in enumerate(fields):
        if cancel is not None and cancel():
            raise FeaturesCancelledError("object features cancelled")
        members = order[starts[number] : starts[number + 1]]
        calls_before = predictor.encoder_calls
        t0 = time.perf_counter()
        hr, lr, extras, _ = predictor.encoded_field(slide, chosen, need_lr=context)
        timings["encode"] += time.perf_counter() - t0
        timings["encodes"] += predictor.encoder_calls - calls_before
        store = extras.get(_STORE_KEY)
        if not isinstance(store, _ObjectStore):
            store = extras[_STORE_KEY] = _ObjectStore()
        missing = []
        for i in members:
            found = store.get(keys[i], context)
            if found is None:
                missing.append(int(i))
                continue
            hr_out[i] = found.hr
            if lr_out is not None and found.lr is not None:
                lr_out[i] = found.lr
            measured[i] = found.measurements
            clipped[i] = found.clipped
        if missing:
            computed = _field_features(
                slide,
                chosen,
                hr.embedding,
                None if lr is None or not context else lr.embedding,
                [outlines[i] for i in missing],
                settings,
                timings,
            )
            for i, value in zip(missing, computed, strict=True):
                store.put(keys[i], value)
                hr_out[i] = value.hr
                if lr_out is not None and value.lr is not None:
                    lr_out[i] = value.lr
                measured[i] = value.measurements
                clipped[i] = value.clipped
        if progress is not None:
            progress(number + 1, len(fields))
    timings["total"] = time.perf_counter() - started
    return ObjectFeatures(hr_out, lr_out, measured, fields, field_of, clipped, timings)


def _rows(embedding: Any) -> NDArray[np.float32]:
    """(1, 256, 64, 64) tensor -> (4096, 256) float32 rows, cell (r, c) at row r * 64 + c."""
    array = embedding[0].float().cpu().numpy()
    return np.ascontiguousarray(array.reshape(EMBEDDING_DIM, GRID * GRID).T)


def _field_features(
    slide: Slide,
    chosen: Field,
    hr_embedding: Any,
    lr_embedding: Any | None,
    outlines: Sequence[BaseGeometry],
    settings: FeatureSettings,
    timings: dict[str, float],
) -> list[_Stored]:
    """Pool and measure the objects of one field."""
    t0 = time.perf_counter()
    hr_rows = _rows(hr_embedding)
    lr_rows = None if lr_embedding is None else _rows(lr_embedding)
    downsample = chosen.hr_downsample
    ox, oy = chosen.hr_origin
    # each object's crop of the HR patch, in HR pixels [r0, r1) x [c0, c1)
    boxes = np.array([g.bounds for g in outlines], dtype=np.float64)
    c0 = np.clip(np.floor((boxes[:, 0] - ox) / downsample), 0, PATCH_SIZE).astype(np.int64)
    r0 = np.clip(np.floor((boxes[:, 1] - oy) / downsample), 0, PATCH_SIZE).astype(np.int64)
    c1 = np.clip(np.ceil((boxes[:, 2] - ox) / downsample), 0, PATCH_SIZE).astype(np.int64)
    r1 = np.clip(np.ceil((boxes[:, 3] - oy) / downsample), 0, PATCH_SIZE).astype(np.int64)
    timings["pool"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    top, left = int(r0.min()), int(c0.min())
    bottom, right = int(max(r1.max(), top)), int(max(c1.max(), left))
    size = (right - left, bottom - top)
    if size[0] > 0 and size[1] > 0:
        rgb = slide.read_scaled((ox + left * downsample, oy + top * downsample), downsample, size)
    else:
        rgb = np.full((max(size[1], 0), max(size[0], 0), 3), 255, np.uint8)
    timings["read"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    hed = hed_optical_density(rgb)
    timings["stain"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    lr_origin = np.asarray(chosen.lr_origin)
    lr_cell = chosen.lr_downsample * CELL
    results: list[_Stored] = []
    for i, outline in enumerate(outlines):
        fx0, fy0, fx1, fy1 = chosen.hr_bounds
        gx0, gy0, gx1, gy1 = boxes[i]
        is_clipped = bool(
            gx0 < fx0 - 1e-6 or gy0 < fy0 - 1e-6 or gx1 > fx1 + 1e-6 or gy1 > fy1 + 1e-6
        )
        height, width = int(r1[i] - r0[i]), int(c1[i] - c0[i])
        mask = geometry_to_mask(
            outline,
            (height, width),
            scale=downsample,
            offset=(ox + c0[i] * downsample, oy + r0[i] * downsample),
        )
        if mask.any():
            weights, cells = _cell_weights(mask, int(r0[i]), int(c0[i]))
            pooled = weights @ hr_rows[cells] / weights.sum()
            crop = hed[r0[i] - top : r1[i] - top, c0[i] - left : c1[i] - left]
            stains = stain_means(crop, mask)
        else:  # smaller than a pixel: the pixel and the cell it lies in
            point = outline.representative_point()
            col, row = ((np.array([point.x, point.y]) - (ox, oy)) / downsample).astype(int)
            col, row = int(np.clip(col, 0, PATCH_SIZE - 1)), int(np.clip(row, 0, PATCH_SIZE - 1))
            pooled = hr_rows[(row // CELL) * GRID + col // CELL]
            inside = top <= row < bottom and left <= col < right
            stains = hed[row - top, col - left].astype(np.float64) if inside else np.zeros(2)
        context = None
        if lr_rows is not None:
            centroid = outline.centroid
            centre = (np.array([centroid.x, centroid.y]) - lr_origin) / lr_cell  # in LR cells
            radius = math.sqrt(outline.area / math.pi) / lr_cell + settings.context_cells
            context = _disc_mean(lr_rows, centre, radius)
        shape = shape_measurements(outline, slide.mpp)
        results.append(
            _Stored(
                pooled.astype(np.float32),
                None if context is None else context.astype(np.float32),
                np.concatenate([shape, stains]),
                is_clipped,
            )
        )
    timings["pool"] += time.perf_counter() - t0
    return results


def _cell_weights(
    mask: NDArray[np.bool_], row0: int, col0: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Fraction of each embedding cell the (h, w) mask at HR pixel (row0, col0) covers.

    Returns (K,) weights and (K,) cell indices (row * 64 + col) of the cells it touches.
    """
    cell_r0, cell_c0 = row0 // CELL, col0 // CELL
    height, width = mask.shape
    rows = -(-(row0 + height) // CELL) - cell_r0
    cols = -(-(col0 + width) // CELL) - cell_c0
    padded = np.zeros((rows * CELL, cols * CELL), np.float32)
    dr, dc = row0 - cell_r0 * CELL, col0 - cell_c0 * CELL
    padded[dr : dr + height, dc : dc + width] = mask
    coverage = padded.reshape(rows, CELL, cols, CELL).sum(axis=(1, 3)).reshape(-1) / CELL**2
    cells = (
        (np.arange(cell_r0, cell_r0 + rows)[:, None] * GRID)
        + np.arange(cell_c0, cell_c0 + cols)[None, :]
    ).reshape(-1)
    touched = coverage > 0
    return coverage[touched], cells[touched]


def _disc_mean(
    rows: NDArray[np.float32], centre: NDArray[np.float64], radius: float
) -> NDArray[np.float32]:
    """Mean of the (4096, 256) cell rows whose centres lie within ``radius`` cells of
    ``centre`` (x, y in cells); the nearest cell when none does."""
    cx, cy = float(centre[0]), float(centre[1])
    lo_c = max(math.floor(cx - radius), 0)
    hi_c = min(math.ceil(cx + radius), GRID - 1)
    lo_r = max(math.floor(cy - radius), 0)
    hi_r = min(math.ceil(cy + radius), GRID - 1)
    if lo_c <= hi_c and lo_r <= hi_r:
        cols = np.arange(lo_c, hi_c + 1)
        rws = np.arange(lo_r, hi_r + 1)
        inside = ((cols[None, :] + 0.5 - cx) ** 2 + (rws[:, None] + 0.5 - cy) ** 2) <= radius**2
        if inside.any():
            index = (rws[:, None] * GRID + cols[None, :])[inside]
            return rows[index].mean(axis=0)
    col = int(np.clip(math.floor(cx), 0, GRID - 1))
    row = int(np.clip(math.floor(cy), 0, GRID - 1))
    return rows[row * GRID + col]
