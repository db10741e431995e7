"""Concentric multi-resolution fields: the HR / LR patch pair WSI-SAM looks at.

A :class:`Field` is a centre in level-0 pixels and the downsample of its high-resolution (HR)
patch. The HR patch is ``PATCH_SIZE`` x ``PATCH_SIZE`` pixels at ``hr_downsample`` level-0 pixels
per pixel; the low-resolution (LR) patch has the same size and centre at twice the downsample (half
the magnification), so the HR patch covers exactly LR pixels ``[256:768]`` on both axes and a point
``b`` in HR pixels is ``b / 2 + 256`` in LR pixels.

``make_field`` derives the downsample from a working magnification (default 10x) and the slide's
level-0 magnification; ``choose_field`` centres a field on a prompt and, by default, adapts the
magnification to the object's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from engine.slides import Slide

__all__ = [
    "DEFAULT_MAGNIFICATION",
    "LR_FACTOR",
    "PATCH_SIZE",
    "Field",
    "choose_field",
    "make_field",
    "rasterize",
    "read_field",
]

PATCH_SIZE = 1024
# The LR patch is at half the HR patch's magnification.
LR_FACTOR = 2.0
# The paper's working magnification for the HR patch.
DEFAULT_MAGNIFICATION = 10.0
# Scanner magnifications are nominal (0.499 um/px is "20x", 0.243 um/px is "40x"): a downsample
# within this ratio of a power of two is taken as that power of two, so fields line up with the
# pyramid's levels and reads are exact copies instead of resampled ones.
_POWER_OF_TWO_SNAP = 1.06


@dataclass(frozen=True)
class Field:
    """A concentric HR / LR pair of ``PATCH_SIZE`` x ``PATCH_SIZE`` patches.

    Attributes:
      centre: (x, y) in level-0 pixels; the point between the four middle pixels of each patch.
      hr_downsample: level-0 pixels per HR pixel (the LR patch has twice as many).
      hr_magnification: the HR patch's magnification, or None when the slide's is unknown.
    """

    centre: tuple[float, float]
    hr_downsample: float
    hr_magnification: float | None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hr_downsample) and self.hr_downsample > 0):
            raise ValueError(f"hr_downsample must be positive, got {self.hr_downsample}")
        if not all(math.isfinite(v) for v in self.centre):
            raise ValueError(f"centre must be finite, got {self.centre}")

    @property
    def lr_downsample(self) -> float:
        """Level-0 pixels per LR pixel."""
        return LR_FACTOR * self.hr_downsample

    @property
    def lr_magnification(self) -> float | None:
        return None if self.hr_magnification is None else self.hr_magnification / LR_FACTOR

    @property
    def hr_origin(self) -> tuple[float, float]:
        """Level-0 (x, y) of the HR patch's pixel (0, 0) top-left corner."""
        half = PATCH_SIZE / 2 * self.hr_downsample
        return (self.centre[0] - half, self.centre[1] - half)

    @property
    def lr_origin(self) -> tuple[float, float]:
        """Level-0 (x, y) of the LR patch's pixel (0, 0) top-left corner."""
        half = PATCH_SIZE / 2 * self.lr_downsample
        return (self.centre[0] - half, self.centre[1] - half)

    @property
    def hr_bounds(self) -> tuple[float, float, float, float]:
        """Level-0 (x0, y0, x1, y1) the HR patch covers."""
        x0, y0 = self.hr_origin
        extent = PATCH_SIZE * self.hr_downsample
        return (x0, y0, x0 + extent, y0 + extent)

    @property
    def lr_bounds(self) -> tuple[float, float, float, float]:
        """Level-0 (x0, y0, x1, y1) the LR patch covers."""
        x0, y0 = self.lr_origin
        extent = PATCH_SIZE * self.lr_downsample
        return (x0, y0, x0 + extent, y0 + extent)

    @property
    def key(self) -> tuple[float, float, float]:
        """Hashable identity of the field's pixels (for embedding caches; add the slide's own)."""
        return (round(self.centre[0], 3), round(self.centre[1], 3), round(self.hr_downsample, 9))

    # -- point transforms: (N, 2) arrays of (x, y) -> (N, 2) float arrays ---------------------

    def level0_to_hr(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Level-0 (x, y) -> HR patch pixel coordinates (continuous; pixel i spans [i, i+1))."""
        return (_points(xy) - np.asarray(self.hr_origin)) / self.hr_downsample

    def hr_to_level0(self, xy: ArrayLike) -> NDArray[np.float64]:
        return _points(xy) * self.hr_downsample + np.asarray(self.hr_origin)

    def level0_to_lr(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Level-0 (x, y) -> LR patch pixel coordinates."""
        return (_points(xy) - np.asarray(self.lr_origin)) / self.lr_downsample

    def lr_to_level0(self, xy: ArrayLike) -> NDArray[np.float64]:
        return _points(xy) * self.lr_downsample + np.asarray(self.lr_origin)

    def hr_to_lr(self, xy: ArrayLike) -> NDArray[np.float64]:
        """HR pixel coordinates -> LR pixel coordinates: ``b / 2 + 256`` for 1024-px patches."""
        return _points(xy) / LR_FACTOR + PATCH_SIZE * (1 - 1 / LR_FACTOR) / 2

    def lr_to_hr(self, xy: ArrayLike) -> NDArray[np.float64]:
        return (_points(xy) - PATCH_SIZE * (1 - 1 / LR_FACTOR) / 2) * LR_FACTOR

    def box_level0_to_hr(self, box: ArrayLike) -> NDArray[np.float64]:
        """Level-0 box (x0, y0, x1, y1) -> (4,) box in HR pixels."""
        return self.level0_to_hr(_box(box).reshape(2, 2)).reshape(4)

    def box_level0_to_lr(self, box: ArrayLike) -> NDArray[np.float64]:
        """Level-0 box (x0, y0, x1, y1) -> (4,) box in LR pixels."""
        return self.level0_to_lr(_box(box).reshape(2, 2)).reshape(4)


def level0_magnification(slide: Slide, default_magnification: float = 40.0) -> float:
    """The slide's level-0 magnification, or ``default_magnification`` when it is unknown."""
    if slide.magnification is not None and slide.magnification > 0:
        return float(slide.magnification)
    if not (math.isfinite(default_magnification) and default_magnification > 0):
        raise ValueError(f"default_magnification must be positive, got {default_magnification}")
    return float(default_magnification)


def make_field(
    slide: Slide,
    centre: tuple[float, float] | Sequence[float],
    magnification: float | None = None,
    *,
    downsample: float | None = None,
    default_magnification: float = 40.0,
) -> Field:
    """The field centred on ``centre`` (level-0 px) with its HR patch at ``magnification``.

    Arguments:
      magnification: the HR patch's magnification (default 10x, the paper's); the downsample is
        the slide's level-0 magnification (from mpp / objective power, or
        ``default_magnification`` when unknown) divided by it, taken as the nearest power of two
        when within 6 % of one (nominal scanner magnifications).
      downsample: give the HR downsample directly instead (then ``magnification`` must be None).

    The centre is moved by less than one LR pixel onto the LR pixel grid, so both patches are
    read without resampling from pyramids whose levels are powers of two.
    """
    if downsample is not None and magnification is not None:
        raise ValueError("give either magnification or downsample, not both")
    base = level0_magnification(slide, default_magnification)
    known = slide.magnification is not None and slide.magnification > 0
    if downsample is not None:
        hr_downsample = float(downsample)
        if not (math.isfinite(hr_downsample) and hr_downsample > 0):
            raise ValueError(f"downsample must be positive, got {downsample}")
        hr_magnification = base / hr_downsample if known else None
    else:
        target = DEFAULT_MAGNIFICATION if magnification is None else float(magnification)
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"magnification must be positive, got {magnification}")
        hr_downsample = _nominal_downsample(base / target)
        hr_magnification = target if known else None
    return Field(_snap_centre(centre, LR_FACTOR * hr_downsample), hr_downsample, hr_magnification)


