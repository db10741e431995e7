"""Cross-validation by image for the instance decoders (engine/instances/SELECTION_RULE.md).

    python scripts/select_instances.py cv --dataset glas --candidates neck,stages,stages-lr
    python scripts/select_instances.py score --dataset glas
    python scripts/select_instances.py final --dataset glas --candidate stages
    python scripts/select_instances.py test --dataset glas

`cv` trains each candidate on each fold (resumable: a state per fold and candidate under
runs/instances/<dataset>/cv/) and stores the held-out folds' decoder maps in out/; `score`
searches the watershed settings on the held-out maps and writes the table; `final` trains the
chosen candidate on all training images and writes the decoder; `test` evaluates it once on the
test images (engine.instances.evaluate) beside the point grid. Encoder maps are cached in
out/instance_cache (OpenVINO bf16 where the CPU has it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.instances.data import label_map_fields  # noqa: E402
from engine.instances.features import InstanceFeatureCache  # noqa: E402
from engine.instances.metrics import score_image, score_images  # noqa: E402
from engine.instances.model import DecoderConfig  # noqa: E402
from engine.instances.train import (  # noqa: E402
    InstanceTrainConfig,
    TrainingItem,
    predict_items,
    prepare_items,
    train_decoder,
)
from engine.instances.tune import SEARCH, drop_small  # noqa: E402
from engine.instances.watershed import WatershedSettings  # noqa: E402

logger = logging.getLogger("select_instances")

SHARED = ROOT.parent / "shared" / "datasets"
DATASETS: dict[str, dict[str, Any]] = {
    "glas": {
        "train": SHARED / "GlaS_png__McGregorWwww_UDTransNet" / "Train_Folder",
        "test": SHARED / "GlaS_png__McGregorWwww_UDTransNet" / "Test_Folder",
        "magnification": 20.0,
        "mpp": 0.62,
        "epochs": 6,
        "lr_drop_epoch": 5,
        "primary": "glas",
        "min_area_um2": (0.0, 200.0, 500.0, 1000.0, 2000.0),
    },
    "monuseg": {
        "train": SHARED / "MoNuSeg_instances__bruceyang2012" / "Train_Folder",
        "test": SHARED / "MoNuSeg_instances__bruceyang2012" / "Test_Folder",
        "magnification": 40.0,
        "mpp": 0.25,
        "epochs": 10,
        "lr_drop_epoch": 8,
        "primary": "nuclei",
        "min_area_um2": (0.0, 5.0, 10.0, 20.0),
    },
}
CANDIDATES: dict[str, DecoderConfig] = {
    "neck": DecoderConfig(inputs=("embedding", "early")),
    "stages": DecoderConfig(inputs=("embedding", "early", "stage1", "stage0")),
    "stages-lr": DecoderConfig(inputs=("embedding", "early", "stage1", "stage0", "lr")),
    "stages-rgb512": DecoderConfig(
        inputs=("embedding", "early", "stage1", "stage0", "rgb"), out_size=512
    ),
}
FOLDS = 2
SEED = 0


def primary_score(summary: dict[str, float], kind: str) -> float:
    """The rule's selection figure: glands (F1 + object Dice) / 2; nuclei AJI."""
    if kind == "glas":
        return (summary["glas_f1"] + summary["object_dice"]) / 2
    return summary["aji"]


def load_items(dataset: str, out_size: int) -> tuple[list[TrainingItem], InstanceFeatureCache]:
    from app.commands.eval import pair_images_and_masks
    from engine.weights import load_sam

    spec = DATASETS[dataset]
    folder = spec["train"]
    pairs = pair_images_and_masks(folder / "img", folder / "labelcol")
    fields = label_map_fields(pairs, spec["magnification"], spec["magnification"], dataset=dataset)
    sam = load_sam(device="cpu", backend="openvino", precision="auto")
    cache = InstanceFeatureCache(ROOT / "out" / "instance_cache", sam)
    started = time.perf_counter()
    items = prepare_items(fields, cache, out_size, variants=range(8), with_lr=True)
    logger.info(
        "%s: %d items from %d fields (%d patches encoded, %.0f s)",
        dataset,
        len(items),
        len(fields),
        cache.encoder_calls,
        time.perf_counter() - started,
    )
    return items, cache


