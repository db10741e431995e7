"""Pixel masks <-> shapely polygons.

``mask_to_geometry`` traces the boundaries of a boolean mask along pixel *edges* (a single pixel
becomes a unit square), keeps holes, turns separate components into a MultiPolygon, simplifies and
maps the result into target coordinates (``x_out = x_pix * scale + offset_x``). The tracer is
vectorised numpy: boundary edges are linked into rings with a lookup table and ordered by pointer
jumping, so the cost grows with the number of boundary edges, never with Python-level pixel loops.

``geometry_to_mask`` is the inverse: a pixel is inside when its centre is inside the geometry
(even-odd scanline fill, also vectorised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = ["geometry_to_mask", "mask_to_geometry"]

# Directions of boundary edges, counter-clockwise on screen (y down): east, north, west, south.
_STEP_X = np.array([1, 0, -1, 0], dtype=np.int64)
_STEP_Y = np.array([0, -1, 0, 1], dtype=np.int64)


def mask_to_geometry(
    mask: NDArray[np.bool_],
    *,
    scale: float = 1.0,
    offset: tuple[float, float] | Sequence[float] = (0.0, 0.0),
    simplify_tolerance: float = 1.0,
    min_area: float = 0.0,
) -> Polygon | MultiPolygon | None:
    """Trace a boolean mask into a Polygon or MultiPolygon in target coordinates.

    Arguments:
      mask: (H, W) array, truthy = inside. Pixel (row r, column c) is the square
        [c, c+1] x [r, r+1] in mask coordinates.
      scale, offset: target coordinates are ``x_pix * scale + offset[0]`` (and likewise y), e.g.
        ``scale=field.hr_downsample, offset=field.hr_origin`` for level-0 slide pixels.
      simplify_tolerance: topology-preserving simplification in mask pixels (0: exact pixel edges).
      min_area: pieces (polygons of a MultiPolygon) smaller than this, in target units, are dropped.

    Returns:
      A valid Polygon (one piece) or MultiPolygon (several, 4-connected pixels form one piece),
      or None when the mask is empty or nothing is left after ``min_area``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    if simplify_tolerance < 0:
        raise ValueError(f"simplify_tolerance must be >= 0, got {simplify_tolerance}")
    offset_x, offset_y = (float(v) for v in offset)
    fg = mask.astype(bool, copy=False)
    if not fg.any():
        return None

    geometry = _trace(fg)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    if simplify_tolerance > 0:
        geometry = shapely.simplify(geometry, simplify_tolerance, preserve_topology=True)
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
    if scale != 1.0 or offset_x != 0.0 or offset_y != 0.0:
        shift = np.array([offset_x, offset_y])
        geometry = shapely.transform(geometry, lambda xy: xy * scale + shift)
    return _polygonal(geometry, min_area)


