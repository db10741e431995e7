"""Refine a field's decoder objects with WSI-SAM: each object's box and its own mask as the
prompt, all objects of a field decoded in batches on that same field (one encode for all).

Optional: the selection rule measures on the held-out folds whether it raises the selection
figure, and it is the default only where it does (``SELECTION_RULE.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from engine.everything import EverythingObject
from engine.geometry import mask_to_geometry
from engine.patches import PATCH_SIZE, Field
from engine.refine import mask_prompt_logits
from engine.slides import Slide
from engine.wsi_predictor import WsiSamPredictor
from engine.wsi_sam import LOWRES_SIZE, Prompts

__all__ = ["REFINE_CHOICES", "field_refiner", "refine_objects", "refinement_wanted"]

#: ``auto``: as the decoder's cross-validation recommends (its ``refine_by_default``)
REFINE_CHOICES = ("auto", "on", "off")
RefineChoice = Literal["auto", "on", "off"]


def refinement_wanted(decoder: Any, choice: str = "auto") -> bool:
    """Whether ``decoder``'s objects are refined: ``on``, ``off``, or (``auto``) what the
    decoder's metadata recommends."""
    if choice not in REFINE_CHOICES:
        raise ValueError(f"refinement must be one of {REFINE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    return bool(getattr(decoder, "metadata", {}).get("refine_by_default"))


def field_refiner(
    model: Any,
    decoder: Any,
    slide: Slide,
    default_magnification: float,
    mode: str = "wsi-sam",
    choice: str = "auto",
) -> Callable[[list[EverythingObject]], list[EverythingObject]] | None:
    """The ``refine`` argument of :func:`engine.instances.segment.segment_instances` for this
    decoder (None where it is not wanted): WSI-SAM on the decoder's own fields, one more encode
    per field, then the field's objects as batched prompts."""
    if not refinement_wanted(decoder, choice):
        return None
    predictor = WsiSamPredictor(
        model,
        magnification=decoder.magnification,
        adaptive=False,
        default_magnification=default_magnification,
    )

    def refine(objects: list[EverythingObject]) -> list[EverythingObject]:
        refined = refine_objects(predictor, slide, objects[0].field, objects, mode=mode)
        predictor.clear_cache()  # fields are streamed: keep one field's features at a time
        return refined

    return refine


@torch.inference_mode()
def refine_objects(
    predictor: WsiSamPredictor,
    slide: Slide,
    chosen: Field,
    objects: Sequence[EverythingObject],
    mode: str = "wsi-sam",
    batch_size: int = 32,
) -> list[EverythingObject]:
    """The objects with WSI-SAM's outlines (same order); an object whose refined mask is empty
    keeps its own outline. Objects are prompted on ``chosen`` (their decoder's field)."""
    if not objects:
        return []
    inside = WsiSamPredictor._inside_slide(slide, chosen)
    out = list(objects)
    for start in range(0, len(objects), batch_size):
        part = objects[start : start + batch_size]
        boxes = torch.stack(
            [
                torch.as_tensor(chosen.box_level0_to_hr(o.geometry.bounds), dtype=torch.float32)
                for o in part
            ]
        )
        masks = torch.cat([mask_prompt_logits(o.geometry, chosen) for o in part])
        prompts = Prompts(boxes=boxes[:, None, :].reshape(len(part), 4), masks=masks)
        logits, iou, _ = predictor.decode_field(slide, chosen, prompts, mode=mode)
        for offset, obj in enumerate(part):
            window = _window(obj, chosen)
            mask = _mask_in_window(logits[offset, 0], window) & inside[window]
            if not mask.any():
                continue
            # the object's own component: the largest connected part of the refined mask
            labels, count = ndimage.label(mask)
            if count > 1:
                sizes = np.bincount(labels.ravel())
                sizes[0] = 0
                mask = labels == int(np.argmax(sizes))
            ds = chosen.hr_downsample
            geometry = mask_to_geometry(
                mask,
                scale=ds,
                offset=(
                    chosen.hr_origin[0] + window[1].start * ds,
                    chosen.hr_origin[1] + window[0].start * ds,
                ),
                simplify_tolerance=1.0,
                min_area=4 * ds**2,
            )
            if geometry is None:
                continue
            out[start + offset] = dataclasses.replace(
                obj, geometry=geometry, score=float(iou[offset, 0])
            )
    return out


def _window(obj: EverythingObject, chosen: Field) -> tuple[slice, slice]:
    """The object's box in HR pixels, grown by half its size (the refined outline may grow)."""
    x0, y0, x1, y1 = chosen.box_level0_to_hr(obj.geometry.bounds)
    grow_x, grow_y = (x1 - x0) / 2 + 8, (y1 - y0) / 2 + 8
    c0, c1 = int(max(x0 - grow_x, 0)), int(min(x1 + grow_x, PATCH_SIZE))
    r0, r1 = int(max(y0 - grow_y, 0)), int(min(y1 + grow_y, PATCH_SIZE))
    return slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1))


def _mask_in_window(logits: torch.Tensor, window: tuple[slice, slice]) -> np.ndarray:
    """Threshold the (256, 256) logits, upsampled to the field as SAM does, inside ``window``.

    Only a low-resolution crop around the window (2 cells of margin, so the bilinear weights at
    its edges are those of the whole map) is upsampled.
    """
    factor = PATCH_SIZE // LOWRES_SIZE
    rows, cols = window
    r0, c0 = max(rows.start // factor - 2, 0), max(cols.start // factor - 2, 0)
    r1 = min(-(-rows.stop // factor) + 2, LOWRES_SIZE)
    c1 = min(-(-cols.stop // factor) + 2, LOWRES_SIZE)
    crop = logits[r0:r1, c0:c1].float()[None, None]
    up = torch.nn.functional.interpolate(
        crop, scale_factor=factor, mode="bilinear", align_corners=False
    )[0, 0]
    local = up[
        rows.start - r0 * factor : rows.stop - r0 * factor,
        cols.start - c0 * factor : cols.stop - c0 * factor,
    ]
    return (local > 0).numpy()
