"""Held-out validation for a training run, and the model card written beside the heads.

``wsi-sam train --holdout F`` keeps a fraction of the images (by image, so no held-out object
shares an image with a training one) out of training, scores WSI-SAM against plain SAM on them
after training with the protocol of ``wsi-sam eval`` (noisy box, 3 / 5 / 10 positive points,
seeded prompts), stores the figures in the heads' metadata (``validation``: what the heads
catalogue shows) and writes a Markdown model card ``OUT.md``: data, classes, settings, the
validation Dice against SAM.

A source with a single image holds out objects of that image instead (said so in the card: the
figures then flatter the heads, as neighbours share stain and tissue).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine._files import atomic_write_bytes
from engine.train.data import ObjectSample

PROMPTS = ("box", "3", "5", "10")


@dataclass
class Holdout:
    train: list[ObjectSample]
    held: list[ObjectSample]
    #: "images" (whole images held out), "objects" (one image: some of its objects), "none"
    by: str
    held_sources: list[str]
    #: why nothing is held out when ``by`` is "none"
    why_none: str = "too few objects or images"

    def describe(self) -> str:
        if self.by == "none":
            return f"no held-out data ({self.why_none})"
        if self.by == "images":
            names = ", ".join(Path(s).name for s in self.held_sources)
            return (
                f"{len(self.held)} objects of {len(self.held_sources)} held-out image(s): {names}"
            )
        return (
            f"{len(self.held)} held-out objects of the only image (objects of the same image as "
            "the training objects: an optimistic estimate)"
        )


def split_holdout(samples: Sequence[ObjectSample], fraction: float) -> Holdout:
    """Hold out about ``fraction`` of the images (at least one, never all), evenly spread over
    the images in name order; with one image, that fraction of its objects instead."""
    samples = list(samples)
    if fraction <= 0:
        return Holdout(samples, [], "none", [], "none asked for: --holdout 0")
    if len(samples) < 2:
        return Holdout(samples, [], "none", [])
    sources = sorted({str(s.source) for s in samples})
    if len(sources) >= 2:
        count = min(len(sources) - 1, max(1, round(fraction * len(sources))))
        step = len(sources) / count
        held_sources = [
            sources[min(len(sources) - 1, int(i * step + step / 2))] for i in range(count)
        ]
        held = [s for s in samples if str(s.source) in held_sources]
        train = [s for s in samples if str(s.source) not in held_sources]
        return Holdout(train, held, "images", held_sources)
    count = min(len(samples) - 1, max(1, math.floor(fraction * len(samples) + 0.5)))
    every = len(samples) / count
    held_index = {min(len(samples) - 1, int(i * every + every / 2)) for i in range(count)}
    held = [s for i, s in enumerate(samples) if i in held_index]
    train = [s for i, s in enumerate(samples) if i not in held_index]
    return Holdout(train, held, "objects", sources)


def evaluate_cached(
    model: Any,
    cache: Any,
    samples: Sequence[ObjectSample],
    seeds: Sequence[int] = (0,),
    models: Sequence[str] = ("sam", "wsi-sam"),
) -> list[Any]:
    """``models``' results (``wsi-sam eval``'s protocol) for ``samples`` x ``seeds``, on the
    cached unaugmented encoder outputs; the model's training mode is restored afterwards."""
    from engine.evaluate import evaluate
    from engine.train.augment import Augmentation
    from engine.train.data import SlidePool

    was_training = model.training
    model.eval()
    try:
        with SlidePool() as pool:
            run = evaluate(
                list(samples),
                list(models),
                PROMPTS,
                wsi=model,
                seed=list(seeds),
                progress=False,
                features=lambda sample: cache.features(sample, Augmentation(), pool),
            )
    finally:
        if was_training:
            model.train()
    return run.results


def score_heldout(
    model: Any, cache: Any, held: Sequence[ObjectSample], seeds: Sequence[int] = (0,)
) -> dict[str, Any]:
    """Mean HR Dice (percent) of WSI-SAM and SAM on ``held`` per prompt setting, on the cached
    unaugmented encoder outputs (held-out fields are encoded once into ``cache``)."""
    from engine.evaluate import ALL_GROUP, summarise

    results = evaluate_cached(model, cache, held, seeds)
    dice: dict[str, dict[str, float]] = {"WSI-SAM": {}, "SAM": {}}
    rows = summarise(results)
    several = len({row.group for row in rows}) > 1
    for row in rows:
        if several and row.group != ALL_GROUP:
            continue
        label = "WSI-SAM" if row.model == "wsi-sam" else "SAM"
        dice[label][row.prompt] = round(float(row.dice), 2)
    return {"n_objects": len(held), "seeds": list(seeds), "dice": dice}


def model_card(
    path: Path,
    *,
    metadata: dict[str, Any],
    holdout: Holdout,
    command: str,
    classes: Sequence[str] | None,
) -> str:
    """The Markdown model card of heads ``path`` (returned and written to ``path`` with .md)."""
    data = metadata.get("data", {})
    lines = [
        f"# WSI-SAM heads: `{path.name}`",
        "",
        "Trained with `wsi-sam train` (SAM frozen; only the HR and LR heads learn).",
        "",
        "## Data",
        "",
        f"- Trained on: {metadata.get('trained_on') or 'unknown'}; "
        f"{data.get('n_objects', '?')} objects from {data.get('n_sources', '?')} image(s).",
        f"- Classes: {', '.join(classes) if classes else 'every class'}.",
        f"- Validation: {holdout.describe()}.",
        "",
        "## Settings",
        "",
        f"`{command}`",
        "",
    ]
    for key in (
        "epochs",
        "batch_size",
        "lr",
        "lr_drop_epoch",
        "augment_variants",
        "prompt_kinds",
        "prompt_mixing",
        "precision",
        "magnification",
        "seed",
        "final_loss",
    ):
        if key in metadata:
            lines.append(f"- {key}: {metadata[key]}")
    lines += ["", "## Validation Dice (%) against plain SAM", ""]
    validation = metadata.get("validation")
    if isinstance(validation, dict) and validation.get("dice"):
        dice = validation["dice"]
        lines.append("| Model | noisy box | 3 points | 5 points | 10 points |")
        lines.append("|---|---|---|---|---|")
        for model in ("SAM", "WSI-SAM"):
            cells = dice.get(model, {})
            lines.append(
                f"| {model} | "
                + " | ".join(f"{cells.get(p, float('nan')):.2f}" for p in PROMPTS)
                + " |"
            )
        gains = [
            f"{p}: {dice['WSI-SAM'][p] - dice['SAM'][p]:+.2f}"
            for p in PROMPTS
            if p in dice.get("WSI-SAM", {}) and p in dice.get("SAM", {})
        ]
        lines += ["", f"WSI-SAM minus SAM: {', '.join(gains)}."]
        lines += [
            "",
            f"{validation.get('n_objects')} held-out objects; the same seeded prompts for both "
            "models. Few objects give noisy figures: use plain SAM where the heads do not help.",
        ]
    else:
        lines.append(f"No held-out validation: {holdout.describe()}.")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(path.with_suffix(".md"), text.encode("utf-8"))
    return text
