"""Choose a decoder's post-processing on held-out fields: a coordinate search of the watershed
settings and the smallest object area, by a selection figure (glands: mean of GlaS F1 and object
Dice; nuclei: AJI).

A *case* is one held-out field: the decoder's (3, S, S) logits, the true instance labels at the
watershed's working size and the pixels that count (on the slide, inside the complete area).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from engine.instances.metrics import Summary, score_image, score_images
from engine.instances.watershed import (
    WatershedSettings,
    instances_from_maps,
    maps_to_probabilities,
)

__all__ = [
    "SEARCH",
    "Case",
    "TuneResult",
    "drop_small",
    "objective",
    "score_cases",
    "tune_settings",
]

# Wide enough that the cross-validated optimum of glands and nuclei lies inside, not on an edge
# (SELECTION_RULE.md, amendment of 23:00).
SEARCH: dict[str, tuple[float, ...]] = {
    "foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "centre_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "boundary_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "sigma": (0.0, 0.5, 1.0, 2.0, 3.0),
    "min_seed_pixels": (0.0, 1.0, 4.0, 8.0, 16.0),
}


@dataclass
class Case:
    """One held-out field: logits (3, S, S), truth (W, W) labels, valid (W, W) pixels."""

    logits: torch.Tensor
    truth: NDArray[np.int32]
    valid: NDArray[np.bool_]


def objective(summary: Summary, kind: str) -> float:
    """The selection figure: "glands" (F1 + object Dice) / 2, else ("nuclei") AJI."""
    if kind == "glands":
        return (summary.glas_f1 + summary.object_dice) / 2
    return summary.aji


def drop_small(labels: NDArray[np.int32], min_pixels: float) -> NDArray[np.int32]:
    """``labels`` without the objects of fewer than ``min_pixels`` pixels."""
    if min_pixels <= 0 or not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_pixels
    small[0] = False
    return np.where(small[labels], 0, labels)


def _predict(case: Case, settings: WatershedSettings, out_size: int, min_pixels: float) -> NDArray:
    probabilities = maps_to_probabilities(case.logits, settings.work_size)
    labels = instances_from_maps(probabilities, settings, out_size, case.valid)
    return drop_small(labels, min_pixels)


def score_cases(
    cases: Sequence[Case], settings: WatershedSettings, out_size: int, min_pixels: float = 0.0
) -> Summary:
    """Scores of the decoder's objects on the cases (truth outside ``valid`` is ignored)."""
    scores = []
    for case in cases:
        truth = np.where(case.valid, case.truth, 0)
        scores.append(
            score_image(truth, _predict(case, settings, out_size, min_pixels), hausdorff=False)
        )
    return score_images(scores)


@dataclass
class TuneResult:
    settings: WatershedSettings
    min_area_um2: float
    summary: Summary
    score: float
    default_score: float


def tune_settings(
    cases: Sequence[Case],
    out_size: int,
    kind: str,
    um2_per_pixel: float,
    areas_um2: Sequence[float] = (0.0,),
    start: WatershedSettings | None = None,
    passes: int = 2,
) -> TuneResult:
    """Two-pass coordinate search over :data:`SEARCH` and ``areas_um2``.

    ``um2_per_pixel``: the area of one working-size pixel of the cases (to turn um^2 limits into
    pixels). Work size is the cases' truth size.
    """
    if not cases:
        raise ValueError("no held-out fields to tune on")
    work = cases[0].truth.shape[0]
    settings = dataclasses.replace(start or WatershedSettings(), work_size=work)
    area = 0.0
    best = score_cases(cases, settings, out_size)
    default_score = best_score = objective(best, kind)
    for _ in range(passes):
        for name, values in [*SEARCH.items(), ("min_area_um2", tuple(areas_um2))]:
            for value in values:
                if name == "min_area_um2":
                    trial, trial_area = settings, float(value)
                else:
                    trial = dataclasses.replace(settings, **{name: value})  # type: ignore[arg-type]
                    trial_area = area
                summary = score_cases(cases, trial, out_size, trial_area / um2_per_pixel)
                score = objective(summary, kind)
                if score > best_score + 1e-9:
                    best, best_score, settings, area = summary, score, trial, trial_area
    return TuneResult(settings, area, best, best_score, default_score)
