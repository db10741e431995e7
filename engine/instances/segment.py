"""Every object of a region with an instance decoder: streamed fields, watershed, merge, clip.

The region is covered by overlapping fields at the decoder's magnification
(:func:`engine.everything.tile_fields`). Each field is read, encoded, decoded and turned into
objects, and its encoder maps are dropped before the next field is read, so memory does not grow
with the region: what stays are the outlines. Objects seen by two overlapping fields are merged
once (:func:`engine.everything.merge_objects`, the grid's merge), clipped to the region's
outline, and kept when their area is within the limits (um^2 when the slide has a pixel size).
Optionally each object is refined by WSI-SAM with its box and its own mask as the prompt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import torch
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

from engine.cleanup import area_to_pixels
from engine.everything import (
    EverythingCancelledError,
    EverythingObject,
    EverythingResult,
    _region_geometry,
    merge_objects,
    tile_fields,
)
from engine.geometry import mask_to_geometry
from engine.instances.checkpoint import InstanceModel
from engine.instances.features import downsample_rgb, encode_field, normalised_rgb
from engine.instances.watershed import instances_from_maps, maps_to_probabilities
from engine.patches import PATCH_SIZE, Field, level0_magnification, read_field
from engine.sam.sam import Sam
from engine.slides import Slide

__all__ = ["InstanceSettings", "decode_field", "field_objects", "segment_instances"]


@dataclass(frozen=True)
class InstanceSettings:
    """How a region is covered and what is kept.

    Attributes:
        tile_overlap: overlap of neighbouring fields, as a fraction of the HR patch.
        min_area, max_area: object area limits in um^2 (px^2 without a pixel size); None takes
            the decoder's own.
        merge_thresh: across fields, the overlap above which two objects are one.
    """

    tile_overlap: float = 0.25
    min_area: float | None = None
    max_area: float | None = None
    merge_thresh: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")


def inside_slide(slide: Slide, chosen: Field, size: int) -> NDArray[np.bool_]:
    """(size, size) bool: cells of the HR patch whose centre lies on the slide."""
    width, height = slide.dimensions
    centres = (np.arange(size) + 0.5) * chosen.hr_downsample * PATCH_SIZE / size
    xs = chosen.hr_origin[0] + centres
    ys = chosen.hr_origin[1] + centres
    return ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]


@torch.no_grad()
def decode_field(
    sam: Sam,
    model: InstanceModel,
    hr_image: NDArray[np.uint8],
    lr_image: NDArray[np.uint8] | None = None,
) -> torch.Tensor:
    """Encode one field and run the decoder: (3, S, S) logits (S = the decoder's out_size)."""
    config = model.config
    maps = encode_field(sam, hr_image, lr_image if config.needs_lr else None, config.encoder_maps)
    if "rgb" in config.inputs:
        maps["rgb"] = normalised_rgb(sam, downsample_rgb(hr_image))[None].to(sam.device)
    decoder = model.decoder.to(sam.device)
    return decoder(maps)[0].float().cpu()


GLASS_MIN_RGB = 200  # a pixel whose darkest channel is above this...
GLASS_MAX_SPREAD = 20  # ...and whose channels differ by less than this is bare glass
GLASS_FRACTION = 0.9  # an object this much glass is not an object


def drop_glass(labels: NDArray[np.int32], hr_image: NDArray[np.uint8]) -> NDArray[np.int32]:
    """(W, W) labels without the objects that lie almost wholly on bare glass (near-white,
    unstained pixels of the (1024, 1024, 3) field image): a decoder may see "something" in an
    empty area, a pathologist never does. Lumens inside glands keep their epithelium, so real
    objects stay."""
    work = labels.shape[0]
    if not labels.any():
        return labels
    factor = hr_image.shape[0] // work
    pixels = hr_image[: work * factor, : work * factor].astype(np.int16)
    darkest, brightest = pixels.min(axis=2), pixels.max(axis=2)
    glass = (darkest > GLASS_MIN_RGB) & (brightest - darkest < GLASS_MAX_SPREAD)
    if factor > 1:
        glass = glass.reshape(work, factor, work, factor).mean(axis=(1, 3)) > 0.5
    count = int(labels.max())
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    on_glass = np.bincount(labels.ravel(), weights=glass.ravel(), minlength=count + 1)
    dropped = on_glass > GLASS_FRACTION * np.maximum(sizes, 1)
    dropped[0] = False
    if not dropped.any():
        return labels
    out = labels.copy()
    out[dropped[labels]] = 0
    return out


def field_objects(
    labels: NDArray[np.int32],
    probabilities: NDArray[np.float32],
    chosen: Field,
    region: BaseGeometry,
) -> list[EverythingObject]:
    """The objects of one field's (W, W) label map as level-0 outlines, clipped to ``region``.

    The score of an object is its mean foreground probability; ``cut`` says it touches the
    patch's border (another field may see it whole).
    """
    work = labels.shape[0]
    scale = chosen.hr_downsample * PATCH_SIZE / work
    objects = []
    for index, window in enumerate(ndimage.find_objects(labels)):
        if window is None:
            continue
        label = index + 1
        mask = labels[window] == label
        rows, cols = window
        geometry = mask_to_geometry(
            mask,
            scale=scale,
            offset=(
                chosen.hr_origin[0] + cols.start * scale,
                chosen.hr_origin[1] + rows.start * scale,
            ),
            simplify_tolerance=0.5,
        )
        if geometry is None:
            continue
        clipped = geometry.intersection(region)
        parts = [g for g in shapely.get_parts(clipped) if isinstance(g, Polygon) and g.area > 0]
        if not parts:
            continue
        shape: Polygon | MultiPolygon = parts[0] if len(parts) == 1 else MultiPolygon(parts)
        cut = rows.start <= 0 or cols.start <= 0 or rows.stop >= work or cols.stop >= work
        score = float(probabilities[0][window][mask].mean())
        centre = shape.representative_point()
        objects.append(
            EverythingObject(shape, score, score, (float(centre.x), float(centre.y)), chosen, cut)
        )
    return objects


@torch.inference_mode()
def segment_instances(
    sam: Sam,
    model: InstanceModel,
    slide: Slide,
    region: BaseGeometry | Sequence[float],
    settings: InstanceSettings | None = None,
    *,
    default_magnification: float = 40.0,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    refine: Callable[[list[EverythingObject]], list[EverythingObject]] | None = None,
) -> EverythingResult:
    """Every object the decoder finds in a region of a slide.

    Args:
        sam: the frozen SAM whose encoder the decoder reads (its backend runs the encodes).
        model: the instance decoder.
        slide: an open slide.
        region: a level-0 Polygon / MultiPolygon, or a box (x0, y0, x1, y1).
        settings: overlap and area limits.
        default_magnification: level-0 magnification of slides that record none.
        progress: ``progress(done, total)`` after each field.
        cancel: asked between fields; True raises :class:`EverythingCancelledError`.
        refine: optional: replaces each field's objects (e.g. WSI-SAM refinement).
    Raises:
        engine.wsi_predictor.PromptError: the region is empty or off the slide.
    """
    settings = settings or InstanceSettings()
    started = time.perf_counter()
    timings = {"read": 0.0, "encode": 0.0, "watershed": 0.0, "polygon": 0.0, "merge": 0.0}
    geometry = _region_geometry(region)
    width, height = slide.dimensions
    geometry = geometry.intersection(shapely_box(0, 0, width, height))
    fields = tile_fields(
        slide, geometry, model.magnification, settings.tile_overlap, default_magnification
    )
    shapely.prepare(geometry)
    min_area = model.min_area_um2 if settings.min_area is None else settings.min_area
    max_area = model.max_area_um2 if settings.max_area is None else settings.max_area
    # the decoder's limits are in um^2: a slide that records no pixel size is taken at the
    # usual 10 um / magnification per pixel of its (assumed) level-0 magnification
    mpp = slide.mpp or (10.0 / level0_magnification(slide, default_magnification),) * 2
    min_px = area_to_pixels(min_area, mpp)
    max_px = math.inf if max_area is None else area_to_pixels(max_area, mpp)
    work = model.watershed.work_size
    # objects per field, so that a new field is merged only with its neighbours' objects
    by_field: dict[int, list[EverythingObject]] = {}
    boxes = [shapely_box(*f.hr_bounds) for f in fields]
    for done, chosen in enumerate(fields):
        if cancel is not None and cancel():
            raise EverythingCancelledError("segment everything cancelled")
        t0 = time.perf_counter()
        hr, lr = read_field(slide, chosen)
        timings["read"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = decode_field(sam, model, np.asarray(hr), np.asarray(lr))
        timings["encode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        probabilities = maps_to_probabilities(logits, work)
        valid = inside_slide(slide, chosen, work)
        labels = instances_from_maps(probabilities, model.watershed, model.config.out_size, valid)
        labels = drop_glass(labels, np.asarray(hr))
        timings["watershed"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        new = field_objects(labels, probabilities, chosen, geometry)
        timings["polygon"] += time.perf_counter() - t0
        if refine is not None and new:
            new = refine(new)
        t0 = time.perf_counter()
        neighbours = [i for i in by_field if boxes[i].intersects(boxes[done])]
        near = [o for i in neighbours for o in by_field.pop(i)]
        merged = merge_objects(near, new, settings.merge_thresh) if near else new
        index_of = {f: i for i, f in ((n, fields[n]) for n in [*neighbours, done])}
        for obj in merged:
            by_field.setdefault(index_of.get(obj.field, done), []).append(obj)
        timings["merge"] += time.perf_counter() - t0
        if progress is not None:
            progress(done + 1, len(fields))
    if cancel is not None and cancel():
        raise EverythingCancelledError("segment everything cancelled")
    final = [
        o for objects in by_field.values() for o in objects if min_px <= o.geometry.area <= max_px
    ]
    final.sort(key=lambda o: (o.geometry.bounds[1], o.geometry.bounds[0]))
    timings["total"] = time.perf_counter() - started
    return EverythingResult(final, fields, len(final), timings)
