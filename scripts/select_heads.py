"""Choose training settings for the default heads on a validation split, never on the test split.

Trains WSI-SAM heads on ``--train-images``/``--train-masks`` under a few settings and scores each
every ``--every`` epochs on ``--val-images``/``--val-masks`` (mean HR Dice, noisy boxes and 3/5/10
points, several prompt seeds), next to SAM on the same prompts. Runs with a learning-rate drop
branch off the matching constant-rate run just before the drop (same seed, so the epochs before
the drop are identical), which halves the cost. Prints a table and writes ``selection.json``.
Interrupted, it goes on where it stopped: finished runs are skipped, an unfinished one resumes
after its last completed epoch (its state is written after every epoch).

    python scripts/select_heads.py --train-images T/img --train-masks T/labelcol \
        --val-images V/img --val-masks V/labelcol --image-magnification 20 \
        --cache out/glas_train/feature_cache --out out/selection

Several processes may share one ``--out`` (say one per setting, with ``--wait-for-parents`` on
the process that runs the ``-drop`` branches): each merges its own runs into ``selection.json``
under a file lock, so none overwrites another's scores.

The validation objects are encoded once into the same feature cache, so scoring a snapshot
only runs the decoders.

With ``--folds K`` instead of a validation folder, the training images are split into K folds
by image (every K-th image in natural order); each setting is trained K times, each time
scored on the held-out fold, and the table pools the folds (mean over all held-out objects).
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

from filelock import FileLock  # a dependency of torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.commands.eval import pair_images_and_masks
from engine.build import load_wsi_sam
from engine.evaluate import summarise
from engine.train.data import ObjectSample, SlidePool, make_samples, usable
from engine.train.features import FeatureCache
from engine.train.holdout import evaluate_cached
from engine.train.readers import read_label_map
from engine.train.trainer import TrainConfig, load_train_state, prepare_items, train_heads
from engine.wsi_sam import WsiSam

PROMPTS = ("box", "3", "5", "10")

# name -> settings that differ from TrainConfig's defaults; a name ending in "-drop" is its
# parent's settings plus the learning-rate drop, branched off the parent's run.
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "box-weighted": {"prompt_kinds": ("box", "box", "points", "mask")},
    "box-heavy": {"prompt_kinds": ("box", "box", "box", "points", "mask")},
    "box-only": {"prompt_kinds": ("box",)},
    "paper-object": {"prompt_mixing": "object"},
    "paper-object-aug4": {"prompt_mixing": "object", "augment_variants": 4},
}
SETTINGS.update({f"{name}-drop": dict(s) for name, s in list(SETTINGS.items())})


def label_samples(
    images: Path, masks: Path, magnification: float, dataset: str
) -> list[list[ObjectSample]]:
    """The objects of the label maps in ``masks``, paired with ``images`` as the CLI pairs them,
    grouped by image in natural order of the file names."""
    per_image: list[list[ObjectSample]] = []
    with SlidePool(default_magnification=magnification) as pool:
        pairs = sorted(pair_images_and_masks(images, masks), key=lambda p: natural_key(p[0].stem))
        for image, mask in pairs:
            found = make_samples(
                image, read_label_map(mask), dataset, default_magnification=magnification, pool=pool
            )
            per_image.append(usable(found)[0])
    return per_image


def natural_key(stem: str) -> tuple[int, str]:
    """'5' before '10'; non-numeric stems after the numeric ones, alphabetically."""
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def split_folds(
    per_image: list[list[ObjectSample]], folds: int
) -> list[tuple[list[ObjectSample], list[ObjectSample]]]:
    """(train, held-out) objects of each fold: image i is held out in fold i mod ``folds``."""
    if not 2 <= folds <= len(per_image):
        raise ValueError(f"--folds must be between 2 and the number of images ({len(per_image)})")
    splits = []
    for fold in range(folds):
        held = [s for i, group in enumerate(per_image) if i % folds == fold for s in group]
        train = [s for i, group in enumerate(per_image) if i % folds != fold for s in group]
        splits.append((train, held))
    return splits


def score(
    model: WsiSam,
    cache: FeatureCache,
    samples: list[ObjectSample],
    seeds: list[int],
    models: tuple[str, ...] = ("sam", "wsi-sam"),
) -> dict[str, dict[str, float]]:
    """Mean Dice (percent) of ``models`` per prompt setting over objects x seeds: the protocol
    of ``wsi-sam eval``, on the cached (unaugmented) encoder outputs."""
    results = evaluate_cached(model, cache, samples, seeds, models)
    scores: dict[str, dict[str, float]] = {"wsi-sam": {}, "sam": {}}
    for row in summarise(results):
        scores[row.model][row.prompt] = row.dice
    return scores


def pooled(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Object-weighted mean of per-split scores [(n_objects, {prompt: dice})]."""
    total = sum(n for n, _ in parts)
    return {p: sum(n * cells[p] for n, cells in parts) / total for p in PROMPTS}


