"""Zero-shot evaluation: SAM vs WSI-SAM vs MedSAM with simulated prompts, as in the paper.

For every object (an :class:`~engine.train.data.ObjectSample`) the field's HR and LR patches are
read and encoded once; each prompt setting (``"box"``: a noisy box, ``"3"``, ``"5"``, ``"10"``: that
many random positive points) is drawn once from a generator seeded by (seed, object, setting), so
every model sees exactly the same prompts. The score is the Dice of the predicted HR mask (logits
upsampled to the 1024x1024 patch, > 0) against the object's HR target mask, within the HR patch.

Models:
- ``sam``: MobileSAM (WSI-SAM's frozen SAM, same weights) on the HR patch, single-mask output
  (SAM's usual choice for a box or several points; a single point takes the best of its three
  masks by predicted IoU);
- ``wsi-sam``: the HR mask of WSI-SAM (HR + LR patches, trained heads);
- ``medsam``: LiteMedSAM on the HR patch (box prompts only, as in the paper).

Reports: ``results.csv`` (``model,prompt,group,n_objects,dice``, Dice in percent),
``results.md`` (the paper's Table 1 layout for boxes, Table 4 for points) and
``dice_vs_points.png`` (the paper's Figure 4).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine._files import atomic_write_bytes
from engine.train.data import ObjectSample, SlidePool, load_patches, target_masks
from engine.train.prompts import noisy_box, positive_points

if TYPE_CHECKING:
    from engine.medsam import LiteMedSam
    from engine.wsi_sam import PatchFeatures, WsiSam

logger = logging.getLogger(__name__)

MODELS = ("sam", "wsi-sam", "medsam")
MODEL_LABELS = {"sam": "SAM", "wsi-sam": "WSI-SAM", "medsam": "MedSAM"}
ALL_GROUP = "all"


def parse_prompts(text: str | Sequence[str]) -> list[str]:
    """``"box,3,5,10"`` -> ``["box", "3", "5", "10"]``, checked."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item != "box" and not (item.isdigit() and int(item) >= 1):
            raise ValueError(
                f"unknown prompt setting {item!r}: use 'box' or a number of points such as 3"
            )
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("no prompt settings given (e.g. box,3,5,10)")
    return out