def folds_of(items: list[TrainingItem]) -> list[set[str]]:
    images = sorted({item.field.image for item in items})
    order = np.random.default_rng(SEED).permutation(len(images))
    return [{images[int(i)] for i in order[k::FOLDS]} for k in range(FOLDS)]


def run_dir(dataset: str) -> Path:
    return ROOT / "runs" / "instances" / dataset


def maps_dir(dataset: str, candidate: str, fold: int) -> Path:
    return ROOT / "out" / "instances_cv" / dataset / candidate / f"fold{fold}"


def train_config(dataset: str, candidate: str) -> InstanceTrainConfig:
    spec = DATASETS[dataset]
    return InstanceTrainConfig(
        decoder=CANDIDATES[candidate],
        epochs=spec["epochs"],
        lr_drop_epoch=spec["lr_drop_epoch"],
        seed=SEED,
    )


def command_cv(args: argparse.Namespace) -> None:
    for candidate in args.candidates.split(","):
        config = train_config(args.dataset, candidate)
        items, cache = load_items(args.dataset, config.decoder.out_size)
        folds = folds_of(items)
        for fold, held_out in enumerate(folds):
            if args.fold is not None and fold != args.fold:
                continue
            out = maps_dir(args.dataset, candidate, fold)
            done_marker = out / "done.json"
            if done_marker.is_file():
                logger.info("%s fold %d: done before", candidate, fold)
                continue
            train_items = [i for i in items if i.field.image not in held_out]
            state = run_dir(args.dataset) / "cv" / candidate / f"fold{fold}.state.pt"
            state.parent.mkdir(parents=True, exist_ok=True)
            log_path = state.with_suffix("").with_suffix(".log.jsonl")

            def on_epoch(
                epoch: int, _decoder: Any, record: dict[str, Any], lp: Path = log_path
            ) -> None:
                with open(lp, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")

            outcome = train_decoder(
                train_items, cache, config, state_path=state, resume=True, on_epoch=on_epoch
            )
            test_items = [i for i in items if i.field.image in held_out and i.variant == 0]
            logits = predict_items(outcome.decoder, test_items, cache)
            out.mkdir(parents=True, exist_ok=True)
            for item, value in zip(test_items, logits, strict=True):
                torch.save(value.half(), out / f"{item.field.image}.pt")
            done_marker.write_text(json.dumps({"images": len(test_items), "log": outcome.log}))
            logger.info(
                "%s fold %d: trained and predicted %d images", candidate, fold, len(test_items)
            )


def _ground_truth(dataset: str, image: str) -> np.ndarray:
    from engine.train.readers import read_label_image

    return read_label_image(
        DATASETS[dataset]["train"] / "labelcol" / Path(image).with_suffix(".png").name
    )


def field_window(item: TrainingItem, shape: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the image's pixel (0, 0) in the field's 1024-px HR grid."""
    ox, oy = item.field.field.hr_origin
    ds = item.field.field.hr_downsample
    col, row = -ox / ds, -oy / ds
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6 or ds != 1.0:
        raise ValueError("cross-validation expects fields aligned with their image at 1:1")
    return round(row), round(col)


def labels_in_image(
    logits: torch.Tensor,
    settings: WatershedSettings,
    out_size: int,
    shape: tuple[int, int],
    window: tuple[int, int],
    min_pixels: float,
) -> np.ndarray:
    from engine.instances.watershed import instances_from_maps, maps_to_probabilities

    probabilities = maps_to_probabilities(logits, settings.work_size)
    labels = instances_from_maps(probabilities, settings, out_size)
    factor = 1024 // settings.work_size
    full = np.repeat(np.repeat(labels, factor, 0), factor, 1)
    row, col = window
    return drop_small(full[row : row + shape[0], col : col + shape[1]], min_pixels)


def evaluate_settings(
    cases: list[tuple[torch.Tensor, np.ndarray, tuple[int, int]]],
    settings: WatershedSettings,
    out_size: int,
    min_pixels: float,
) -> dict[str, float]:
    scores = [
        score_image(
            gt, labels_in_image(lg, settings, out_size, gt.shape, win, min_pixels), hausdorff=False
        )
        for lg, gt, win in cases
    ]
    return score_images(scores).as_dict()


def search_settings(
    dataset: str, candidate: str, items: list[TrainingItem] | None = None
) -> dict[str, Any]:
    """Coordinate search (two passes) of the watershed settings and the minimum object area on
    the pooled held-out folds; returns the best settings and their scores."""
    spec = DATASETS[dataset]
    out_size = CANDIDATES[candidate].out_size
    cases = []
    for fold in range(FOLDS):
        folder = maps_dir(dataset, candidate, fold)
        for path in sorted(folder.glob("*.pt")):
            image = path.stem
            logits = torch.load(path, weights_only=True).float()
            gt = _ground_truth(dataset, image)
            window = _window_for(dataset, image)
            cases.append((logits, gt, window))
    if not cases:
        raise SystemExit(f"no held-out maps for {dataset}/{candidate}: run cv first")
    kind = spec["primary"]
    mpp = spec["mpp"]
    settings = WatershedSettings()
    min_area = 0.0
    best = evaluate_settings(cases, settings, out_size, 0.0)
    best_score = primary_score(best, kind)
    for _ in range(2):
        for name, values in [*SEARCH.items(), ("min_area_um2", spec["min_area_um2"])]:
            for value in values:
                if name == "min_area_um2":
                    trial_settings, trial_area = settings, float(value)
                else:
                    trial_settings = dataclasses.replace(settings, **{name: value})
                    trial_area = min_area
                result = evaluate_settings(cases, trial_settings, out_size, trial_area / mpp**2)
                score = primary_score(result, kind)
                if score > best_score + 1e-9:
                    best, best_score = result, score
                    settings, min_area = trial_settings, trial_area
    return {
        "candidate": candidate,
        "images": len(cases),
        "score": best_score,
        "summary": best,
        "watershed": settings.to_dict(),
        "min_area_um2": min_area,
        "default_settings": evaluate_settings(cases, WatershedSettings(), out_size, 0.0),
    }


_WINDOWS: dict[tuple[str, str], tuple[int, int]] = {}


def _window_for(dataset: str, image: str) -> tuple[int, int]:
    if (dataset, image) not in _WINDOWS:
        from app.commands.eval import pair_images_and_masks

        spec = DATASETS[dataset]
        folder = spec["train"]
        pairs = [
            p
            for p in pair_images_and_masks(folder / "img", folder / "labelcol")
            if p[0].name == image
        ]
        fields = label_map_fields(pairs, spec["magnification"], spec["magnification"])
        if len(fields) != 1:
            raise ValueError(f"{image}: expected one field, got {len(fields)}")
        gt = _ground_truth(dataset, image)

        class _Item:
            field = fields[0]

        _WINDOWS[(dataset, image)] = field_window(_Item, gt.shape)  # type: ignore[arg-type]
    return _WINDOWS[(dataset, image)]


def command_score(args: argparse.Namespace) -> None:
    results = []
    for candidate in args.candidates.split(","):
        if not all(
            (maps_dir(args.dataset, candidate, f) / "done.json").is_file() for f in range(FOLDS)
        ):
            logger.info("%s: cross-validation not finished, left out", candidate)
            continue
        started = time.perf_counter()
        result = search_settings(args.dataset, candidate)
        result["search_seconds"] = round(time.perf_counter() - started, 1)
        logs = [
            json.loads((maps_dir(args.dataset, candidate, f) / "done.json").read_text())["log"]
            for f in range(FOLDS)
        ]
        result["train_seconds"] = round(sum(r["seconds"] for log in logs for r in log), 1)
        results.append(result)
        logger.info("%s: %s", candidate, json.dumps(result["summary"]))
    out = run_dir(args.dataset) / "cv"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"# Cross-validation: {args.dataset} ({FOLDS} folds by image, held-out folds pooled)",
        "",
        "| candidate | score | GlaS F1 | object Dice | AJI | PQ | F1@0.5 | mSA "
        "| default-settings score | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    kind = DATASETS[args.dataset]["primary"]
    for r in results:
        s = r["summary"]
        d = primary_score(r["default_settings"], kind)
        lines.append(
            f"| {r['candidate']} | {r['score']:.4f} | {s['glas_f1']:.3f} | {s['object_dice']:.3f} "
            f"| {s['aji']:.3f} | {s['pq']:.3f} | {s['f1_iou50']:.3f} | {s['msa']:.3f} | {d:.4f} "
            f"| {r['train_seconds']:.0f} |"
        )
    lines.append("")
    for r in results:
        lines.append(
            f"- {r['candidate']}: watershed {json.dumps(r['watershed'])}, "
            f"min area {r['min_area_um2']} um^2"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def command_refine(args: argparse.Namespace) -> None:
    """Rule step 4: the chosen candidate's held-out objects with and without WSI-SAM
    refinement (box + own mask on the decoder's field), scored the same way."""
    import engine
    from app.commands.eval import pair_images_and_masks
    from engine.instances.evaluate import draw_labels
    from engine.instances.refine import refine_objects
    from engine.instances.segment import field_objects
    from engine.instances.watershed import instances_from_maps, maps_to_probabilities

    spec = DATASETS[args.dataset]
    results = json.loads((run_dir(args.dataset) / "cv" / "results.json").read_text())
    chosen = next(r for r in results if r["candidate"] == args.candidate)
    settings = WatershedSettings.from_dict(chosen["watershed"])
    min_px = chosen["min_area_um2"] / spec["mpp"] ** 2
    out_size = CANDIDATES[args.candidate].out_size
    model = engine.load_wsi_sam(device="cpu")
    predictor = engine.WsiSamPredictor(
        model, magnification=spec["magnification"], default_magnification=spec["magnification"]
    )
    folder = spec["train"]
    pairs = dict(pair_images_and_masks(folder / "img", folder / "labelcol"))
    plain, refined = [], []
    started = time.perf_counter()
    n_objects = 0
    for fold in range(FOLDS):
        paths = sorted(maps_dir(args.dataset, args.candidate, fold).glob("*.pt"))
        for path in paths[: args.per_fold] if args.per_fold else paths:
            image = folder / "img" / path.stem
            gt = _ground_truth(args.dataset, path.stem)
            fields = label_map_fields(
                [(image, pairs[image])], spec["magnification"], spec["magnification"]
            )
            chosen_field = fields[0].field
            logits = torch.load(path, weights_only=True).float()
            probabilities = maps_to_probabilities(logits, settings.work_size)
            labels = instances_from_maps(probabilities, settings, out_size)
            height, width = gt.shape
            from shapely.geometry import box as shapely_box

            objects = field_objects(
                labels, probabilities, chosen_field, shapely_box(0, 0, width, height)
            )
            objects = [o for o in objects if o.geometry.area >= min_px]
            n_objects += len(objects)
            with engine.open_slide(image) as slide:
                slide.set_scale(magnification=spec["magnification"])
                better = refine_objects(predictor, slide, chosen_field, objects)
                predictor.clear_cache()
            plain.append(
                score_image(
                    gt, draw_labels([o.geometry for o in objects], gt.shape), hausdorff=False
                )
            )
            refined.append(
                score_image(
                    gt, draw_labels([o.geometry for o in better], gt.shape), hausdorff=False
                )
            )
    kind = spec["primary"]
    before = score_images(plain).as_dict()
    after = score_images(refined).as_dict()
    record = {
        "candidate": args.candidate,
        "images": len(plain),
        "objects": n_objects,
        "seconds": round(time.perf_counter() - started, 1),
        "without": before,
        "with": after,
        "score_without": primary_score(before, kind),
        "score_with": primary_score(after, kind),
    }
    record["refine_by_default"] = record["score_with"] > record["score_without"] + 0.005
    out = run_dir(args.dataset) / "cv" / "refine.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


SHIPPED_NAMES = {"glas": "glands", "monuseg": "nuclei"}


def command_final(args: argparse.Namespace) -> None:
    """Rule step 5: the chosen candidate trained on all training images, written as the shipped
    decoder with the post-processing and area limit the cross-validation chose for it."""
    import datetime

    from engine.instances.checkpoint import InstanceModel, shipped_decoders_dir, write_decoder

    spec = DATASETS[args.dataset]
    results = json.loads((run_dir(args.dataset) / "cv" / "results.json").read_text())
    chosen = next(r for r in results if r["candidate"] == args.candidate)
    refine_record = run_dir(args.dataset) / "cv" / "refine.json"
    refine = (
        json.loads(refine_record.read_text()).get("refine_by_default", False)
        if refine_record.is_file()
        else False
    )
    config = train_config(args.dataset, args.candidate)
    started = time.perf_counter()
    items, cache = load_items(args.dataset, config.decoder.out_size)
    encode_seconds = time.perf_counter() - started
    state = run_dir(args.dataset) / "final" / f"{args.candidate}.state.pt"
    state.parent.mkdir(parents=True, exist_ok=True)
    log_path = state.with_suffix("").with_suffix(".log.jsonl")

    def on_epoch(epoch: int, _decoder: Any, record: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    outcome = train_decoder(items, cache, config, state_path=state, resume=True, on_epoch=on_epoch)
    name = SHIPPED_NAMES[args.dataset]
    images = sorted({i.field.image for i in items})
    model = InstanceModel(
        decoder=outcome.decoder,
        magnification=spec["magnification"],
        watershed=WatershedSettings.from_dict(chosen["watershed"]),
        min_area_um2=float(chosen["min_area_um2"]),
        encoder_sha256=cache.sam.checkpoint_info.sha256,
        metadata={
            "name": name,
            "trained_on": {"glas": "GlaS training split", "monuseg": "MoNuSeg 2018 training set"}[
                args.dataset
            ],
            "data": {"n_sources": len(images), "n_objects": _object_count(args.dataset)},
            "kind": "glands" if args.dataset == "glas" else "nuclei",
            "candidate": args.candidate,
            "train": config.to_dict(),
            "variants": 8,
            "epochs": config.epochs,
            "log": outcome.log,
            "cross_validation": {"summary": chosen["summary"], "score": chosen["score"]},
            "refine_by_default": refine,
            "encoder_precision": cache.sam.backend_label,
            "trained": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    out = shipped_decoders_dir() / f"{name}.pt"
    write_decoder(out, model)
    summary = {
        "decoder": str(out.relative_to(ROOT)),
        "encode_and_load_seconds": round(encode_seconds, 1),
        "train_seconds": round(sum(r["seconds"] for r in outcome.log), 1),
        "epochs": outcome.log,
    }
    (run_dir(args.dataset) / "final" / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def _object_count(dataset: str) -> int:
    from app.commands.eval import pair_images_and_masks
    from engine.train.readers import read_label_image

    folder = DATASETS[dataset]["train"]
    return sum(
        int(len(np.unique(read_label_image(mask))) - 1)
        for _, mask in pair_images_and_masks(folder / "img", folder / "labelcol")
    )


def command_test(args: argparse.Namespace) -> None:
    """The single evaluation on the test images: the shipped decoder beside the point grid."""
    from app.cli import main as cli

    spec = DATASETS[args.dataset]
    folder = spec["test"]
    out = run_dir(args.dataset) / "test"
    argv = [
        "eval-instances",
        "--images",
        str(folder / "img"),
        "--masks",
        str(folder / "labelcol"),
        "--image-magnification",
        str(spec["magnification"]),
        "--instances",
        "labels",
        "--decoder",
        SHIPPED_NAMES[args.dataset],
        "--out",
        str(out),
        "--quiet",
    ]
    if not args.no_grid:
        argv += ["--grid", "--points-per-side", str(args.points_per_side)]
    status = cli(argv)
    raise SystemExit(status)


def command_card(args: argparse.Namespace) -> None:
    """The shipped decoder's card (``NAME.card.json``, tied to the file by its sha256): the test
    figures of ``test`` beside the cross-validation's, so that ``wsi-sam heads list`` and the
    Model menu show them."""
    import csv

    from engine.heads_catalogue import write_card
    from engine.instances.checkpoint import shipped_decoders_dir

    name = SHIPPED_NAMES[args.dataset]
    rows = list(csv.reader((run_dir(args.dataset) / "test" / "results.csv").open()))
    header_at = max(i for i, row in enumerate(rows) if row[:1] == ["method"])
    header = rows[header_at]
    scores = {
        row[0]: {k: float(v) for k, v in zip(header[1:], row[1:], strict=True)}
        for row in rows[header_at + 1 :]
        if row
    }
    cv = json.loads((run_dir(args.dataset) / "cv" / "results.json").read_text())
    final = json.loads((run_dir(args.dataset) / "final" / "summary.json").read_text())
    images = int(next(iter(scores.values()))["images"])
    decoder_row = next(method for method in scores if "grid" not in method.lower())
    evaluation = {
        "split": f"{DATASETS[args.dataset]['test'].parent.name}/Test_Folder",
        "images": images,
        "scores": scores[decoder_row],
        "beside": {m: v for m, v in scores.items() if m != decoder_row},
        "cross_validation": {r["candidate"]: r["summary"] for r in cv},
        "train_seconds": final["train_seconds"],
    }
    notes = [
        f"figures from runs/instances/{args.dataset}/test (scripts/select_instances.py test), "
        "chosen by the rule in engine/instances/SELECTION_RULE.md",
    ]
    card = write_card(shipped_decoders_dir() / f"{name}.pt", evaluation, notes)
    print(card)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cv = sub.add_parser("cv")
    cv.add_argument("--dataset", choices=DATASETS, required=True)
    cv.add_argument("--candidates", default="neck,stages,stages-lr")
    cv.add_argument("--fold", type=int, default=None, help="only this fold")
    cv.set_defaults(func=command_cv)
    score = sub.add_parser("score")
    score.add_argument("--dataset", choices=DATASETS, required=True)
    score.add_argument("--candidates", default=",".join(CANDIDATES))
    score.set_defaults(func=command_score)
    final = sub.add_parser("final")
    final.add_argument("--dataset", choices=DATASETS, required=True)
    final.add_argument("--candidate", required=True)
    final.set_defaults(func=command_final)
    test = sub.add_parser("test")
    test.add_argument("--dataset", choices=DATASETS, required=True)
    test.add_argument("--no-grid", action="store_true")
    test.add_argument("--points-per-side", type=int, default=16)
    test.set_defaults(func=command_test)
    card = sub.add_parser("card")
    card.add_argument("--dataset", choices=DATASETS, required=True)
    card.set_defaults(func=command_card)
    refine = sub.add_parser("refine")
    refine.add_argument("--dataset", choices=DATASETS, required=True)
    refine.add_argument(
        "--per-fold", type=int, default=0, help="only the first N held-out images of each fold"
    )
    refine.add_argument("--candidate", required=True)
    refine.set_defaults(func=command_refine)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
