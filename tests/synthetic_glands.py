"""GlaS-like test images built in the test: purple glands with dark nuclei on pink stroma.

Each gland is an ellipse of purple epithelium with a ring of darker nuclei along its edge, on a
textured pink background, written as a TIFF with a pixel size so the slide has a magnification.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from shapely.affinity import scale as shapely_scale
from shapely.geometry import Point, Polygon

Gland = tuple[float, float, float, float]  # centre x, centre y, radius x, radius y (level-0 px)


def gland_image(
    width: int, height: int, glands: Sequence[Gland], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB and (H, W) uint16 labels (gland i is i + 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = (232, 188, 208)  # eosin-pink stroma
    # stroma texture: smooth blotches
    blotch = rng.normal(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    blotch = np.kron(blotch, np.ones((16, 16), np.float32))[:height, :width]
    image += blotch[..., None] * np.array([6, 8, 6], np.float32)
    labels = np.zeros((height, width), np.uint16)
    for i, (cx, cy, rx, ry) in enumerate(glands):
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        inside = d < 1
        image[inside] = (150, 80, 170)  # epithelium
        rim = inside & (d > 0.72)
        image[rim] = (95, 45, 130)  # nuclei along the basement membrane
        labels[inside] = i + 1
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_gland_slide(
    path: Path, width: int, height: int, glands: Sequence[Gland], mpp: float = 0.5
) -> np.ndarray:
    """Write the image as a TIFF with ``mpp`` microns per pixel; returns the label map."""
    image, labels = gland_image(width, height, glands)
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    return labels


def gland_polygon(gland: Gland) -> Polygon:
    """The gland's true outline in level-0 pixels."""
    cx, cy, rx, ry = gland
    circle = Point(cx, cy).buffer(1.0, quad_segs=64)
    return shapely_scale(circle, rx, ry, origin=(cx, cy))
