"""Mask cleanup in physical units: smoothing, holes, small parts, largest part, expand/contract.

Geometries are shapely polygons in level-0 pixels. Distances and areas in
:class:`CleanupSettings` are in microns (um, um^2) when the slide has a pixel size and in level-0
pixels (px, px^2) when it has none; ``mpp`` is the slide's (x, y) microns per pixel or None.
Every operation is a shapely one (buffers with round joins, ring filtering), so holes and
multi-part objects survive unless an operation removes them on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = [
    "CleanupSettings",
    "area_to_pixels",
    "area_unit",
    "clean_geometry",
    "length_to_pixels",
    "pixels_to_area",
]

Mpp = tuple[float, float] | Sequence[float] | None


def _scale(mpp: Mpp) -> tuple[float, float] | None:
    if mpp is None:
        return None
    mx, my = (float(v) for v in mpp)
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        return None
    return mx, my


def area_unit(mpp: Mpp) -> str:
    """``"um^2"`` when the slide has a pixel size, else ``"px^2"``."""
    return "um^2" if _scale(mpp) is not None else "px^2"


def area_to_pixels(area: float, mpp: Mpp) -> float:
    """An area in um^2 (px^2 without a pixel size) -> level-0 px^2."""
    scale = _scale(mpp)
    return float(area) if scale is None else float(area) / (scale[0] * scale[1])


def pixels_to_area(area_px: float, mpp: Mpp) -> float:
    """Level-0 px^2 -> um^2 (unchanged without a pixel size)."""
    scale = _scale(mpp)
    return float(area_px) if scale is None else float(area_px) * scale[0] * scale[1]


def length_to_pixels(length: float, mpp: Mpp) -> float:
    """A distance in um (px without a pixel size) -> level-0 px (geometric mean of x and y)."""
    scale = _scale(mpp)
    return float(length) if scale is None else float(length) / math.sqrt(scale[0] * scale[1])


@dataclass(frozen=True)
class CleanupSettings:
    """What to do to a mask before it is accepted (all off by default).

    Attributes:
        smooth: radius of a morphological closing then opening (buffer out/in, in/out) in um
            (px without a pixel size): rounds corners, fills notches, removes spurs; 0 is off.
        fill_holes_below: holes smaller than this area (um^2 / px^2) are filled; 0 is off,
            ``math.inf`` fills every hole.
        drop_parts_below: separate parts smaller than this area are removed; 0 is off.
        keep_largest_only: keep only the largest part of a multi-part object.
        expand: grow the outline by this distance (negative: contract); 0 is off.
    """

    smooth: float = 0.0
    fill_holes_below: float = 0.0
    drop_parts_below: float = 0.0
    keep_largest_only: bool = False
    expand: float = 0.0

    def __post_init__(self) -> None:
        for name in ("smooth", "fill_holes_below", "drop_parts_below"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not math.isfinite(self.expand):
            raise ValueError(f"expand must be finite, got {self.expand}")

    @property
    def is_noop(self) -> bool:
        return (
            self.smooth == 0
            and self.fill_holes_below == 0
            and self.drop_parts_below == 0
            and not self.keep_largest_only
            and self.expand == 0
        )


def _polygons(geometry: BaseGeometry | None) -> list[Polygon]:
    if geometry is None or geometry.is_empty:
        return []
    parts = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon) and not part.is_empty:
            parts.append(part)
        elif isinstance(part, MultiPolygon | shapely.GeometryCollection):
            parts.extend(_polygons(part))
    return parts


def _combine(parts: list[Polygon]) -> Polygon | MultiPolygon | None:
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    merged = shapely.union_all(parts)
    pieces = _polygons(merged)
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)


def clean_geometry(
    geometry: BaseGeometry | None, settings: CleanupSettings, mpp: Mpp = None
) -> Polygon | MultiPolygon | None:
    """Apply ``settings`` to a level-0 geometry; None when nothing is left.

    Order: smoothing, expand/contract, fill holes, drop small parts, keep the largest part (so
    area thresholds apply to the final outline).
    """
    parts = _polygons(geometry)
    if not parts:
        return None
    current: Polygon | MultiPolygon | None = _combine(parts)
    if current is None or settings.is_noop:
        return current
    if settings.smooth > 0:
        radius = length_to_pixels(settings.smooth, mpp)
        current = current.buffer(radius, join_style="round").buffer(-2 * radius).buffer(radius)
        current = _combine(_polygons(current))
    if current is not None and settings.expand != 0:
        current = _combine(_polygons(current.buffer(length_to_pixels(settings.expand, mpp))))
    if current is not None and settings.fill_holes_below > 0:
        limit = area_to_pixels(settings.fill_holes_below, mpp)
        filled = []
        for poly in _polygons(current):
            holes = [ring for ring in poly.interiors if Polygon(ring).area >= limit]
            filled.append(Polygon(poly.exterior, holes))
        current = _combine(filled)
    if current is not None and settings.drop_parts_below > 0:
        limit = area_to_pixels(settings.drop_parts_below, mpp)
        current = _combine([p for p in _polygons(current) if p.area >= limit])
    if current is not None and settings.keep_largest_only:
        current = max(_polygons(current), key=lambda p: p.area)
    if current is not None and not current.is_valid:
        current = _combine(_polygons(shapely.make_valid(current)))
    return current
