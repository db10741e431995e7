"""Training / evaluation samples: one object on one slide or image, with its concentric field.

A :class:`ObjectSample` is cheap plain data (paths, a geometry, a :class:`~engine.patches.Field`);
:func:`load_patches` reads its HR / LR patches and :func:`target_masks` rasterises its HR / LR
target masks. Objects are given as polygons in level-0 pixels (see :mod:`engine.train.readers`);
the field is centred on the object's bounding box, at the working magnification (10x HR / 5x LR
by default, the paper's protocol; ``adaptive=True`` lets it change with the object's size as the
app's predictor does).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from engine.train.readers import AnnotatedObject

if TYPE_CHECKING:
    from engine.patches import Field
    from engine.slides import Slide

logger = logging.getLogger(__name__)

#: objects whose HR target has fewer pixels than this are skipped (no usable prompt)
MIN_TARGET_PIXELS = 4


@dataclass(frozen=True)
class ObjectSample:
    """One object to segment.

    Attributes:
        source: the slide or image file.
        geometry: the object in level-0 pixels of ``source``.
        class_name: its class (None when the source has none).
        dataset: the dataset's name (e.g. ``"GlaS"``), for grouping results.
        field: the concentric HR / LR patches centred on the object.
        name: the object's label in its source, for messages.
    """

    source: Path
    geometry: BaseGeometry
    class_name: str | None
    dataset: str
    field: Field
    name: str | None = None

    @property
    def group(self) -> str:
        """Results are grouped by class, and by dataset when objects carry no class."""
        return self.class_name or self.dataset

    def key(self) -> str:
        """Stable text naming the image content this sample reads (source and field)."""
        return f"{self.source.resolve()}|{field_key(self.field)}"


def field_key(field: Field) -> str:
    """Stable text form of a field (its own ``key`` when it has one)."""
    key = getattr(field, "key", None)
    if key is not None:
        return repr(key)
    return repr(field)


class SlidePool:
    """Keeps the last few opened slides (opening an SVS costs more than reading a patch)."""

    def __init__(self, capacity: int = 4, default_magnification: float | None = None) -> None:
        self.capacity = capacity
        self.default_magnification = default_magnification
        self._open: OrderedDict[Path, Slide] = OrderedDict()

    def get(self, path: Path) -> Slide:
        path = Path(path)
        slide = self._open.get(path)
        if slide is None:
            from engine.slides import open_slide

            slide = open_slide(path)
            self._open[path] = slide
            while len(self._open) > self.capacity:
                _, old = self._open.popitem(last=False)
                old.close()
        self._open.move_to_end(path)
        return slide

    def close(self) -> None:
        for slide in self._open.values():
            slide.close()
        self._open.clear()

    def __enter__(self) -> SlidePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_samples(
    source: str | Path,
    objects: Iterable[AnnotatedObject],
    dataset: str,
    *,
    magnification: float = 10.0,
    adaptive: bool = False,
    default_magnification: float = 40.0,
    pool: SlidePool | None = None,
) -> list[ObjectSample]:
    """Samples for the objects of one slide or image.

    Args:
        source: slide or plain image file.
        objects: the objects, geometries in level-0 pixels.
        dataset: dataset name for grouping results.
        magnification: working (HR) magnification; the LR patch is at half of it.
        adaptive: let the magnification follow the object's size (False: the paper's protocol).
        default_magnification: level-0 magnification of images that carry no mpp / objective
            power (GlaS: 20x at 0.62 um/px, MoNuSeg: 40x at 0.25 um/px).
        pool: open slides to reuse.
    """
    from engine.patches import choose_field

    source = Path(source)
    own_pool = pool is None
    pool = pool or SlidePool()
    try:
        slide = pool.get(source)
        samples = []
        for obj in objects:
            if obj.geometry.is_empty:
                continue
            field = choose_field(
                slide,
                tuple(float(v) for v in obj.geometry.bounds),
                magnification=magnification,
                adaptive=adaptive,
                default_magnification=default_magnification,
            )
            samples.append(
                ObjectSample(source, obj.geometry, obj.class_name, dataset, field, obj.name)
            )
        return samples
    finally:
        if own_pool:
            pool.close()


def target_masks(sample: ObjectSample) -> tuple[np.ndarray, np.ndarray]:
    """The object rasterised on the HR and the LR patch: two (1024, 1024) bool masks."""
    from engine.patches import rasterize

    return (
        np.asarray(rasterize(sample.geometry, sample.field, which="hr"), dtype=bool),
        np.asarray(rasterize(sample.geometry, sample.field, which="lr"), dtype=bool),
    )


def load_patches(sample: ObjectSample, pool: SlidePool) -> tuple[np.ndarray, np.ndarray]:
    """The HR and LR patches of a sample: two (1024, 1024, 3) uint8 RGB arrays."""
    from engine.patches import read_field

    hr, lr = read_field(pool.get(sample.source), sample.field)
    return np.asarray(hr, dtype=np.uint8), np.asarray(lr, dtype=np.uint8)


def usable(samples: Sequence[ObjectSample]) -> tuple[list[ObjectSample], list[str]]:
    """Drop samples whose HR target is (nearly) empty; return the rest and why others went."""
    kept: list[ObjectSample] = []
    dropped: list[str] = []
    for sample in samples:
        hr, _ = target_masks(sample)
        if int(hr.sum()) < MIN_TARGET_PIXELS:
            dropped.append(f"{sample.source.name} object {sample.name}: {int(hr.sum())} HR pixels")
        else:
            kept.append(sample)
    return kept, dropped


def describe_samples(samples: Sequence[ObjectSample]) -> dict[str, Any]:
    """Counts per group and the set of sources, for logs and checkpoint metadata."""
    groups: dict[str, int] = {}
    for s in samples:
        groups[s.group] = groups.get(s.group, 0) + 1
    return {
        "n_objects": len(samples),
        "n_sources": len({s.source for s in samples}),
        "groups": groups,
        "datasets": sorted({s.dataset for s in samples}),
    }
