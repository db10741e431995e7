"""The tiled slide viewer: SlideView, its tile loader and cache, the overview and the scale bar."""

from __future__ import annotations

from app.viewer.levels import DisplayLevel, SlideLike, TileKey, build_display_levels, choose_level
from app.viewer.overview import OverviewWidget
from app.viewer.scale_bar import ScaleBar, nice_scale_length
from app.viewer.slide_view import SlideView
from app.viewer.tile_cache import DEFAULT_CACHE_BYTES, TileCache
from app.viewer.tile_loader import TileLoader, slide_lock

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DisplayLevel",
    "OverviewWidget",
    "ScaleBar",
    "SlideLike",
    "SlideView",
    "TileCache",
    "TileKey",
    "TileLoader",
    "build_display_levels",
    "choose_level",
    "nice_scale_length",
    "slide_lock",
]
