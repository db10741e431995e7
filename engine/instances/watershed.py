"""Decoder maps -> instances: seeds where both distances are small, then a seeded watershed.

As micro-sam's AIS post-processing, with sizes in the field's own pixels: the three maps are
upsampled to ``work_size``, the distance maps smoothed with a Gaussian, seeds are the connected
regions where the centre distance and the boundary distance are below their thresholds inside
the foreground, seeds smaller than ``min_seed_pixels`` are dropped, and a watershed on the
boundary distance grows them within the foreground (scikit-image); foreground that no seed
reaches is an object of its own (also where there is no seed at all). Objects outside the size
limits are dropped later, in um^2, by the caller that knows the field's pixel size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage
from torch.nn import functional as F

__all__ = ["WatershedSettings", "instances_from_maps", "maps_to_probabilities"]


@dataclass(frozen=True)
class WatershedSettings:
    """How maps become instances.

    Attributes:
        foreground_threshold: a pixel is foreground above this probability.
        centre_threshold, boundary_threshold: seeds are where both distances are below these.
        sigma: Gaussian smoothing of the distance maps, in output-map pixels (256 per field).
        min_seed_pixels: seeds smaller than this (in output-map pixels) are dropped.
        work_size: side the maps are upsampled to before the watershed (per 1024-px field).
    """

    foreground_threshold: float = 0.5
    centre_threshold: float = 0.5
    boundary_threshold: float = 0.5
    sigma: float = 1.0
    min_seed_pixels: float = 4.0
    work_size: int = 512

    def __post_init__(self) -> None:
        for name in ("foreground_threshold", "centre_threshold", "boundary_threshold"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.sigma < 0 or self.min_seed_pixels < 0:
            raise ValueError("sigma and min_seed_pixels must be >= 0")
        if self.work_size not in (256, 512, 1024):
            raise ValueError(f"work_size must be 256, 512 or 1024, got {self.work_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> WatershedSettings:
        known = {f.name for f in fields(WatershedSettings)}
        return WatershedSettings(**{k: v for k, v in data.items() if k in known})


def maps_to_probabilities(logits: torch.Tensor, work_size: int) -> NDArray[np.float32]:
    """(3, S, S) decoder logits -> (3, work_size, work_size) float32 in [0, 1] (sigmoid,
    bilinear)."""
    maps = logits.detach().float()[None]
    if maps.shape[-1] != work_size:
        maps = F.interpolate(
            maps, size=(work_size, work_size), mode="bilinear", align_corners=False
        )
    return torch.sigmoid(maps)[0].cpu().numpy()


def instances_from_maps(
    probabilities: NDArray[np.float32],
    settings: WatershedSettings,
    out_size: int = 256,
    valid: NDArray[np.bool_] | None = None,
) -> NDArray[np.int32]:
    """(3, W, W) probabilities (foreground, centre, boundary) -> (W, W) label map (0 = none).

    ``out_size`` is the decoder's own output side (what ``sigma`` and ``min_seed_pixels`` are
    measured in); ``valid`` (W, W) bool marks pixels that may hold objects (e.g. on the slide).
    """
    from skimage.segmentation import watershed

    foreground_p, centre, boundary = probabilities
    work = foreground_p.shape[-1]
    scale = work / out_size
    if settings.sigma > 0:
        centre = ndimage.gaussian_filter(centre, settings.sigma * scale)
        boundary = ndimage.gaussian_filter(boundary, settings.sigma * scale)
    foreground = foreground_p > settings.foreground_threshold
    if valid is not None:
        foreground &= np.asarray(valid, dtype=bool)
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.int32)
    seeds = (
        foreground
        & (centre < settings.centre_threshold)
        & (boundary < settings.boundary_threshold)
    )
    markers, count = ndimage.label(seeds)
    if count and settings.min_seed_pixels > 0:
        sizes = np.bincount(markers.ravel(), minlength=count + 1)
        small = sizes < settings.min_seed_pixels * scale * scale
        small[0] = False
        if small.any():
            markers[small[markers]] = 0
            markers, count = ndimage.label(markers > 0)
    if count:
        labels = np.asarray(watershed(boundary, markers=markers, mask=foreground), dtype=np.int32)
    else:  # no seed anywhere: every foreground blob is seedless, so each is an object of its own
        labels = np.zeros(foreground.shape, dtype=np.int32)
    # foreground that no seed reached (a blob too thin for a seed) is an object of its own
    orphans, extra = ndimage.label(foreground & (labels == 0))
    if extra:
        labels[orphans > 0] = orphans[orphans > 0] + count
    return labels
