"""A slide's scale set by hand (QuPath's "Set pixel size"), remembered per slide in the settings.

Files that do not record their pixel size (or record it wrongly) would otherwise be segmented at
an assumed magnification; the user can give the pixel size (um/px) or the level-0 magnification
once, and every later opening of that file (in the window and in the engine) uses it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

from app.session.settings import app_settings

__all__ = ["apply_saved_scale", "parse_scale", "save_scale", "saved_scale", "scaled_slide_opener"]

_KEY = "slideScale/"
_TEXT = re.compile(
    r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>x|×|um|µm|μm|um/px|µm/px)?\s*$",
    re.IGNORECASE,
)


def _key(path: str | os.PathLike[str]) -> str:
    resolved = str(Path(path).expanduser().resolve())
    return _KEY + hashlib.sha1(resolved.encode("utf-8")).hexdigest()[:20]


def parse_scale(text: str) -> tuple[str, float]:
    """``"0.25"`` / ``"0.25 um"`` -> ("mpp", 0.25); ``"20x"`` -> ("magnification", 20.0).

    A bare number is a pixel size when below 5 (um per pixel), else a magnification. Raises
    ValueError with a message for the user.
    """
    found = _TEXT.match(text or "")
    if found is None:
        raise ValueError(f"{text!r}: give a pixel size in µm (e.g. 0.25) or a magnification (40x)")
    value = float(found.group("value"))
    unit = (found.group("unit") or "").lower()
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r}: the value must be greater than 0")
    if unit in ("x", "×") or (not unit and value >= 5):
        if value > 1000:
            raise ValueError(f"{text!r}: a magnification is at most 1000x")
        return "magnification", value
    if value > 50:
        raise ValueError(f"{text!r}: a pixel size is at most 50 µm")
    return "mpp", value


def saved_scale(path: str | os.PathLike[str]) -> tuple[str, float] | None:
    raw = str(app_settings().value(_key(path), "") or "")
    kind, _, number = raw.partition(":")
    try:
        value = float(number)
    except ValueError:
        return None
    if kind not in ("mpp", "magnification") or not (math.isfinite(value) and value > 0):
        return None
    return kind, value


def save_scale(path: str | os.PathLike[str], kind: str, value: float) -> None:
    settings = app_settings()
    settings.setValue(_key(path), f"{kind}:{value!r}")
    settings.sync()


def apply_saved_scale(slide: Any, path: str | os.PathLike[str]) -> bool:
    """Give ``slide`` the scale the user set for ``path``; True when there was one."""
    scale = saved_scale(path)
    if scale is None or not hasattr(slide, "set_scale"):
        return False
    kind, value = scale
    try:
        if kind == "mpp":
            slide.set_scale(mpp=value)
        else:
            slide.set_scale(magnification=value)
    except ValueError:
        return False
    return True


def scaled_slide_opener(path: str) -> Any:
    """``engine.open_slide`` with the scale the user set for the file (for the engine worker)."""
    import engine

    slide = engine.open_slide(path)
    apply_saved_scale(slide, path)
    return slide
