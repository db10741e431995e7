"""Per-object measurements in microns: shape from the outline, stain from the pixels.

Shape (from the level-0 outline, exact, no rasterisation): area, perimeter, circularity
(``4 pi area / perimeter^2``), solidity (area / convex hull area) and eccentricity (of the ellipse
with the same second moments: 0 for a disc, towards 1 for a line). Stain: the mean haematoxylin
and eosin optical densities inside the object, from scikit-image's colour deconvolution
(:func:`skimage.color.rgb2hed`, Ruifrok and Johnston's H&E-DAB vectors) of the field's HR patch.

Lengths and areas are in um and um^2 when the slide has a pixel size, in level-0 pixels otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.affinity import scale as shapely_scale
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

__all__ = [
    "MEASUREMENT_NAMES",
    "SHAPE_NAMES",
    "STAIN_NAMES",
    "hed_optical_density",
    "shape_measurements",
    "stain_means",
]

#: shape measurements, in the order of :func:`shape_measurements`
SHAPE_NAMES: tuple[str, ...] = (
    "Area um^2",
    "Perimeter um",
    "Circularity",
    "Solidity",
    "Eccentricity",
)
#: stain measurements, in the order of :func:`stain_means`
STAIN_NAMES: tuple[str, ...] = ("Hematoxylin OD mean", "Eosin OD mean")
#: every measurement of an object, in the order of ``ObjectFeatures.measurements``' columns
MEASUREMENT_NAMES: tuple[str, ...] = SHAPE_NAMES + STAIN_NAMES


def shape_measurements(
    geometry: BaseGeometry, mpp: tuple[float, float] | None
) -> NDArray[np.float64]:
    """(5,) area, perimeter, circularity, solidity, eccentricity of a polygonal outline.

    Args:
        geometry: Polygon or MultiPolygon in level-0 pixels (holes count: they are not area, and
            their rings are perimeter).
        mpp: microns per level-0 pixel (x, y), or None to measure in pixels.
    """
    sx, sy = (1.0, 1.0) if mpp is None else (float(mpp[0]), float(mpp[1]))
    polygons = [
        g for g in shapely.get_parts(geometry) if g.geom_type == "Polygon" and not g.is_empty
    ]
    if not polygons:
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    # moments of area over every ring, exterior counter-clockwise and holes clockwise
    origin_x, origin_y = geometry.bounds[0], geometry.bounds[1]
    moments = np.zeros(6)  # area, Sx, Sy, Sxx, Syy, Sxy
    perimeter = 0.0
    for polygon in polygons:
        oriented = orient(polygon, 1.0)
        for ring in (oriented.exterior, *oriented.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)
            x = (xy[:, 0] - origin_x) * sx
            y = (xy[:, 1] - origin_y) * sy
            moments += _ring_moments(x, y)
            perimeter += float(np.hypot(np.diff(x), np.diff(y)).sum())
    area = moments[0]
    if area <= 0:
        return np.array([0.0, perimeter, 0.0, 0.0, 0.0])
    cx, cy = moments[1] / area, moments[2] / area
    mu20 = moments[3] / area - cx * cx
    mu02 = moments[4] / area - cy * cy
    mu11 = moments[5] / area - cx * cy
    half_trace = (mu20 + mu02) / 2
    spread = math.sqrt(max(((mu20 - mu02) / 2) ** 2 + mu11 * mu11, 0.0))
    major, minor = half_trace + spread, max(half_trace - spread, 0.0)
    eccentricity = math.sqrt(max(1.0 - minor / major, 0.0)) if major > 0 else 0.0
    circularity = min(4 * math.pi * area / perimeter**2, 1.0) if perimeter > 0 else 0.0
    hull = shapely_scale(geometry.convex_hull, sx, sy, origin=(0, 0)).area
    solidity = min(area / hull, 1.0) if hull > 0 else 0.0
    return np.array([area, perimeter, circularity, solidity, eccentricity])


def _ring_moments(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """(6,) signed area, first and second moments of area of one closed ring (Green's theorem)."""
    x0, y0, x1, y1 = x[:-1], y[:-1], x[1:], y[1:]
    cross = x0 * y1 - x1 * y0
    return np.array(
        [
            cross.sum() / 2,
            ((x0 + x1) * cross).sum() / 6,
            ((y0 + y1) * cross).sum() / 6,
            ((x0 * x0 + x0 * x1 + x1 * x1) * cross).sum() / 12,
            ((y0 * y0 + y0 * y1 + y1 * y1) * cross).sum() / 12,
            ((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross).sum() / 24,
        ]
    )


def hed_optical_density(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(H, W, 3) uint8 RGB -> (H, W, 2) float32 haematoxylin and eosin optical densities.

    scikit-image's colour deconvolution (:func:`skimage.color.rgb2hed`); the DAB channel is
    dropped. White (background, padding) is about 0.
    """
    from skimage.color import rgb2hed

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    if rgb.size == 0:
        return np.zeros((*rgb.shape[:2], 2), np.float32)
    return rgb2hed(rgb)[..., :2].astype(np.float32)


def stain_means(hed: NDArray[np.float32], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(2,) mean haematoxylin and eosin OD of ``hed`` (H, W, 2) over the (H, W) ``mask``.

    An empty mask gives NaN (the caller samples a pixel instead).
    """
    if mask.shape != hed.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {hed.shape[:2]}")
    count = int(mask.sum())
    if count == 0:
        return np.array([math.nan, math.nan])
    return hed[mask].astype(np.float64).mean(axis=0)
