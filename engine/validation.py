"""Checks of what enters the engine from outside: prompts, label maps, weights, torch files.

Each check raises (or returns) a message that names the thing and says what to do; the callers
wrap it in their own error class (``PromptError``, ``HeadsError``, ``AnnotationReadError``, ...).
No torch import at module level: the command line uses these checks while parsing arguments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_COORDINATE",
    "MAX_POINTS",
    "MAX_PROMPT_POINTS",
    "check_coordinates",
    "check_label_values",
    "image_size",
    "non_finite_tensors",
    "torch_load_reason",
]

#: Largest level-0 coordinate accepted anywhere (10 million pixels: 2.5 m of tissue at 0.25 um/px;
#: the largest slides are a few hundred thousand pixels a side).
MAX_COORDINATE = 10_000_000.0
#: Most points one prompt may carry (the app and ``segment``); SAM itself was trained with few.
MAX_POINTS = 64
#: Most simulated points per object in ``eval --prompts``.
MAX_PROMPT_POINTS = 64
#: A colour "label map" with more colours than this, covering on average fewer pixels each than
#: MIN_PIXELS_PER_LABEL, is a photograph (JPEG noise), not one colour per object.
MAX_PHOTO_LIKE_LABELS = 1000
MIN_PIXELS_PER_LABEL = 64


def check_coordinates(values: Iterable[float], what: str) -> list[float]:
    """``values`` as floats, each finite and within +-``MAX_COORDINATE``; ValueError otherwise."""
    out = []
    for value in values:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{what}: {value} is not a finite number")
        if abs(number) > MAX_COORDINATE:
            raise ValueError(
                f"{what}: {value:g} is outside the sane range of level-0 pixel coordinates "
                f"(+-{MAX_COORDINATE:.0e})"
            )
        out.append(number)
    return out


def check_label_values(array: np.ndarray, path: Path | str, *, colour: bool) -> None:
    """Refuse what is not a label map: a photograph (many colours, each on few pixels).

    ``array`` is the 2-D integer map (colours already packed into one integer per pixel when
    ``colour``). Raises ValueError naming the file.
    """
    values = np.unique(array)
    labels = int(np.count_nonzero(values))
    if labels <= MAX_PHOTO_LIKE_LABELS:
        return
    per_label = array.size / labels
    if per_label < MIN_PIXELS_PER_LABEL:
        kind = "colours" if colour else "distinct values"
        raise ValueError(
            f"{path}: not a label map: {labels:,} {kind}, {per_label:.1f} pixels each on average "
            "(a photograph?). A label map has one integer (or one colour) per object and 0 "
            "for the background; give the masks folder, not the images"
        )


def image_size(path: Path | str) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, or None when it cannot be told cheaply."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
        from PIL import Image

        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except Exception:
        return None


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or infinity."""
    import torch

    bad = []
    for name, value in state.items():
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        if floating and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def torch_load_reason(exc: BaseException) -> str:
    """A short reason from a ``torch.load`` failure, without torch's advice to load the file with
    ``weights_only=False`` (which would run whatever code the file carries)."""
    text = str(exc)
    if "Unsupported operand" in text or "invalid load key" in text:
        return "not a torch file (another format, e.g. the HTML page of a failed download?)"
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what} besides tensors, which are never loaded because "
            "loading them could run code; it is not a file this program wrote"
        )
    if "central directory" in text or "zip archive" in text or "EOF" in text:
        return "the file is truncated or damaged (an interrupted copy or download?)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > 160:
        first = first[:160] + "..."
    return f"not a torch file ({type(exc).__name__}{': ' + first if first else ''})"
