"""Pyramid levels as the viewer draws them, and the tile grid over each level.

The viewer draws from *display levels*: the slide's own pyramid levels plus synthetic coarser
levels (read with ``slide.read_scaled``) where the slide has none, so that a single-level image or
a pyramid with a large gap never has to be drawn from thousands of level-0 tiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

# A display level is added between two slide levels whose downsamples differ by more than this,
# so that a drawn tile is never shrunk by more than this factor (cost and aliasing).
MAX_LEVEL_RATIO = 2.0


class SlideLike(Protocol):
    """What the viewer needs from a slide (``engine.Slide`` provides it)."""

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_count(self) -> int: ...

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]: ...

    @property
    def level_downsamples(self) -> Sequence[float]: ...

    @property
    def mpp(self) -> tuple[float, float] | None: ...

    @property
    def magnification(self) -> float | None: ...

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray[Any, Any]: ...

    def read_scaled(
        self, location: tuple[float, float], downsample: float, size: tuple[int, int]
    ) -> np.ndarray[Any, Any]: ...


@dataclass(frozen=True)
class DisplayLevel:
    """One level the viewer draws tiles from.

    Attributes:
        downsample: level-0 pixels per pixel of this level.
        width, height: size of the level in its own pixels.
        slide_level: index of the slide's own level, or None for a synthetic level read with
            ``read_scaled``.
    """

    downsample: float
    width: int
    height: int
    slide_level: int | None

    @property
    def synthetic(self) -> bool:
        return self.slide_level is None


class TileKey(NamedTuple):
    """A tile: display level index, column and row in the level's tile grid."""

    level: int
    col: int
    row: int


def build_display_levels(slide: SlideLike, tile_size: int) -> list[DisplayLevel]:
    """The levels to draw from, finest first.

    Keeps every slide level, inserts synthetic levels (factor 2 apart) where two slide levels are
    more than ``MAX_LEVEL_RATIO`` apart, and adds synthetic levels beyond the coarsest slide level
    until the whole slide fits in one tile.
    """
    width0, height0 = slide.dimensions
    if width0 <= 0 or height0 <= 0:
        raise ValueError(f"slide has an empty level 0: {width0} x {height0}")
    real = [
        DisplayLevel(float(ds), int(w), int(h), index)
        for index, (ds, (w, h)) in enumerate(
            zip(slide.level_downsamples, slide.level_dimensions, strict=True)
        )
    ]
    real.sort(key=lambda level: level.downsample)

    def synthetic(ds: float) -> DisplayLevel:
        return DisplayLevel(
            ds, max(1, math.ceil(width0 / ds)), max(1, math.ceil(height0 / ds)), None
        )

    levels: list[DisplayLevel] = []
    for index, level in enumerate(real):
        levels.append(level)
        if index + 1 < len(real):
            ds = level.downsample * 2.0
            while real[index + 1].downsample / levels[-1].downsample > MAX_LEVEL_RATIO:
                levels.append(synthetic(ds))
                ds *= 2.0
    while max(levels[-1].width, levels[-1].height) > tile_size:
        levels.append(synthetic(levels[-1].downsample * 2.0))
    return levels


def choose_level(levels: Sequence[DisplayLevel], downsample: float) -> int:
    """Index of the finest level whose downsample is <= the view's (as QuPath does).

    Zoomed in beyond level 0 this is level 0; a tiny tolerance keeps a view sitting exactly on a
    level's downsample on that level despite float error.
    """
    chosen = 0
    for index, level in enumerate(levels):
        if level.downsample <= downsample * (1.0 + 1e-6):
            chosen = index
    return chosen


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one display level: tile (col, row) covers level pixels
    [col * size, min((col + 1) * size, width)) x [row * size, ...)."""

    level: DisplayLevel
    size: int

    @property
    def columns(self) -> int:
        return math.ceil(self.level.width / self.size)

    @property
    def rows(self) -> int:
        return math.ceil(self.level.height / self.size)

    def tile_size(self, col: int, row: int) -> tuple[int, int]:
        """(w, h) in level pixels; edge tiles are cut at the level's edge."""
        w = min(self.size, self.level.width - col * self.size)
        h = min(self.size, self.level.height - row * self.size)
        return w, h

    def tile_rect_level0(self, col: int, row: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) of the tile in level-0 pixels."""
        ds = self.level.downsample
        w, h = self.tile_size(col, row)
        return col * self.size * ds, row * self.size * ds, w * ds, h * ds

    def tiles_in(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[tuple[int, int]]:
        """(col, row) of the tiles that intersect the level-0 rectangle [x0, x1) x [y0, y1)."""
        span = self.size * self.level.downsample
        c0 = max(0, math.floor(x0 / span))
        r0 = max(0, math.floor(y0 / span))
        c1 = min(self.columns - 1, math.ceil(x1 / span) - 1)
        r1 = min(self.rows - 1, math.ceil(y1 / span) - 1)
        for row in range(r0, r1 + 1):
            for col in range(c0, c1 + 1):
                yield col, row


def read_tile(
    slide: SlideLike, level: DisplayLevel, grid_size: int, col: int, row: int
) -> np.ndarray[Any, Any]:
    """Pixels of one tile, (h, w, 3) uint8 RGB, read from the slide's level or with read_scaled."""
    grid = TileGrid(level, grid_size)
    w, h = grid.tile_size(col, row)
    ds = level.downsample
    if level.slide_level is not None:
        location = (round(col * grid_size * ds), round(row * grid_size * ds))
        pixels = slide.read_region(location, level.slide_level, (w, h))
    else:
        pixels = slide.read_scaled((col * grid_size * ds, row * grid_size * ds), ds, (w, h))
    pixels = np.asarray(pixels)
    if pixels.shape[:2] != (h, w) or pixels.ndim != 3 or pixels.shape[2] < 3:
        raise ValueError(
            f"slide returned a tile of shape {pixels.shape}, expected ({h}, {w}, 3) "
            f"(display level downsample {ds:g}, tile {col},{row})"
        )
    return pixels