def choose_field(
    slide: Slide,
    bbox_level0: tuple[float, float, float, float] | Sequence[float] | NDArray[np.float64],
    *,
    magnification: float = DEFAULT_MAGNIFICATION,
    adaptive: bool = True,
    default_magnification: float = 40.0,
    fit_fraction: float = 0.8,
    min_object_pixels: float = 64.0,
    max_steps: int = 12,
) -> Field:
    """The field for a prompt whose extent is ``bbox_level0`` (x0, y0, x1, y1), centred on it.

    ``adaptive=False`` gives the paper's fixed protocol: HR at ``magnification`` whatever the
    object. ``adaptive=True`` starts there and halves the magnification while the object's larger
    side exceeds ``fit_fraction`` of the HR patch (it would not fit with a margin), or doubles it
    while that side is under ``min_object_pixels`` HR pixels (a nucleus at 10x), never finer than
    level 0 (HR downsample >= 1). A zero-size box (a lone point) carries no size: it is never
    zoomed in on.
    """
    x0, y0, x1, y1 = (float(v) for v in _box(bbox_level0))
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box must be (x0, y0, x1, y1) with x0 <= x1, y0 <= y1, got {bbox_level0}")
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    if not adaptive:
        return make_field(slide, centre, magnification, default_magnification=default_magnification)
    if not 0 < fit_fraction <= 1:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction}")

    base = level0_magnification(slide, default_magnification)
    extent = max(x1 - x0, y1 - y0)
    target = float(magnification)
    fits = PATCH_SIZE * fit_fraction

    def hr_extent(mag: float) -> float:
        return extent / _nominal_downsample(base / mag)

    steps = 0
    while hr_extent(target) > fits and steps < max_steps:
        target /= 2
        steps += 1
    if steps == 0 and extent > 0:
        while (
            hr_extent(target) < min_object_pixels
            and _nominal_downsample(base / (target * 2)) >= 1.0 - 1e-9
            and steps < max_steps
        ):
            target *= 2
            steps += 1
    return make_field(slide, centre, target, default_magnification=default_magnification)


