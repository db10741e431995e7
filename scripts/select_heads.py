"""Choose training settings for the default heads on a validation split, never on the test split.

Trains WSI-SAM heads on ``--train-images``/``--train-masks`` under a few settings and scores each
every ``--every`` epochs on ``--val-images``/``--val-masks`` (mean HR Dice, noisy boxes and 3/5/10
points, several prompt seeds), next to SAM on the same prompts. Runs with a learning-rate drop
branch off the matching constant-rate run just before the drop (same seed, so the epochs before
the drop are identical), which halves the cost. Prints a table and writes ``selection.json``.

    python scripts/select_heads.py --train-images T/img --train-masks T/labelcol \
        --val-images V/img --val-masks V/labelcol --image-magnification 20 \
        --cache out/glas_train/feature_cache --out out/selection

The validation objects are encoded once into the same feature cache, so scoring a snapshot
only runs the decoders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.commands.eval import pair_images_and_masks
from engine.evaluate import evaluate, summarise
from engine.train.augment import Augmentation
from engine.train.data import ObjectSample, SlidePool, make_samples, usable
from engine.train.features import FeatureCache
from engine.train.readers import read_label_map
from engine.train.trainer import TrainConfig, train_heads
from engine.wsi_sam import WsiSam, load_wsi_sam

PROMPTS = ("box", "3", "5", "10")

# name -> settings that differ from TrainConfig's defaults; a name ending in "-drop" is its
# parent's settings plus the learning-rate drop, branched off the parent's run.
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "box-weighted": {"prompt_kinds": ("box", "box", "points", "mask")},
    "box-heavy": {"prompt_kinds": ("box", "box", "box", "points", "mask")},
    "box-only": {"prompt_kinds": ("box",)},
}
SETTINGS.update({f"{name}-drop": dict(s) for name, s in list(SETTINGS.items())})


def label_samples(
    images: Path, masks: Path, magnification: float, dataset: str
) -> list[ObjectSample]:
    """The objects of the label maps in ``masks``, paired with ``images`` as the CLI pairs them."""
    samples: list[ObjectSample] = []
    with SlidePool(default_magnification=magnification) as pool:
        for image, mask in pair_images_and_masks(images, masks):
            samples += make_samples(
                image, read_label_map(mask), dataset, default_magnification=magnification, pool=pool
            )
    return usable(samples)[0]


def score(
    model: WsiSam, cache: FeatureCache, samples: list[ObjectSample], seeds: list[int]
) -> dict[str, dict[str, float]]:
    """Mean Dice (percent) of WSI-SAM and SAM per prompt setting over objects x seeds: the
    protocol of ``wsi-sam eval``, on the cached (unaugmented) encoder outputs."""
    was_training = model.training
    model.eval()
    results = []
    with SlidePool() as pool:
        for seed in seeds:
            run = evaluate(
                samples,
                ["sam", "wsi-sam"],
                PROMPTS,
                wsi=model,
                seed=seed,
                progress=False,
                features=lambda sample: cache.features(sample, Augmentation(), pool),
            )
            results += run.results
    if was_training:
        model.train()
    scores: dict[str, dict[str, float]] = {"wsi-sam": {}, "sam": {}}
    for row in summarise(results):
        scores[row.model][row.prompt] = row.dice
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=Path, required=True)
    parser.add_argument("--train-masks", type=Path, required=True)
    parser.add_argument("--val-images", type=Path, required=True)
    parser.add_argument("--val-masks", type=Path, required=True)
    parser.add_argument("--image-magnification", type=float, default=20.0)
    parser.add_argument("--dataset", default="GlaS", help="dataset name for the heads' metadata")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--settings",
        default="paper,paper-drop,box-weighted,box-weighted-drop,box-heavy,box-only,box-only-drop",
        help=f"comma-separated, among {', '.join(SETTINGS)}",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--drop-epoch", type=int, default=15)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    train = label_samples(
        args.train_images, args.train_masks, args.image_magnification, args.dataset
    )
    val = label_samples(args.val_images, args.val_masks, args.image_magnification, args.dataset)
    print(f"{len(train)} training objects, {len(val)} validation objects, seeds {seeds}")
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "selection.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    check_epochs = set(range(args.every, args.epochs + 1, args.every))

    for name in names:
        if name in report and report[name].get("done"):
            print(f"{name}: done before, skipped")
            continue
        drop = args.drop_epoch if name.endswith("-drop") else None
        config = TrainConfig(
            epochs=args.epochs,
            lr_drop_epoch=drop,
            seed=0,
            trained_on=args.dataset,
            **SETTINGS[name],
        )
        run_dir = args.out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        state = run_dir / "heads.state.pt"
        resume = False
        if drop is not None:
            # branch off the constant-rate run at the epoch before the drop
            parent = args.out / name.removesuffix("-drop") / f"state_{args.drop_epoch - 1}.pt"
            if not parent.is_file():
                print(f"{name}: needs {parent} (run {name.removesuffix('-drop')} first)")
                return 2
            shutil.copyfile(parent, state)
            resume = True
        model = load_wsi_sam(heads="none", device=args.device)
        cache = FeatureCache(args.cache, model)
        scores: dict[str, Any] = {"settings": dataclasses.asdict(config)}
        if "sam" not in report:
            report["sam"] = {"val": score(model, cache, val, seeds)["sam"]}
            print(f"SAM on validation: {report['sam']['val']}")

        def on_epoch(
            epoch: int,
            loss: float,
            model: WsiSam = model,
            cache: FeatureCache = cache,
            run_dir: Path = run_dir,
            scores: dict[str, Any] = scores,
            name: str = name,
            drop: int | None = drop,
        ) -> None:
            if drop is None and epoch == args.drop_epoch - 1:
                shutil.copyfile(run_dir / "heads.state.pt", run_dir / f"state_{epoch}.pt")
            if epoch in check_epochs:
                t0 = time.perf_counter()
                result = score(model, cache, val, seeds)["wsi-sam"]
                scores[f"epoch_{epoch}"] = {"loss": loss, **result}
                cells = "  ".join(f"{k} {v:.2f}" for k, v in result.items())
                seconds = time.perf_counter() - t0
                print(f"{name} epoch {epoch}: loss {loss:.4f}  {cells}  ({seconds:.0f} s)")
                report[name] = scores
                report_path.write_text(json.dumps(report, indent=1))

        t0 = time.perf_counter()
        train_heads(
            model,
            train,
            config,
            cache=cache,
            out=run_dir / "heads.pt",
            state_path=state,
            resume=resume,
            progress=False,
            on_epoch=on_epoch,
        )
        scores["seconds"] = time.perf_counter() - t0
        scores["done"] = True
        report[name] = scores
        report_path.write_text(json.dumps(report, indent=1))

    sam = report["sam"]["val"]
    print("\nvalidation Dice (%), WSI-SAM minus SAM in brackets")
    print("setting / epoch | " + " | ".join(PROMPTS))
    for name, scores in report.items():
        if name == "sam":
            continue
        for key, cells in scores.items():
            if key.startswith("epoch_"):
                row = " | ".join(f"{cells[p]:.2f} ({cells[p] - sam[p]:+.2f})" for p in PROMPTS)
                print(f"{name} {key[6:]} | {row}")
    print("SAM | " + " | ".join(f"{sam[p]:.2f}" for p in PROMPTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
