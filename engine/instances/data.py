"""Training fields of an instance decoder: fields of a slide, the objects in them, and where the
annotation is complete.

A :class:`TrainingField` is one field at the decoder's magnification with every annotated
object that touches it and the *complete* area: where every object of the wanted classes is
annotated (QuPath's ``Region*`` annotations, a class the user names, or the whole image for a
label map). Outside that area unlabelled tissue is not background, so it carries no loss
(:func:`field_labels` returns it as ``valid = False``), nor does anything off the slide.

Augmentations are the eight symmetries of the square (:data:`DIHEDRAL`): rotations by 90 degrees
and flips, applied to the patch before encoding (the encoder is not rotation-invariant, so each
variant is its own encode) and to the label map alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

from engine.geometry import geometry_to_mask
from engine.patches import PATCH_SIZE, Field
from engine.slides import Slide

__all__ = [
    "DIHEDRAL",
    "TrainingField",
    "apply_dihedral",
    "field_labels",
    "region_fields",
]

#: The eight symmetries of the square as (quarter turns, then a left-right mirror or not);
#: index 0 is the identity.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple(
    (k, flip) for flip in (False, True) for k in range(4)
)


def apply_dihedral(array: NDArray, variant: int) -> NDArray:
    """Apply symmetry ``variant`` (0-7, see :data:`DIHEDRAL`) to an (H, W, ...) array."""
    turns, flip = DIHEDRAL[variant]
    out = np.rot90(array, turns, axes=(0, 1))
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class TrainingField:
    """One field to learn from.

    Attributes:
        source: the slide or image file.
        field: the field (its HR patch is what the decoder sees).
        objects: level-0 geometries of the annotated objects that touch the field.
        complete: level-0 area where the annotation is complete (None: the whole slide).
        image: a name for messages and results (e.g. the image's file name).
        dataset: a name grouping fields (e.g. "GlaS").
    """

    source: Path
    field: Field
    objects: tuple[BaseGeometry, ...]
    complete: BaseGeometry | None
    image: str
    dataset: str = ""


def field_labels(
    item: TrainingField, slide_size: tuple[int, int], size: int = PATCH_SIZE
) -> tuple[NDArray[np.int32], NDArray[np.bool_]]:
    """(size, size) instance labels (1..N in the order of ``item.objects``) and validity mask.

    ``valid`` is False off the slide and outside ``item.complete``. Where objects overlap the
    later one wins.
    """
    chosen = item.field
    scale = chosen.hr_downsample * PATCH_SIZE / size
    origin = chosen.hr_origin
    labels = np.zeros((size, size), dtype=np.int32)
    for index, geometry in enumerate(item.objects, start=1):
        x0, y0, x1, y1 = geometry.bounds
        c0 = max(int(np.floor((x0 - origin[0]) / scale)) - 1, 0)
        r0 = max(int(np.floor((y0 - origin[1]) / scale)) - 1, 0)
        c1 = min(int(np.ceil((x1 - origin[0]) / scale)) + 1, size)
        r1 = min(int(np.ceil((y1 - origin[1]) / scale)) + 1, size)
        if c1 <= c0 or r1 <= r0:
            continue
        window = geometry_to_mask(
            geometry,
            (r1 - r0, c1 - c0),
            scale=scale,
            offset=(origin[0] + c0 * scale, origin[1] + r0 * scale),
        )
        labels[r0:r1, c0:c1][window] = index
    width, height = slide_size
    centres = (np.arange(size) + 0.5) * scale
    xs, ys = origin[0] + centres, origin[1] + centres
    valid = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    if item.complete is not None:
        valid &= geometry_to_mask(item.complete, (size, size), scale=scale, offset=origin)
    labels[~valid] = 0
    return labels, valid


def region_fields(
    slide: Slide,
    source: Path,
    objects: Sequence[BaseGeometry],
    complete: BaseGeometry | None,
    magnification: float,
    *,
    image: str | None = None,
    dataset: str = "",
    overlap: float = 0.1,
    default_magnification: float = 40.0,
) -> list[TrainingField]:
    """Fields at ``magnification`` covering the complete area (the whole slide when None), each
    with the objects that touch it. Fields without any valid pixel are left out."""
    from engine.everything import tile_fields

    width, height = slide.dimensions
    area = shapely_box(0, 0, width, height) if complete is None else complete
    if area.is_empty:
        return []
    fields: Iterable[Field] = tile_fields(
        slide, area, magnification, overlap, default_magnification
    )
    tree = shapely.STRtree(list(objects)) if objects else None
    out = []
    for chosen in fields:
        patch = shapely_box(*chosen.hr_bounds)
        touching: tuple[BaseGeometry, ...] = ()
        if tree is not None:
            hits = sorted(int(i) for i in tree.query(patch, predicate="intersects"))
            touching = tuple(objects[i] for i in hits)
        out.append(
            TrainingField(
                Path(source), chosen, touching, complete, image or Path(source).name, dataset
            )
        )
    return out


def label_map_fields(
    pairs: Sequence[tuple[Path, Path]],
    magnification: float,
    image_magnification: float,
    *,
    dataset: str = "",
    pool: object | None = None,
) -> list[TrainingField]:
    """Training fields of images with instance label maps (each completely annotated).

    Args:
        pairs: (image, label map) files; the label map holds one id per object.
        magnification: the decoder's HR magnification.
        image_magnification: the images' own magnification when they record none.
    """
    from engine.train.data import SlidePool
    from engine.train.readers import read_label_map

    own = pool is None
    slides = pool if isinstance(pool, SlidePool) else SlidePool()
    out: list[TrainingField] = []
    try:
        for image, labels in pairs:
            objects = [o.geometry for o in read_label_map(labels, instances="labels")]
            slide = slides.get(Path(image))
            out.extend(
                region_fields(
                    slide,
                    Path(image),
                    objects,
                    None,
                    magnification,
                    image=Path(image).name,
                    dataset=dataset,
                    default_magnification=image_magnification,
                )
            )
    finally:
        if own:
            slides.close()
    return out