def parse_models(text: str | Sequence[str]) -> list[str]:
    """``"sam,wsi-sam"`` -> ``["sam", "wsi-sam"]``, checked against :data:`MODELS`."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    out = []
    for item in items:
        if not item:
            continue
        if item not in MODELS:
            raise ValueError(f"unknown model {item!r}: choose from {', '.join(MODELS)}")
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError(f"no models given (choose from {', '.join(MODELS)})")
    return out


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two bool masks in [0, 1]; 1 when both are empty."""
    p = prediction.astype(bool)
    t = target.astype(bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


@dataclass(frozen=True)
class SimulatedPrompt:
    """One prompt in HR-patch pixels: a box (4,) or positive points (k, 2)."""

    setting: str
    box: np.ndarray | None = None
    points: np.ndarray | None = None


def stack_prompts(prompts: Sequence[SimulatedPrompt], device: torch.device) -> Any:
    """Prompts of one setting as one batch: boxes (B, 4), or points (B, k, 2) with labels."""
    from engine.wsi_sam import Prompts

    boxes = [p.box for p in prompts if p.box is not None]
    if len(boxes) == len(prompts):
        return Prompts(boxes=torch.as_tensor(np.stack(boxes), dtype=torch.float32)).to(device)
    arrays = [p.points for p in prompts if p.points is not None]
    if len(arrays) != len(prompts):
        raise ValueError("a batch of prompts must be all boxes or all points")
    points = torch.as_tensor(np.stack(arrays), dtype=torch.float32)
    labels = torch.ones(points.shape[:2], dtype=torch.int64)
    return Prompts(points=points, labels=labels).to(device)


def simulate_prompt(
    hr_mask: np.ndarray, setting: str, seed: int, object_index: int
) -> SimulatedPrompt:
    """The prompt of ``setting`` for object ``object_index``: the same for every model."""
    # one stream per (seed, object, setting): adding a model or a setting changes no other prompt
    tag = 0 if setting == "box" else int(setting)
    rng = np.random.default_rng([seed, object_index, tag])
    if setting == "box":
        return SimulatedPrompt(setting, box=noisy_box(hr_mask, rng))
    return SimulatedPrompt(setting, points=positive_points(hr_mask, int(setting), rng))


@dataclass
class ObjectResult:
    """Dice (0..1) of one model on one object with one prompt setting."""

    model: str
    prompt: str
    group: str
    dataset: str
    source: str
    name: str | None
    dice: float


@dataclass
class SummaryRow:
    """Mean Dice in percent over ``n_objects`` objects."""

    model: str
    prompt: str
    group: str
    n_objects: int
    dice: float


@dataclass
class EvaluationRun:
    """All per-object results and where the time went (seconds per stage)."""

    results: list[ObjectResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    n_objects: int = 0
    encoder_calls: int = 0

    def add_time(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds


def _upsampled_mask(logits: torch.Tensor) -> np.ndarray:
    """(1, C, 256, 256) logits (C = 1) -> (1024, 1024) bool mask."""
    from engine.wsi_sam import postprocess_logits

    return (postprocess_logits(logits[:, :1].float())[0, 0] > 0).cpu().numpy()


def _best_of(logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """Pick the mask with the highest predicted IoU: (1, C, H, W), (1, C) -> (1, 1, H, W)."""
    best = int(torch.argmax(iou[0]))
    return logits[:, best : best + 1]


def evaluate(
    samples: Sequence[ObjectSample],
    models: Sequence[str],
    prompts: Sequence[str],
    *,
    wsi: WsiSam | None = None,
    medsam: LiteMedSam | None = None,
    seed: int | Sequence[int] = 0,
    progress: bool = True,
    pool: SlidePool | None = None,
    on_object: Callable[[int, int], None] | None = None,
    features: Callable[[ObjectSample], tuple[PatchFeatures, PatchFeatures]] | None = None,
) -> EvaluationRun:
    """Run the models on every sample with every prompt setting.

    Args:
        samples: the objects.
        models: among :data:`MODELS`; ``sam`` and ``wsi-sam`` need ``wsi``, ``medsam`` needs
            ``medsam``.
        prompts: settings from :func:`parse_prompts`; MedSAM only runs with ``"box"``.
        seed: fixes every prompt; several seeds give each object one prompt per seed and
            setting (one result each), decoded together as one batch.
        features: the HR and LR encoder outputs of a sample, e.g. from a training feature cache,
            instead of encoding its patches (SAM and WSI-SAM then skip the encoder).
    """
    from tqdm import tqdm

    models = parse_models(list(models))
    prompts = parse_prompts(list(prompts))
    seed_list = [seed] if isinstance(seed, int) else [int(s) for s in seed]
    if not seed_list:
        raise ValueError("evaluate needs at least one prompt seed")
    if ("sam" in models or "wsi-sam" in models) and wsi is None:
        raise ValueError("SAM and WSI-SAM need a loaded WSI-SAM model (wsi=...)")
    if "medsam" in models and medsam is None:
        raise ValueError("MedSAM needs a loaded LiteMedSAM model (medsam=...)")
    run = EvaluationRun(n_objects=len(samples))
    own_pool = pool is None
    pool = pool or SlidePool()
    need_wsi = wsi is not None and ("sam" in models or "wsi-sam" in models)
    try:
        bar = tqdm(samples, desc="evaluating", unit="obj", disable=not progress)
        for index, sample in enumerate(bar):
            t0 = time.perf_counter()
            hr_mask, _ = target_masks(sample)
            if not hr_mask.any():
                logger.warning("skipping %s %s: empty HR target", sample.source, sample.name)
                continue
            hr_features: PatchFeatures | None = None
            lr_features: PatchFeatures | None = None
            hr_static: torch.Tensor | None = None
            if need_wsi and features is not None:
                assert wsi is not None
                hr_cached, lr_cached = features(sample)
                hr_features = hr_cached.to(wsi.device, torch.float32)
                lr_features = lr_cached.to(wsi.device, torch.float32)
            if "medsam" in models or (need_wsi and features is None):
                hr_image, lr_image = load_patches(sample, pool)
            run.add_time("read", time.perf_counter() - t0)
            if need_wsi and features is None:
                assert wsi is not None
                t0 = time.perf_counter()
                batch = torch.from_numpy(np.stack([hr_image, lr_image])).permute(0, 3, 1, 2)
                encoded = wsi.encode(batch.float())
                hr_features, lr_features = encoded[0], encoded[1]
                run.encoder_calls += 2
                run.add_time("encode", time.perf_counter() - t0)
            for setting in prompts:
                # one prompt per seed, decoded as one batch over the object's field
                simulated = [simulate_prompt(hr_mask, setting, s, index) for s in seed_list]
                single_point = setting == "1"

                def record(
                    model: str,
                    mask: np.ndarray,
                    prompt_setting: str = setting,
                    sample: ObjectSample = sample,
                    target: np.ndarray = hr_mask,
                ) -> None:
                    run.results.append(
                        ObjectResult(
                            model,
                            prompt_setting,
                            sample.group,
                            sample.dataset,
                            str(sample.source),
                            sample.name,
                            dice(mask, target),
                        )
                    )

                def record_each(
                    model: str, logits: torch.Tensor, iou: torch.Tensor, best: bool = single_point
                ) -> None:
                    """One result per seed from (seeds, C, 256, 256) logits."""
                    for b in range(logits.shape[0]):
                        chosen = logits[b : b + 1]
                        if best:  # one point: SAM's multimask output with the best IoU
                            chosen = _best_of(chosen, iou[b : b + 1])
                        record(model, _upsampled_mask(chosen))

                if need_wsi:
                    assert wsi is not None and hr_features is not None and lr_features is not None
                    batch_prompts = stack_prompts(simulated, wsi.device)
                    # both models decode in torch, never on converted decoders: the figures
                    # are those of the reference model, comparable with training's
                    with torch.no_grad():
                        if "wsi-sam" in models:
                            t0 = time.perf_counter()
                            if hr_static is None:  # the prompt-independent part, once per field
                                hr_static = wsi.hr_static_features(hr_features)
                            hr_logits, iou = wsi.predict_hr(
                                hr_features,
                                lr_features,
                                batch_prompts,
                                single_point,
                                hr_static=hr_static,
                                converted=False,
                            )
                            record_each("wsi-sam", hr_logits, iou)
                            run.add_time("wsi-sam", time.perf_counter() - t0)
                        if "sam" in models:
                            t0 = time.perf_counter()
                            logits, iou = wsi.sam_forward(
                                hr_features, batch_prompts, single_point, converted=False
                            )
                            record_each("sam", logits, iou)
                            run.add_time("sam", time.perf_counter() - t0)
                if "medsam" in models and setting == "box":
                    assert medsam is not None
                    t0 = time.perf_counter()
                    for prompt in simulated:
                        assert prompt.box is not None
                        record("medsam", medsam.segment(hr_image, prompt.box))
                    run.add_time("medsam", time.perf_counter() - t0)
            if on_object is not None:
                on_object(index + 1, len(samples))
    finally:
        if own_pool:
            pool.close()
    return run


def summarise(results: Sequence[ObjectResult]) -> list[SummaryRow]:
    """Mean Dice (percent) per model x prompt x group, plus an ``all`` group over every object
    when there is more than one group. Rows in model, prompt, group order."""
    groups = sorted({r.group for r in results})
    keys: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        keys.setdefault((r.model, r.prompt, r.group), []).append(r.dice)
        if len(groups) > 1:
            keys.setdefault((r.model, r.prompt, ALL_GROUP), []).append(r.dice)

    def order(key: tuple[str, str, str]) -> tuple[int, int, int, str]:
        model, prompt, group = key
        m = MODELS.index(model) if model in MODELS else len(MODELS)
        p = -1 if prompt == "box" else int(prompt)
        return (m, p, 0 if group == ALL_GROUP else 1, group)

    return [
        SummaryRow(model, prompt, group, len(values), 100.0 * float(np.mean(values)))
        for (model, prompt, group), values in sorted(keys.items(), key=lambda kv: order(kv[0]))
    ]


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def results_csv(rows: Sequence[SummaryRow]) -> str:
    """``model,prompt,group,n_objects,dice`` with Dice in percent (2 decimals)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "prompt", "group", "n_objects", "dice"])
    for row in rows:
        writer.writerow([row.model, row.prompt, row.group, row.n_objects, f"{row.dice:.2f}"])
    return buffer.getvalue()


def read_results_csv(path: str | Path) -> list[SummaryRow]:
    with open(path, encoding="utf-8", newline="") as f:
        return [
            SummaryRow(r["model"], r["prompt"], r["group"], int(r["n_objects"]), float(r["dice"]))
            for r in csv.DictReader(f)
        ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(rows: Sequence[SummaryRow], notes: Sequence[str] = ()) -> str:
    """Markdown tables in the paper's layout.

    Table 1 (noisy box prompts): rows = models, columns = groups (classes / datasets), then the
    mean over all objects. Table 4 (positive points): rows = models, columns = number of points,
    one table per group.
    """
    lookup = {(r.model, r.prompt, r.group): r for r in rows}
    models = [m for m in MODELS if any(r.model == m for r in rows)]
    groups = sorted({r.group for r in rows if r.group != ALL_GROUP})
    has_all = any(r.group == ALL_GROUP for r in rows)
    point_settings = sorted({int(r.prompt) for r in rows if r.prompt != "box"})
    out = ["# Zero-shot evaluation", ""]
    out += [f"- {note}" for note in notes]
    if notes:
        out.append("")

    def cell(model: str, prompt: str, group: str) -> str:
        row = lookup.get((model, prompt, group))
        return "–" if row is None else f"{row.dice:.2f}"

    if any(r.prompt == "box" for r in rows):
        columns = groups + ([ALL_GROUP] if has_all else [])
        counts = {g: lookup_count(rows, "box", g) for g in columns}
        header = ["Model", *[f"{g} (n={counts[g]})" for g in columns]]
        body = [
            [MODEL_LABELS.get(m, m), *[cell(m, "box", g) for g in columns]]
            for m in models
            if any(r.model == m and r.prompt == "box" for r in rows)
        ]
        out += ["## Table 1 — Dice (%) with noisy box prompts", "", _table(header, body), ""]
    if point_settings:
        out += ["## Table 4 — Dice (%) with positive point prompts", ""]
        for group in ([ALL_GROUP] if has_all else []) + groups:
            header = ["Model", *[f"{k} point{'s' if k > 1 else ''}" for k in point_settings]]
            body = [
                [MODEL_LABELS.get(m, m), *[cell(m, str(k), group) for k in point_settings]]
                for m in models
                if any(r.model == m and r.prompt != "box" for r in rows)
            ]
            n = lookup_count(rows, str(point_settings[0]), group)
            out += [f"### {group} (n={n})", "", _table(header, body), ""]
    return "\n".join(out).rstrip() + "\n"


def lookup_count(rows: Sequence[SummaryRow], prompt: str, group: str) -> int:
    return max((r.n_objects for r in rows if r.prompt == prompt and r.group == group), default=0)


def plot_dice_vs_points(rows: Sequence[SummaryRow], path: Path) -> bool:
    """Line plot of Dice against the number of points per model (the paper's Figure 4).

    One panel per group (``all`` first). Returns False (and writes nothing) when there are no
    point settings to plot.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    point_rows = [r for r in rows if r.prompt != "box"]
    if not point_rows:
        return False
    groups = sorted({r.group for r in point_rows}, key=lambda g: (g != ALL_GROUP, g))
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False, sharey=True
    )
    for ax, group in zip(axes[0], groups, strict=True):
        for model in MODELS:
            pts = sorted(
                (int(r.prompt), r.dice) for r in point_rows if r.model == model and r.group == group
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=MODEL_LABELS.get(model, model))
        ax.set_title(group)
        ax.set_xlabel("number of positive points")
        ax.set_xticks(sorted({int(r.prompt) for r in point_rows}))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (%)")
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def write_reports(
    run: EvaluationRun, out_dir: str | Path, notes: Sequence[str] = ()
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, ``per_object.csv`` and ``dice_vs_points.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(run.results)
    paths = {
        "csv": out_dir / "results.csv",
        "markdown": out_dir / "results.md",
        "per_object": out_dir / "per_object.csv",
    }
    _atomic_write_text(paths["csv"], results_csv(rows))
    _atomic_write_text(paths["markdown"], results_markdown(rows, notes))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "prompt", "group", "dataset", "source", "object", "dice"])
    for r in run.results:
        writer.writerow(
            [r.model, r.prompt, r.group, r.dataset, r.source, r.name, f"{100 * r.dice:.2f}"]
        )
    _atomic_write_text(paths["per_object"], buffer.getvalue())
    plot = out_dir / "dice_vs_points.png"
    if plot_dice_vs_points(rows, plot):
        paths["plot"] = plot
    return paths