def read_field(slide: Slide, field: Field) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """(HR, LR) patches, each (PATCH_SIZE, PATCH_SIZE, 3) uint8 RGB; outside the slide is white."""
    size = (PATCH_SIZE, PATCH_SIZE)
    hr = slide.read_scaled(field.hr_origin, field.hr_downsample, size)
    lr = slide.read_scaled(field.lr_origin, field.lr_downsample, size)
    return hr, lr


def rasterize(
    geometry: BaseGeometry | None,
    field: Field,
    which: Literal["hr", "lr"] = "hr",
    size: int = PATCH_SIZE,
) -> NDArray[np.bool_]:
    """(size, size) bool target mask of level-0 ``geometry`` (holes, multipolygons) in a patch.

    A pixel is set when its centre is inside the geometry.
    """
    from engine.geometry import geometry_to_mask

    if which == "hr":
        origin, downsample = field.hr_origin, field.hr_downsample
    elif which == "lr":
        origin, downsample = field.lr_origin, field.lr_downsample
    else:
        raise ValueError(f"which must be 'hr' or 'lr', got {which!r}")
    return geometry_to_mask(geometry, (size, size), scale=downsample, offset=origin)


def _nominal_downsample(downsample: float) -> float:
    """``downsample``, or the power of two it is within 6 % of."""
    if downsample <= 0 or not math.isfinite(downsample):
        raise ValueError(f"downsample must be positive, got {downsample}")
    power = 2.0 ** round(math.log2(downsample))
    ratio = downsample / power
    if 1 / _POWER_OF_TWO_SNAP <= ratio <= _POWER_OF_TWO_SNAP:
        return power
    return downsample


def _snap_centre(centre: tuple[float, float] | Sequence[float], grid: float) -> tuple[float, float]:
    cx, cy = (float(v) for v in centre)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"centre must be finite, got {centre}")
    if grid < 1 or abs(grid - round(grid)) > 1e-9:
        return (cx, cy)  # no pixel grid of an exact level to line up with
    return (round(cx / grid) * grid, round(cy / grid) * grid)


def _points(xy: ArrayLike) -> NDArray[np.float64]:
    points = np.asarray(xy, dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (N, 2) or (2,), got {points.shape}")
    return points


def _box(box: ArrayLike) -> NDArray[np.float64]:
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    return values
