"""What to load next while the view pans: the tiles ahead of the pan and the levels around.

Pure functions on tile grids (no Qt), used by :class:`app.viewer.slide_view.SlideView`:

- :class:`PanTracker` estimates the pan velocity (level-0 pixels per second) from successive
  view centres; a pause or a zoom resets it.
- :func:`request_plan` orders the tiles the loader should read, best first: the visible tiles of
  the current level; the tiles the pan will uncover next (the strip ahead of the view in the pan
  direction, nearest first); the coarser level under the visible and the ahead area (placeholders
  drawn until the sharp tiles arrive); a ring one tile wide around the view; the coarser level
  around it; the finer level under the view (the next zoom in), when the view is still.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.viewer.levels import TileGrid, TileKey

#: how far ahead of the view to load, in seconds of pan at the current velocity
LOOKAHEAD_S = 0.6
#: the strip ahead is at least this many tiles deep and at most this many view sizes
MIN_AHEAD_TILES = 1.5
MAX_AHEAD_VIEWS = 1.0
#: the pan counts as stopped after this long without a move
PAUSE_S = 0.25
#: weight of the newest velocity sample in the running estimate
SMOOTHING = 0.5

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in level-0 pixels


@dataclass
class PanTracker:
    """Pan velocity from the view centres seen (level-0 pixels per second)."""

    velocity: tuple[float, float] = (0.0, 0.0)
    _last: tuple[float, float, float, float] | None = None  # x, y, downsample, time

    def update(self, x: float, y: float, downsample: float, now: float) -> tuple[float, float]:
        """Record the view centre at time ``now``; returns the velocity estimate."""
        last = self._last
        self._last = (x, y, downsample, now)
        if last is None or not math.isclose(last[2], downsample, rel_tol=1e-6):
            self.velocity = (0.0, 0.0)  # a zoom is not a pan
            return self.velocity
        dt = now - last[3]
        if dt > PAUSE_S:
            self.velocity = (0.0, 0.0)
            return self.velocity
        if dt <= 1e-4:
            return self.velocity  # two changes in one event: keep the estimate
        sample = ((x - last[0]) / dt, (y - last[1]) / dt)
        vx, vy = self.velocity
        if vx == 0.0 and vy == 0.0:
            self.velocity = sample
        else:
            self.velocity = (
                vx + SMOOTHING * (sample[0] - vx),
                vy + SMOOTHING * (sample[1] - vy),
            )
        return self.velocity

    def reset(self) -> None:
        self.velocity = (0.0, 0.0)
        self._last = None


def ahead_shift(visible: Rect, velocity: tuple[float, float], span: float) -> tuple[float, float]:
    """How far (level-0 dx, dy) ahead of the view to load for a pan at ``velocity``: the
    distance covered in :data:`LOOKAHEAD_S`, at least :data:`MIN_AHEAD_TILES` tiles of ``span``
    level-0 pixels and at most :data:`MAX_AHEAD_VIEWS` view sizes; (0, 0) when not panning."""
    vx, vy = velocity
    speed = math.hypot(vx, vy)
    if speed <= 0.0:
        return 0.0, 0.0
    distance = max(speed * LOOKAHEAD_S, MIN_AHEAD_TILES * span)
    width, height = visible[2] - visible[0], visible[3] - visible[1]
    dx, dy = vx / speed * distance, vy / speed * distance
    limit = MAX_AHEAD_VIEWS
    dx = max(-limit * width, min(limit * width, dx))
    dy = max(-limit * height, min(limit * height, dy))
    return dx, dy


def tiles_by_distance(
    grid: TileGrid, level: int, area: Rect, centre: tuple[float, float]
) -> list[TileKey]:
    """Tiles of ``grid`` intersecting ``area``, nearest ``centre`` first."""
    span = grid.size * grid.level.downsample
    keys = [TileKey(level, col, row) for col, row in grid.tiles_in(*area)]
    cx, cy = centre[0] / span - 0.5, centre[1] / span - 0.5
    keys.sort(key=lambda k: (k.col - cx) ** 2 + (k.row - cy) ** 2)
    return keys


def tiles_ahead(
    grid: TileGrid, level: int, visible: Rect, shift: tuple[float, float]
) -> list[TileKey]:
    """Tiles of ``grid`` the view uncovers when it moves by ``shift`` (level-0 dx, dy) from
    ``visible``, not visible now, nearest to the view first."""
    dx, dy = shift
    if dx == 0.0 and dy == 0.0:
        return []
    x0, y0, x1, y1 = visible
    swept = (min(x0, x0 + dx), min(y0, y0 + dy), max(x1, x1 + dx), max(y1, y1 + dy))
    now = set(grid.tiles_in(*visible))
    span = grid.size * grid.level.downsample
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def order(key: TileKey) -> tuple[float, float]:
        tx, ty = (key.col + 0.5) * span - cx, (key.row + 0.5) * span - cy
        along = tx * ux + ty * uy
        across = abs(-tx * uy + ty * ux)
        return along, across

    keys = [TileKey(level, c, r) for c, r in grid.tiles_in(*swept) if (c, r) not in now]
    keys.sort(key=order)
    return keys


def request_plan(
    grids: Sequence[TileGrid],
    level: int,
    visible: Rect,
    velocity: tuple[float, float] = (0.0, 0.0),
) -> list[TileKey]:
    """The tiles to load, best first, for a view showing ``visible`` at display ``level`` while
    panning at ``velocity`` (level-0 pixels per second); see the module docstring. Tiles may
    repeat (callers skip those seen, cached or failed)."""
    grid = grids[level]
    span = grid.size * grid.level.downsample
    centre = ((visible[0] + visible[2]) / 2, (visible[1] + visible[3]) / 2)
    shift = ahead_shift(visible, velocity, span)
    plan = tiles_by_distance(grid, level, visible, centre)
    plan += tiles_ahead(grid, level, visible, shift)
    ring = (visible[0] - span, visible[1] - span, visible[2] + span, visible[3] + span)
    coarser = level + 1 if level + 1 < len(grids) else None
    if coarser is not None:
        plan += tiles_by_distance(grids[coarser], coarser, visible, centre)
        plan += tiles_ahead(grids[coarser], coarser, visible, shift)
    plan += tiles_by_distance(grid, level, ring, centre)
    if coarser is not None:
        plan += tiles_by_distance(grids[coarser], coarser, ring, centre)
    if level > 0 and shift == (0.0, 0.0):  # while panning, the next zoom in can wait
        plan += tiles_by_distance(grids[level - 1], level - 1, visible, centre)
    return plan