def feature_precision(model: WsiSam) -> str:
    """The precision of the encoder outputs the scores are computed on ("f32", "bf16", ...).

    Runs scored on bf16 features are compared with SAM on bf16 features, f32 with f32: a
    cross-validation that moves to a machine without native bf16 goes on with f32 features.
    """
    backend = getattr(model.sam, "encoder_backend", None)
    return str(getattr(backend, "precision", "f32")) if backend is not None else "f32"


def gains_table(
    report: dict[str, Any], names: list[str], split_names: list[str]
) -> list[tuple[str, int, dict[str, float], dict[str, float]]]:
    """(setting, epoch, pooled Dice, pooled gain over SAM) for each epoch scored on every split.

    The gain of a split is measured against SAM on the same split and the same features; the
    pooled gain is the object-weighted mean of the splits' gains.
    """
    rows = []
    for name in names:
        runs = [report.get(name, {}).get(s, {}) for s in split_names]
        done = [{int(k[6:]) for k in r if k.startswith("epoch_")} for r in runs]
        for epoch in sorted(set.intersection(*done)) if done else []:
            cells, gains = [], []
            for split, run in zip(split_names, runs, strict=True):
                scored = run[f"epoch_{epoch}"]
                # runs scored before the features were recorded read bf16 ones (sessions 6-7)
                features = scored.get("features", "bf16")
                sam = report["sam"].get(split, {}).get(features)
                if sam is None:  # say so: a row left out silently would skew the choice
                    print(f"{name} {epoch}: no SAM score on {split} with {features} features")
                    break
                cells.append((run["n_objects"], scored))
                gains.append((run["n_objects"], {p: scored[p] - sam[p] for p in PROMPTS}))
            else:
                rows.append((name, epoch, pooled(cells), pooled(gains)))
    return rows