def geometry_to_mask(
    geometry: BaseGeometry | None,
    shape: tuple[int, int],
    *,
    scale: float = 1.0,
    offset: tuple[float, float] | Sequence[float] = (0.0, 0.0),
) -> NDArray[np.bool_]:
    """Rasterise polygonal geometry into an (H, W) bool mask: the inverse of ``mask_to_geometry``.

    Pixel (r, c) is True when its centre ``((c + 0.5) * scale + offset_x, (r + 0.5) * scale +
    offset_y)`` lies inside the geometry (even-odd rule over all rings, so holes stay empty).
    Non-polygonal parts (points, lines) cover no area and are ignored.
    """
    height, width = (int(v) for v in shape)
    if height < 0 or width < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    out = np.zeros((height, width), dtype=bool)
    if geometry is None or geometry.is_empty or height == 0 or width == 0:
        return out
    offset_x, offset_y = (float(v) for v in offset)

    x0s, y0s, x1s, y1s = _polygon_edges(geometry)
    if x0s.size == 0:
        return out
    # Into mask pixel units: pixel centres sit at integer + 0.5.
    x0s, x1s = (x0s - offset_x) / scale, (x1s - offset_x) / scale
    y0s, y1s = (y0s - offset_y) / scale, (y1s - offset_y) / scale

    # Each non-horizontal edge crosses the rows whose centre y satisfies ymin <= y < ymax.
    ymin, ymax = np.minimum(y0s, y1s), np.maximum(y0s, y1s)
    row_first = np.clip(np.ceil(ymin - 0.5), 0, height).astype(np.int64)
    row_stop = np.clip(np.ceil(ymax - 0.5), 0, height).astype(np.int64)
    counts = row_stop - row_first
    keep = counts > 0
    if not keep.any():
        return out
    x0s, y0s, x1s, y1s = x0s[keep], y0s[keep], x1s[keep], y1s[keep]
    row_first, counts = row_first[keep], counts[keep]

    edge_of = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    rows = row_first[edge_of] + (np.arange(edge_of.size) - starts[edge_of])
    yc = rows + 0.5
    t = (yc - y0s[edge_of]) / (y1s[edge_of] - y0s[edge_of])
    xc = x0s[edge_of] + t * (x1s[edge_of] - x0s[edge_of])

    order = np.lexsort((xc, rows))
    rows, xc = rows[order], xc[order]
    # Closed rings cross every row an even number of times: pair crossings (0,1), (2,3), ...
    row_in, x_in, x_out = rows[0::2], xc[0::2], xc[1::2]
    col_first = np.clip(np.ceil(x_in - 0.5), 0, width).astype(np.int64)
    col_stop = np.clip(np.ceil(x_out - 0.5), 0, width).astype(np.int64)
    span = col_stop > col_first
    coverage = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(coverage, (row_in[span], col_first[span]), 1)
    np.add.at(coverage, (row_in[span], col_stop[span]), -1)
    return np.cumsum(coverage[:, :width], axis=1) > 0


def _flat_polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty Polygons inside any (nested) multi-part geometry."""
    found: list[Polygon] = []
    stack = [geometry]
    while stack:
        item = stack.pop()
        if item.geom_type == "Polygon":
            if not item.is_empty:
                found.append(item)
        elif item.geom_type in ("MultiPolygon", "GeometryCollection"):
            stack.extend(reversed(list(shapely.get_parts(item))))
    return found


def _polygon_edges(
    geometry: BaseGeometry,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """All ring edges (x0, y0, x1, y1) of the polygonal parts of ``geometry``."""
    rings: list[BaseGeometry] = []
    for poly in _flat_polygons(geometry):
        rings.append(poly.exterior)
        rings.extend(poly.interiors)
    if not rings:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    coords, ring_index = shapely.get_coordinates(rings, return_index=True)
    same_ring = ring_index[:-1] == ring_index[1:]
    a, b = coords[:-1][same_ring], coords[1:][same_ring]
    return a[:, 0], a[:, 1], b[:, 0], b[:, 1]


def _polygonal(geometry: BaseGeometry, min_area: float) -> Polygon | MultiPolygon | None:
    """Keep only polygon pieces of at least ``min_area``; one piece -> Polygon, none -> None."""
    pieces = _flat_polygons(geometry)
    if min_area > 0:
        pieces = [p for p in pieces if p.area >= min_area]
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    return MultiPolygon(pieces)


def _cycles(succ: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split a permutation into its cycles by pointer jumping (O(n log n), no Python loop per item).

    Returns, per item, the cycle id (its smallest member) and the item's position along the cycle
    counted from that member.
    """
    n = succ.size
    rounds = max(1, math.ceil(math.log2(max(n, 2))))
    cycle = np.arange(n, dtype=np.int64)
    jump = succ.copy()
    for _ in range(rounds + 1):
        cycle = np.minimum(cycle, cycle[jump])
        jump = jump[jump]
    # Distance from each item forward to its cycle's smallest member (list ranking).
    is_root = cycle == np.arange(n)
    hop = np.where(is_root, np.arange(n), succ)
    dist = np.where(is_root, 0, 1).astype(np.int64)
    for _ in range(rounds + 1):
        dist = dist + dist[hop]
        hop = hop[hop]
    length = np.bincount(cycle, minlength=n)[cycle]
    return cycle, (length - dist) % length


