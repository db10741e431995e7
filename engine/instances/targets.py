"""Training targets of an instance decoder: three per-pixel maps from an instance label map.

For every object (one id of the label map):

- **foreground**: 1 inside any object, 0 outside;
- **centre distance**: the distance to the object's centre, divided by the largest such
  distance inside the object: 0 at the centre, 1 at the farthest pixel. The centre is the
  object's innermost pixel (the maximum of its distance transform), not its centroid, so it lies
  inside ring- and crescent-shaped glands too;
- **boundary distance**: 1 minus the distance to the object's boundary divided by its largest
  value: 0 at the innermost pixel, 1 on the boundary.

Both distances are normalised per object (as micro-sam's AIS does), so a gland and a nucleus
give maps of the same range; seeds are where both are small. Outside objects the distance maps
are undefined and carry no loss (``distance_weight``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["InstanceTargets", "downsample_labels", "instance_targets"]

InstanceTargets = NDArray[np.float32]


def downsample_labels(labels: NDArray[np.integer], size: int) -> NDArray[np.int32]:
    """An (H, W) label map at (size, size): the label at each output pixel's centre.

    H and W must be multiples of ``size``.
    """
    height, width = labels.shape
    if height % size or width % size:
        raise ValueError(f"a {height}x{width} label map cannot be sampled to {size}x{size}")
    step_y, step_x = height // size, width // size
    return np.ascontiguousarray(labels[step_y // 2 :: step_y, step_x // 2 :: step_x]).astype(
        np.int32
    )


def instance_targets(labels: NDArray[np.integer]) -> InstanceTargets:
    """(3, H, W) float32 targets of an (H, W) label map (0 = background, 1..N objects).

    Channel 0 foreground, 1 centre distance, 2 boundary distance (see the module's doc). Objects
    of one pixel get centre and boundary distance 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    height, width = labels.shape
    out = np.zeros((3, height, width), dtype=np.float32)
    out[1:] = 1.0
    foreground = labels > 0
    out[0] = foreground
    if not foreground.any():
        return out
    for index, window in enumerate(ndimage.find_objects(labels.astype(np.int64))):
        if window is None:
            continue
        label = index + 1
        # one pixel of margin, so the distance to the boundary counts the window's edge as outside
        y0, y1 = max(window[0].start - 1, 0), min(window[0].stop + 1, height)
        x0, x1 = max(window[1].start - 1, 0), min(window[1].stop + 1, width)
        mask = labels[y0:y1, x0:x1] == label
        padded = np.pad(mask, 1)
        inner = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
        deepest = float(inner.max())
        cy, cx = np.unravel_index(int(np.argmax(inner)), inner.shape)
        ys, xs = np.nonzero(mask)
        to_centre = np.hypot(ys - cy, xs - cx)
        far = float(to_centre.max())
        region_centre = out[1, y0:y1, x0:x1]
        region_boundary = out[2, y0:y1, x0:x1]
        region_centre[ys, xs] = to_centre / far if far > 0 else 0.0
        # the innermost pixel has distance `deepest`; the boundary pixels have distance 1
        if deepest > 1:
            region_boundary[ys, xs] = 1.0 - (inner[ys, xs] - 1.0) / (deepest - 1.0)
        else:
            region_boundary[ys, xs] = 0.0
    return out