def encode_only(
    report: dict[str, Any],
    names: list[str],
    splits: dict[str, tuple[list[ObjectSample], list[ObjectSample]]],
    out: Path,
    cache_dir: Path,
    epochs: int,
    device: str,
) -> int:
    """Encode what the runs of ``names`` not yet done need: their training objects under the
    setting's augmentations (unless the run has trained all ``epochs`` and only needs scoring)
    and their held-out objects unaugmented. Returns 0."""
    # object key -> (object, augmentation variants): the identity is among the variants, so an
    # object that one run trains on and another holds out is encoded once
    needed: dict[str, tuple[ObjectSample, int]] = {}
    for name in names:
        variants = int(SETTINGS[name].get("augment_variants", TrainConfig.augment_variants))
        for split, (train, val) in splits.items():
            if report.get(name, {}).get(split, {}).get("done"):
                continue
            state = out / name / split / "heads.state.pt"
            trained = state.is_file() and int(load_train_state(state)["epoch"]) >= epochs
            for count, group in ((variants, [] if trained else train), (0, val)):
                for sample in group:
                    if needed.get(sample.key(), (sample, -1))[1] < count:
                        needed[sample.key()] = (sample, count)
    model = load_wsi_sam(heads="none", device=device)
    cache = FeatureCache(cache_dir, model)
    with SlidePool() as pool:
        for count in sorted({c for _, c in needed.values()}, reverse=True):
            samples = [s for s, c in needed.values() if c == count]
            print(f"encoding {len(samples)} objects x {1 + count} field(s) each")
            prepare_items(samples, cache, count, 0, pool)
    print(f"feature cache {cache_dir}: {cache.encoder_calls // 2} field(s) encoded now")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=Path, required=True)
    parser.add_argument("--train-masks", type=Path, required=True)
    parser.add_argument("--val-images", type=Path, help="validation images (or use --folds)")
    parser.add_argument("--val-masks", type=Path)
    parser.add_argument(
        "--folds", type=int, default=None, help="cross-validate over the training images"
    )
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
    parser.add_argument(
        "--wait-for-parents",
        action="store_true",
        help="a -drop branch waits for its parent's state (run by another process on this --out)",
    )
    parser.add_argument(
        "--encode-only",
        action="store_true",
        help="encode the fields that the unfinished runs need into --cache, then stop (on all "
        "threads, before the runs are split across processes)",
    )
    parser.add_argument(
        "--train-precision",
        choices=("f32", "bf16"),
        default="f32",
        help="precision of the training step (bf16 autocast where the CPU has it natively)",
    )
    args = parser.parse_args()

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    if (args.folds is None) == (args.val_images is None or args.val_masks is None):
        parser.error("give either --val-images and --val-masks, or --folds")
    seeds = [int(s) for s in args.seeds.split(",")]
    per_image = label_samples(
        args.train_images, args.train_masks, args.image_magnification, args.dataset
    )
    splits: dict[str, tuple[list[ObjectSample], list[ObjectSample]]] = {}
    if args.folds is not None:
        try:
            for k, fold in enumerate(split_folds(per_image, args.folds)):
                splits[f"fold{k}"] = fold
        except ValueError as exc:
            parser.error(str(exc))
    else:
        train = [s for group in per_image for s in group]
        val_groups = label_samples(
            args.val_images, args.val_masks, args.image_magnification, args.dataset
        )
        splits["val"] = (train, [s for group in val_groups for s in group])
    for split, (train, val) in splits.items():
        print(f"{split}: {len(train)} training objects, {len(val)} held-out objects")
    print(f"prompt seeds {seeds}")
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "selection.json"
    lock = FileLock(str(report_path) + ".lock")

    def read_report() -> dict[str, Any]:
        return json.loads(report_path.read_text()) if report_path.is_file() else {}

    with lock:
        report = read_report()
    report.setdefault("sam", {})
    check_epochs = set(range(args.every, args.epochs + 1, args.every))
    if args.encode_only:
        return encode_only(report, names, splits, args.out, args.cache, args.epochs, args.device)

    def save(name: str, split: str) -> None:
        # merge this one run into what is on disk: another process may own other runs
        with lock:
            on_disk = read_report()
            on_disk.setdefault(name, {})[split] = report[name][split]
            tmp = report_path.with_name(report_path.name + ".tmp")
            tmp.write_text(json.dumps(on_disk, indent=1))
            tmp.replace(report_path)

    for name in names:
        for split, (train, val) in splits.items():
            if report.get(name, {}).get(split, {}).get("done"):
                print(f"{name} {split}: done before, skipped")
                continue
            drop = args.drop_epoch if name.endswith("-drop") else None
            config = TrainConfig(
                epochs=args.epochs,
                lr_drop_epoch=drop,
                seed=0,
                trained_on=args.dataset,
                precision=args.train_precision,
                **SETTINGS[name],
            )
            run_dir = args.out / name / split
            run_dir.mkdir(parents=True, exist_ok=True)
            state = run_dir / "heads.state.pt"
            # an interrupted run goes on after its last completed epoch (a branch only once it
            # has got past the epoch it branched at)
            saved = load_train_state(state) if state.is_file() else None
            completed = int(saved["epoch"]) if saved else 0
            # a branch's own state (not yet past the drop when it trained the epochs before it)
            own = saved is not None and json.loads(saved["config"]).get("lr_drop_epoch") == drop
            resume = completed > (0 if drop is None or own else args.drop_epoch - 1)
            if resume:
                print(f"{name} {split}: resuming after epoch {completed}")
            elif drop is not None:
                # branch off the constant-rate run at the epoch before the drop
                parent_name = name.removesuffix("-drop")
                parent = args.out / parent_name / split / f"state_{args.drop_epoch - 1}.pt"
                if not parent.is_file() and args.wait_for_parents:
                    print(f"{name} {split}: waiting for {parent}")
                    while not parent.is_file():
                        with lock:  # a parent that finished without it will never write it
                            if read_report().get(parent_name, {}).get(split, {}).get("done"):
                                break
                        time.sleep(30)
                with lock:
                    parent_done = read_report().get(parent_name, {}).get(split, {}).get("done")
                if parent.is_file():
                    shutil.copyfile(parent, state)
                    resume = True
                elif parent_done:
                    # the parent finished but its state is gone (a new working folder): train
                    # the epochs before the drop again; same seed and schedule, so the same run
                    print(
                        f"{name} {split}: {parent} is gone; training epochs "
                        f"1-{args.drop_epoch - 1} again before the drop"
                    )
                else:
                    print(f"{name}: needs {parent} (run {parent_name} first)")
                    return 2
            model = load_wsi_sam(heads="none", device=args.device)
            cache = FeatureCache(args.cache, model)
            features = feature_precision(model)
            earlier = report.get(name, {}).get(split, {}) if resume else {}
            scores: dict[str, Any] = {
                "settings": dataclasses.asdict(config),
                "n_objects": len(val),
                **{k: v for k, v in earlier.items() if k.startswith("epoch_")},
            }
            if features not in report["sam"].get(split, {}):
                with lock:  # another process may have scored it meanwhile
                    report["sam"][split] = read_report().get("sam", {}).get(split, {})
            if features not in report["sam"][split]:
                report["sam"][split][features] = {
                    "n_objects": len(val),
                    **score(model, cache, val, seeds, ("sam",))["sam"],
                }
                print(f"SAM on {split} ({features} features): {report['sam'][split][features]}")
                save("sam", split)

            def on_epoch(
                epoch: int,
                loss: float,
                model: WsiSam = model,
                cache: FeatureCache = cache,
                run_dir: Path = run_dir,
                scores: dict[str, Any] = scores,
                name: str = name,
                split: str = split,
                val: list[ObjectSample] = val,
                drop: int | None = drop,
                features: str = features,
            ) -> None:
                if drop is None and epoch == args.drop_epoch - 1:
                    # copy, then rename: a branch in another process may be waiting for it
                    branch_point = run_dir / f"state_{epoch}.pt"
                    shutil.copyfile(run_dir / "heads.state.pt", branch_point.with_suffix(".tmp"))
                    branch_point.with_suffix(".tmp").replace(branch_point)
                if epoch in check_epochs:
                    t0 = time.perf_counter()
                    result = score(model, cache, val, seeds, ("wsi-sam",))["wsi-sam"]
                    scores[f"epoch_{epoch}"] = {"loss": loss, "features": features, **result}
                    cells = "  ".join(f"{k} {v:.2f}" for k, v in result.items())
                    seconds = time.perf_counter() - t0
                    print(
                        f"{name} {split} epoch {epoch}: loss {loss:.4f}  {cells}  ({seconds:.0f} s)"
                    )
                    report.setdefault(name, {})[split] = scores
                    save(name, split)

            t0 = time.perf_counter()
            result = train_heads(
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
            if args.epochs in check_epochs and f"epoch_{args.epochs}" not in scores:
                # stopped while scoring its last epoch: the model holds that epoch's heads now
                on_epoch(args.epochs, result.epoch_losses[-1])
            scores["seconds"] = time.perf_counter() - t0
            scores["done"] = True
            report.setdefault(name, {})[split] = scores
            save(name, split)

    with lock:
        report = read_report()  # with the runs of any other process on this --out
    split_names = list(splits)
    print(
        f"\nheld-out Dice (%) pooled over {', '.join(split_names)}; in brackets WSI-SAM minus "
        "SAM on the same objects and features, pooled"
    )
    print("setting / epoch | " + " | ".join(PROMPTS))
    # this process's settings, then those another process on this --out has run
    others = [n for n in SETTINGS if n in report and n not in names]
    for name, epoch, cells, gains in gains_table(report, names + others, split_names):
        row = " | ".join(f"{cells[p]:.2f} ({gains[p]:+.2f})" for p in PROMPTS)
        print(f"{name} {epoch} | {row}")
    for precision in ("bf16", "f32"):
        sam_runs = [report["sam"].get(s, {}).get(precision) for s in split_names]
        if all(sam_runs):
            sam = pooled([(r["n_objects"], r) for r in sam_runs if r])
            print(f"SAM ({precision} features) | " + " | ".join(f"{sam[p]:.2f}" for p in PROMPTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
