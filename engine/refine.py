"""Refine an existing outline with WSI-SAM (or SAM): its box and its own mask as the prompt.

An outline drawn by hand, imported from GeoJSON or read from a QuPath project becomes a prompt
of three parts on one field: its bounding box, the outline itself rasterised as a mask prompt
(SAM's ``mask_input``: (1, 1, 256, 256) logits on the HR patch), and any extra positive / negative
points. The field is the one a box of the outline's size gets (the adaptive magnification rule),
so an outline larger than one field at the working magnification is refined at a lower one; one
that does not fit even at the lowest magnification allowed is reported and left as it was,
never cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from engine.patches import PATCH_SIZE, Field, choose_field, level0_magnification, rasterize
from engine.slides import Slide
from engine.wsi_predictor import MODES, Mode, PromptError, WsiSamPredictor
from engine.wsi_sam import LOWRES_SIZE, Prompts, postprocess_logits

__all__ = [
    "MIN_MAGNIFICATION",
    "RefineCancelledError",
    "RefineResult",
    "mask_prompt_logits",
    "refine",
    "refine_field",
    "refine_many",
]

# The lowest magnification an outline is refined at (unless the slide's own pyramid goes lower).
MIN_MAGNIFICATION = 1.25
# Logit of a mask prompt pixel fully inside / outside the outline (inverse sigmoid of 1e-3).
_MASK_EPS = 1e-3


class RefineCancelledError(Exception):
    """``refine_many`` was cancelled; nothing it computed is returned."""


@dataclass
class RefineResult:
    """The answer to refining one outline.

    Attributes:
        geometry: the refined outline in level-0 pixels, or the original when ``refined`` is
            False (never a cut or partial one).
        refined: whether the model's outline replaced the original.
        score: the predicted IoU of the refined mask (NaN when not refined).
        field: the field it was refined on (None when none fits).
        message: why the outline was left as it was ("" when refined).
    """

    geometry: BaseGeometry
    refined: bool
    score: float
    field: Field | None
    message: str = ""


def refine_field(
    predictor: WsiSamPredictor,
    slide: Slide,
    geometry: BaseGeometry,
    *,
    min_magnification: float = MIN_MAGNIFICATION,
) -> Field | None:
    """The field an outline is refined on, or None when it does not fit one.

    The field is centred on the outline's bounding box at the magnification a box of that size
    gets (:func:`engine.patches.choose_field`); None when even the lowest magnification allowed
    (``min_magnification``, or the slide's coarsest pyramid level when that is lower) would
    leave the outline larger than ``fit_fraction`` (0.8) of the HR patch, or when the predictor
    keeps a fixed magnification at which the outline does not fit.
    """
    x0, y0, x1, y1 = geometry.bounds
    chosen = choose_field(
        slide,
        (x0, y0, x1, y1),
        magnification=predictor.magnification,
        adaptive=predictor.adaptive,
        default_magnification=predictor.default_magnification,
    )
    extent = max(x1 - x0, y1 - y0)
    base = level0_magnification(slide, predictor.default_magnification)
    max_downsample = max(base / min_magnification, float(slide.level_downsamples[-1]))
    fits = extent / chosen.hr_downsample <= 0.8 * PATCH_SIZE
    if not fits or chosen.hr_downsample > max_downsample * (1 + 1e-6):
        return None
    return chosen


def mask_prompt_logits(geometry: BaseGeometry, chosen: Field) -> torch.Tensor:
    """(1, 1, 256, 256) mask-prompt logits of a level-0 outline on a field's HR patch.

    The outline is rasterised on the 1024x1024 HR patch, averaged to 256x256 (the fraction of
    each low-res pixel inside) and mapped through the inverse sigmoid, clipped at 1e-3, as
    micro-sam does for masks that did not come from SAM itself (about +-6.9 inside / outside).
    """
    mask = rasterize(geometry, chosen, "hr").astype(np.float32)
    factor = PATCH_SIZE // LOWRES_SIZE
    fraction = mask.reshape(LOWRES_SIZE, factor, LOWRES_SIZE, factor).mean(axis=(1, 3))
    fraction = np.clip(fraction, _MASK_EPS, 1 - _MASK_EPS)
    logits = np.log(fraction / (1 - fraction))
    return torch.from_numpy(logits.astype(np.float32))[None, None]


def _as_polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    if geometry is None or geometry.is_empty or geometry.area <= 0:
        raise PromptError("an outline to refine needs an area (a polygon, not a line or point)")
    return geometry


def refine(
    predictor: WsiSamPredictor,
    slide: Slide,
    geometry: BaseGeometry,
    points: Sequence[Sequence[float]] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    mode: Mode | str = "wsi-sam",
    *,
    use_mask: bool = True,
    min_magnification: float = MIN_MAGNIFICATION,
) -> RefineResult:
    """Refine one outline in level-0 pixels.

    Args:
        predictor: the slide predictor (its magnification settings and field cache are used).
        slide: an open slide.
        geometry: the outline (Polygon or MultiPolygon, holes allowed) in level-0 pixels.
        points: (N, 2) extra x, y in level-0 pixels; labels (N,) 1 positive / 0 negative.
        mode: "wsi-sam" or "sam".
        use_mask: give the outline itself as the mask prompt (else the box alone).
        min_magnification: the lowest magnification an outline may be refined at.
    Returns:
        A :class:`RefineResult`; ``refined`` is False (and ``geometry`` the original) when the
        outline does not fit a field or the model finds nothing in it.
    Raises:
        PromptError: the outline has no area, or the points are malformed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    outline = _as_polygonal(geometry)
    chosen = refine_field(predictor, slide, outline, min_magnification=min_magnification)
    if chosen is None:
        x0, y0, x1, y1 = outline.bounds
        return RefineResult(
            outline,
            False,
            math.nan,
            None,
            f"too large to refine ({x1 - x0:.0f} x {y1 - y0:.0f} px does not fit one field even "
            f"at {min_magnification:g}x); left as it was",
        )
    box = torch.as_tensor(chosen.box_level0_to_hr(outline.bounds), dtype=torch.float32)[None]
    pts = lab = None
    if points is not None and len(points) > 0:
        pts_arr = np.asarray(points, dtype=np.float64)
        if pts_arr.ndim != 2 or pts_arr.shape[1] != 2 or not np.isfinite(pts_arr).all():
            raise PromptError("points must be an (N, 2) array of finite x, y")
        lab_arr = (
            np.ones(len(pts_arr), dtype=np.int64)
            if labels is None
            else np.asarray(labels, dtype=np.int64).reshape(-1)
        )
        if lab_arr.shape != (len(pts_arr),) or not np.isin(lab_arr, (0, 1)).all():
            raise PromptError("each point needs a label, 1 (positive) or 0 (negative)")
        pts = torch.as_tensor(chosen.level0_to_hr(pts_arr), dtype=torch.float32)[None]
        lab = torch.as_tensor(lab_arr)[None]
    masks = mask_prompt_logits(outline, chosen) if use_mask else None
    prompts = Prompts(boxes=box, points=pts, labels=lab, masks=masks)
    logits, iou, _ = predictor.decode_field(slide, chosen, prompts, mode=mode, multimask=False)
    mask = (postprocess_logits(logits)[0, 0] > 0).numpy()
    mask &= WsiSamPredictor._inside_slide(slide, chosen)
    refined = WsiSamPredictor._to_geometry(mask, chosen)
    if refined is None:
        return RefineResult(
            outline, False, math.nan, chosen, "the model found no object; left as it was"
        )
    return RefineResult(refined, True, float(iou[0, 0]), chosen)


def refine_many(
    predictor: WsiSamPredictor,
    slide: Slide,
    geometries: Sequence[BaseGeometry],
    mode: Mode | str = "wsi-sam",
    *,
    use_mask: bool = True,
    min_magnification: float = MIN_MAGNIFICATION,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[RefineResult]:
    """Refine several outlines (one :func:`refine` each, fields shared through the cache).

    ``progress(done, total)`` is called after each outline; ``cancel()`` is asked before each
    and, when it returns True, :class:`RefineCancelledError` is raised and nothing is returned.
    An outline without area comes back unrefined with the reason.
    """
    results: list[RefineResult] = []
    total = len(geometries)
    # nearby outlines one after the other, so a cached field serves its neighbours
    order = sorted(
        range(total), key=lambda i: (geometries[i].bounds[1] // 2048, geometries[i].bounds[0])
    )
    by_index: dict[int, RefineResult] = {}
    for done, index in enumerate(order):
        if cancel is not None and cancel():
            raise RefineCancelledError("refinement cancelled")
        try:
            by_index[index] = refine(
                predictor,
                slide,
                geometries[index],
                mode=mode,
                use_mask=use_mask,
                min_magnification=min_magnification,
            )
        except PromptError as exc:
            by_index[index] = RefineResult(geometries[index], False, math.nan, None, str(exc))
        if progress is not None:
            progress(done + 1, total)
    results = [by_index[i] for i in range(total)]
    return results
