"""Helpers for the viewer tests: a fake slide and a tifffile pyramid that OpenSlide reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class FakeSlide:
    """A slide of one flat colour per level, with the engine.Slide reading interface.

    Records every read (kind, level or downsample, size) and the largest number of reads that ran
    at the same time; ``delay`` slows each read down; ``fail_tiles`` makes reads at those level-0
    locations raise.
    """

    def __init__(
        self,
        size: tuple[int, int] = (5000, 4000),
        downsamples: Sequence[float] = (1.0,),
        colour: tuple[int, int, int] = (200, 40, 40),
        mpp: tuple[float, float] | None = (0.5, 0.5),
        delay: float = 0.0,
        fail_locations: Sequence[tuple[int, int]] = (),
    ) -> None:
        width, height = size
        self.dimensions = (width, height)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.level_dimensions = tuple(
            (max(1, round(width / d)), max(1, round(height / d))) for d in downsamples
        )
        self.level_count = len(downsamples)
        self.mpp = mpp
        self.magnification = 10.0 / mpp[0] if mpp else None
        self.colour = colour
        self.delay = delay
        self.fail_locations = set(fail_locations)
        self.closed = False
        self.reads: list[tuple[str, float, tuple[int, int]]] = []
        self.reads_after_close = 0
        self.max_concurrent = 0
        self._active = 0
        self._guard = threading.Lock()

    def _pixels(self, location: tuple[float, float], size: tuple[int, int]) -> Any:
        with self._guard:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
            if self.closed:
                self.reads_after_close += 1
        try:
            if self.delay:
                time.sleep(self.delay)
            if (round(location[0]), round(location[1])) in self.fail_locations:
                raise OSError(f"corrupt tile at {location}")
            w, h = size
            out = np.empty((h, w, 3), np.uint8)
            out[:] = self.colour
            return out
        finally:
            with self._guard:
                self._active -= 1

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        self.reads.append(("region", float(level), size))
        return self._pixels(location, size)

    def read_scaled(
        self, location: tuple[float, float], downsample: float, size: tuple[int, int]
    ) -> Any:
        self.reads.append(("scaled", float(downsample), size))
        return self._pixels(location, size)

    def close(self) -> None:
        self.closed = True


def level_pattern(
    width: int, height: int, level: int, rows: slice | None = None
) -> np.ndarray[Any, Any]:
    """(h, w, 3) uint8 image of one pyramid level (or of ``rows`` of it): gradients plus a
    level-specific blue value, so a tile read from the wrong level is recognisable."""
    rows = rows or slice(0, height)
    yy, xx = np.mgrid[rows, 0:width]
    red = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    green = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    blue = np.full_like(red, 40 + 60 * level)
    return np.stack([red, green, blue], axis=-1)


def write_pyramid(
    path: Path,
    size: tuple[int, int],
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    mpp: float = 0.5,
) -> Path:
    """A tiled, deflate-compressed pyramidal TIFF OpenSlide reads as multi-level ("generic-tiff"):
    reduced levels are separate pages with subfiletype=1 (not SubIFDs), photometric RGB."""
    import tifffile

    width, height = size
    with tifffile.TiffWriter(path) as writer:
        for level, ds in enumerate(downsamples):
            w, h = max(1, width // ds), max(1, height // ds)
            resolution = 1e4 / (mpp * ds)  # pixels per centimetre
            writer.write(
                level_pattern(w, h, level),
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if level == 0 else 1,
                resolution=(resolution, resolution),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path