def _trace(fg: NDArray[np.bool_]) -> Polygon | MultiPolygon:
    """Pixel-edge boundary rings of ``fg`` assembled into polygons (4-connected pieces)."""
    height, width = fg.shape
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    padded[1:-1, 1:-1] = fg

    # Directed boundary edges with the foreground on their left (screen coordinates, y down).
    # Horizontal grid lines y = 0..H between pixel rows y-1 (above) and y (below).
    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]
    # Vertical grid lines x = 0..W between pixel columns x-1 (left) and x (right).
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]

    top_y, top_x = np.nonzero(below & ~above)  # top edge of a pixel: walk west
    bot_y, bot_x = np.nonzero(above & ~below)  # bottom edge: walk east
    lft_y, lft_x = np.nonzero(right & ~left)  # left edge: walk south
    rgt_y, rgt_x = np.nonzero(left & ~right)  # right edge: walk north

    start_x = np.concatenate([top_x + 1, bot_x, lft_x, rgt_x])
    start_y = np.concatenate([top_y, bot_y, lft_y, rgt_y + 1])
    direction = np.concatenate(
        [
            np.full(top_x.size, 2),
            np.full(bot_x.size, 0),
            np.full(lft_x.size, 3),
            np.full(rgt_x.size, 1),
        ]
    ).astype(np.int64)
    # The foreground pixel on each edge's left, to tell which 4-connected piece a ring bounds.
    pix_row = np.concatenate([top_y, bot_y - 1, lft_y, rgt_y])
    pix_col = np.concatenate([top_x, bot_x, lft_x, rgt_x - 1])
    n_edges = start_x.size

    stride = width + 1
    start_v = start_y.astype(np.int64) * stride + start_x
    end_v = (start_y + _STEP_Y[direction]) * stride + (start_x + _STEP_X[direction])

    # Successor of each edge: the edge leaving its end vertex; at a saddle (two diagonal
    # foreground pixels) turn left, which keeps diagonal pixels apart (4-connectivity).
    outgoing = np.full((height + 1) * stride * 4, -1, dtype=np.int32)
    outgoing[start_v * 4 + direction] = np.arange(n_edges, dtype=np.int32)
    succ = outgoing[end_v * 4 + (direction + 1) % 4].astype(np.int64)
    for turn in (0, 3):  # straight on, then right
        missing = succ < 0
        if not missing.any():
            break
        succ[missing] = outgoing[end_v[missing] * 4 + (direction[missing] + turn) % 4]

    ring, position = _cycles(succ)
    order = np.lexsort((position, ring))
    ring, direction = ring[order], direction[order]
    xs, ys = start_x[order], start_y[order]
    pix_row, pix_col = pix_row[order], pix_col[order]

    # Drop vertices in the middle of straight runs (same direction in and out).
    first = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    first_all = first
    last = np.r_[first[1:], ring.size] - 1
    prev = np.arange(ring.size) - 1
    prev[first] = last
    corner = direction != direction[prev]
    ring, xs, ys = ring[corner], xs[corner], ys[corner]

    first = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    nxt = np.arange(ring.size) + 1
    nxt[np.r_[first[1:], ring.size] - 1] = first
    cross = xs * ys[nxt] - xs[nxt] * ys
    signed_area = np.add.reduceat(cross.astype(np.float64), first) / 2.0
    # Edges walk with the foreground on their left in y-down coordinates: outer boundaries come
    # out with a negative shoelace sum, holes with a positive one.
    is_hole = signed_area > 0

    # The foreground piece (4-connected component) each ring bounds, from its first edge.
    labels, _ = ndimage.label(fg)
    ring_piece = labels[pix_row[first_all], pix_col[first_all]]

    # Polygons want each piece's shell first, then its holes: sort the rings that way.
    ring_rank = np.empty(ring_piece.size, dtype=np.int64)
    ring_rank[np.lexsort((is_hole, ring_piece))] = np.arange(ring_piece.size)
    group = np.cumsum(np.r_[True, ring[1:] != ring[:-1]]) - 1
    vertex_order = np.argsort(ring_rank[group], kind="stable")
    coords = np.stack([xs[vertex_order], ys[vertex_order]], axis=1).astype(np.float64)
    rings = shapely.linearrings(coords, indices=ring_rank[group][vertex_order])
    sorted_piece = ring_piece[np.argsort(ring_rank)]
    _, piece_index = np.unique(sorted_piece, return_inverse=True)
    polygons = shapely.polygons(rings, indices=piece_index)
    if polygons.size == 1:
        return polygons[0]
    return MultiPolygon(list(polygons))
