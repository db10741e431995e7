"""``wsi-sam train-instances``: train an instance decoder (automatic segmentation) on your data.

The same data sources as ``wsi-sam train``: images with instance label maps (each image is
completely annotated), slides with QuPath GeoJSON / XML beside them, or a QuPath project. For
slides and projects the objects are the annotations (or detections) of ``--classes`` inside the
areas marked as *completely annotated*: the annotations of class ``Region*`` (QuPath's) or of
``--region-class``. Outside those areas unlabelled tissue is not taught as background.

Writes the decoder (``--out``), its card (``OUT.card.json`` for the catalogue, ``OUT.md`` to
read), a resumable state (``OUT.state.pt``) and a log (``OUT.log.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.commands.eval import DataError, add_data_arguments
from app.errors import UserError, check_writable_file, finite_float, positive_float, positive_int

logger = logging.getLogger(__name__)

DEFAULT_INPUTS = "embedding,early,stage1,stage0"
REGION_CLASS = "Region*"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-instances",
        help="train an instance decoder (find every object) on your annotations",
        description="Train a small decoder on the frozen SAM encoder that finds every object of "
        "your classes (foreground, centre and boundary distance maps, then a seeded watershed). "
        "Data as for 'wsi-sam train'; for slides and projects only the areas annotated as "
        f"{REGION_CLASS!r} (or --region-class) are learnt from.",
    )
    add_data_arguments(parser)
    parser.set_defaults(magnification=None)
    parser.add_argument("--out", type=Path, required=True, help="decoder file to write (.pt)")
    parser.add_argument(
        "--region-class",
        default=REGION_CLASS,
        help="class of the annotations that mark completely annotated areas (slides, project); "
        f"default {REGION_CLASS!r}",
    )
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="fields per step")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="AdamW learning rate")
    parser.add_argument(
        "--lr-drop-epoch", type=int, default=None, help="10x lower rate from this epoch on"
    )
    parser.add_argument(
        "--variants",
        type=int,
        choices=(1, 2, 4, 8),
        default=8,
        help="symmetries of each field (rotations by 90 degrees and mirrors; default all 8)",
    )
    parser.add_argument(
        "--inputs",
        default=DEFAULT_INPUTS,
        help=f"encoder maps the decoder reads (default {DEFAULT_INPUTS}; also lr, rgb)",
    )
    parser.add_argument(
        "--out-size", type=int, choices=(256, 512), default=256, help="output maps per field"
    )
    parser.add_argument(
        "--holdout",
        type=finite_float,
        default=None,
        help="fraction of the images kept out for validation (default: one image when there "
        "are at least two; 0: none)",
    )
    parser.add_argument(
        "--kind",
        choices=("glands", "nuclei"),
        default=None,
        help="what the validation tunes for: glands (GlaS F1 + object Dice) or nuclei (AJI); "
        "default: from the objects' size",
    )
    parser.add_argument(
        "--cache", type=Path, help="feature cache (default: the user's cache folder)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="one JSON object per line on stdout for each encoded field, step and epoch",
    )
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _terminate_cleanly(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _is_region(class_name: str | None, region_class: str) -> bool:
    return class_name is not None and class_name == region_class


def load_fields(args: argparse.Namespace, magnification: float | str) -> tuple[list[Any], float]:
    """Training fields of the chosen source, and the magnification used (resolved from
    ``auto`` by the objects' size)."""
    from shapely import union_all

    from app.commands.eval import (
        SLIDE_SUFFIXES,
        _annotation_file,
        _files,
        _split_classes,
        pair_images_and_masks,
    )
    from engine.instances.data import region_fields
    from engine.train.data import SlidePool
    from engine.train.readers import read_annotation_xml, read_label_map

    chosen = [name for name in ("images", "slides", "project") if getattr(args, name)]
    if len(chosen) != 1:
        raise DataError(
            "give exactly one data source: --images DIR --masks DIR, --slides DIR "
            "or --project PROJECT"
        )
    if args.images and not args.masks:
        raise DataError("--images needs --masks DIR (instance label maps)")
    classes = _split_classes(args.classes)
    # (source, objects, complete area or None for "the whole image")
    sources: list[tuple[Path, list[Any], Any]] = []
    if args.images:
        for image, mask in pair_images_and_masks(args.images, args.masks):
            objects = [o.geometry for o in read_label_map(mask, instances=args.instances)]
            sources.append((image, objects, None))
    else:
        raw: list[tuple[Path, list[tuple[str | None, Any]]]] = []
        if args.slides:
            for slide in _files(args.slides, SLIDE_SUFFIXES, "slides"):
                annotations = _annotation_file(slide)
                if annotations is None:
                    continue
                if annotations.suffix.lower() == ".xml":
                    found = [(o.class_name, o.geometry) for o in read_annotation_xml(annotations)]
                else:
                    import qupath_bridge

                    found = [
                        (a.path_class.name if a.path_class else None, a.geometry)
                        for a in qupath_bridge.read_geojson(annotations)
                    ]
                raw.append((slide, found))
        else:
            raw = _project_objects(args.project)
        for source, found in raw:
            regions = [g for c, g in found if _is_region(c, args.region_class) and _has_area(g)]
            objects = [
                g
                for c, g in found
                if not _is_region(c, args.region_class)
                and _has_area(g)
                and (classes is None or c in classes)
            ]
            if not regions:
                logger.warning(
                    "%s: no %r annotation marks a completely annotated area; skipped",
                    source.name,
                    args.region_class,
                )
                continue
            sources.append((source, objects, union_all(regions)))
        if not sources:
            raise DataError(
                f"no image has an annotation of class {args.region_class!r} marking an area where "
                "every object is annotated: draw one around such an area (or name the class "
                "with --region-class)"
            )
    if not any(objects for _, objects, _ in sources):
        what = f" of classes {sorted(classes)}" if classes else ""
        raise DataError(f"no objects{what} found in the completely annotated areas")
    with SlidePool(default_magnification=args.image_magnification) as pool:
        if magnification == "auto":
            magnification = _auto_magnification(sources, pool, args.image_magnification)
        fields = []
        for path, objects, complete in sources:
            fields.extend(
                region_fields(
                    pool.get(path),
                    path,
                    objects,
                    complete,
                    float(magnification),
                    image=path.name,
                    default_magnification=args.image_magnification,
                )
            )
    return fields, float(magnification)


def _has_area(geometry: Any) -> bool:
    return geometry is not None and not geometry.is_empty and geometry.area > 0


def _project_objects(project: Path) -> list[tuple[Path, list[tuple[str | None, Any]]]]:
    import qupath_bridge

    try:
        opened = qupath_bridge.open_project(project, mode="r")
    except qupath_bridge.BridgeError as exc:
        raise DataError(str(exc)) from None
    out = []
    for entry in opened.images:
        if entry.path is None or not entry.exists:
            logger.warning("project image %s: file not found, skipped", entry.name)
            continue
        try:
            found = opened.read_annotations(entry)
        except qupath_bridge.BridgeError as exc:
            raise DataError(f"project image {entry.name}: {exc}") from None
        out.append(
            (
                Path(entry.path),
                [(a.path_class.name if a.path_class else None, a.geometry) for a in found],
            )
        )
    return out


def _auto_magnification(
    sources: list[tuple[Path, list[Any], Any]], pool: Any, default: float
) -> float:
    """The highest of 40, 20, 10, 5x (not above a slide's own) at which the larger objects
    (90th percentile of their extent) take at most half a 1024-px field."""
    from engine.patches import level0_magnification

    extents = []
    base = math.inf
    for source, objects, _ in sources:
        slide = pool.get(source)
        base = min(base, level0_magnification(slide, default))
        for geometry in objects:
            x0, y0, x1, y1 = geometry.bounds
            extents.append(max(x1 - x0, y1 - y0) / level0_magnification(slide, default))
    if not extents:
        return min(20.0, base)
    # extent in level-0 pixels per unit of magnification: pixels at m = extent * m
    p90 = float(sorted(extents)[int(0.9 * (len(extents) - 1))])
    for candidate in (40.0, 20.0, 10.0, 5.0):
        if candidate <= base + 1e-6 and p90 * candidate <= 512:
            return candidate
    return 5.0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numpy as np

    from engine.instances.checkpoint import InstanceModel, write_decoder
    from engine.instances.data import DIHEDRAL
    from engine.instances.features import InstanceFeatureCache
    from engine.instances.model import DecoderConfig
    from engine.instances.train import (
        InstanceTrainConfig,
        TrainingCancelledError,
        predict_items,
        prepare_items,
        train_decoder,
    )
    from engine.weights import WeightsError, load_sam

    check_writable_file(args.out, "--out")
    signal.signal(signal.SIGTERM, _terminate_cleanly)
    try:
        config = DecoderConfig(
            inputs=tuple(n.strip() for n in args.inputs.split(",") if n.strip()),
            out_size=args.out_size,
        )
    except ValueError as exc:
        raise UserError(f"--inputs: {exc}", 2) from None
    magnification = args.magnification if args.magnification is not None else "auto"
    try:
        fields, magnification = load_fields(args, magnification)
    except DataError as exc:
        raise UserError(str(exc)) from None
    images = sorted({f.image for f in fields})
    holdout = args.holdout
    if holdout is None:
        held = {images[-1]} if len(images) >= 2 else set()
    else:
        if not 0 <= holdout <= 0.5:
            raise UserError("--holdout must be between 0 and 0.5", 2)
        count = round(holdout * len(images))
        order = np.random.default_rng(args.seed).permutation(len(images))
        held = {images[int(i)] for i in order[:count]}
    try:
        sam = load_sam(checkpoint=args.checkpoint, **engine_kwargs(args))
    except (WeightsError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    from engine.backends.openvino_backend import cache_root

    # the encoder maps are rebuilt when lost: the user's cache folder, not beside the decoder
    cache_dir = args.cache or cache_root() / "instance_features"
    cache = InstanceFeatureCache(cache_dir, sam)
    variants = (
        tuple(range(len(DIHEDRAL)))[: args.variants] if args.variants < 8 else tuple(range(8))
    )
    if args.variants == 2:
        variants = (0, 4)  # identity and mirror
    train_config = InstanceTrainConfig(
        decoder=config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_drop_epoch=args.lr_drop_epoch,
        variants=variants,
        seed=args.seed,
    )
    progress = _progress_printer(args)
    started = time.perf_counter()
    logger.info(
        "%d fields from %d images at %gx (%d held out for validation); %s",
        len(fields),
        len(images),
        magnification,
        len(held),
        sam.backend_label,
    )
    state_path = args.out.with_name(args.out.stem + ".state.pt")
    log_path = args.out.with_name(args.out.stem + ".log.jsonl")
    try:
        train_fields = [f for f in fields if f.image not in held]
        items = prepare_items(
            train_fields,
            cache,
            config.out_size,
            variants,
            with_lr=config.needs_lr,
            progress=progress,
        )
        encode_seconds = time.perf_counter() - started
        held_items = prepare_items(
            [f for f in fields if f.image in held],
            cache,
            config.out_size,
            (0,),
            with_lr=config.needs_lr,
        )
        if not args.resume:
            log_path.unlink(missing_ok=True)

        def on_epoch(_epoch: int, _decoder: Any, record: dict[str, Any]) -> None:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

        outcome = train_decoder(
            items,
            cache,
            train_config,
            state_path=state_path,
            resume=args.resume,
            progress=progress,
            on_epoch=on_epoch,
        )
    except KeyboardInterrupt:
        print(
            f"wsi-sam train-instances: stopped; the last finished epoch is in {state_path} "
            "(--resume continues)",
            file=sys.stderr,
        )
        return 130
    except TrainingCancelledError:
        return 130
    except ValueError as exc:
        raise UserError(f"wsi-sam train-instances: {exc}") from None
    kind = args.kind or ("nuclei" if magnification >= 40 else "glands")
    model = InstanceModel(
        decoder=outcome.decoder,
        magnification=magnification,
        encoder_sha256=sam.checkpoint_info.sha256,
        metadata={
            "trained_on": _trained_on(args),
            "images": len(images) - len(held),
            "fields": len(train_fields),
            "variants": len(variants),
            "epochs": args.epochs,
            "kind": kind,
            "classes": sorted(c.strip() for c in (args.classes or "").split(",") if c.strip()),
            "train": train_config.to_dict(),
            "log": outcome.log,
            "encode_seconds": round(encode_seconds, 1),
        },
    )
    evaluation: dict[str, Any] = {}
    if held_items:
        evaluation = _validate(
            model, held_items, cache, kind, predict_items, args.image_magnification
        )
        model.metadata["validation"] = evaluation
    write_decoder(args.out, model)
    _write_cards(args.out, model, evaluation)
    if args.progress_json:
        _emit({"stage": "done", "out": str(args.out), "validation": evaluation})
    seconds = time.perf_counter() - started
    text = ""
    if evaluation:
        s = evaluation["scores"]
        text = (
            f"; validation on {evaluation['images']} image(s): F1 {s['glas_f1']:.3f}, "
            f"object Dice {s['object_dice']:.3f}, AJI {s['aji']:.3f}"
        )
    print(f"wrote {args.out} ({magnification:g}x, {seconds:.0f} s){text}")
    return 0


def _trained_on(args: argparse.Namespace) -> str:
    source = args.images or args.slides or args.project
    return args.dataset or Path(source).name


def _validate(
    model: Any,
    held_items: list[Any],
    cache: Any,
    kind: str,
    predict_items: Any,
    image_magnification: float,
) -> dict[str, Any]:
    """Tune the post-processing on the held-out fields and score it there."""
    import numpy as np

    from engine.instances.data import field_labels
    from engine.instances.targets import downsample_labels
    from engine.instances.tune import Case, tune_settings
    from engine.patches import level0_magnification
    from engine.slides import open_slide

    work = model.watershed.work_size
    step = 1024 // work
    cases = []
    um2 = []
    logits = predict_items(model.decoder, held_items, cache)
    for item, value in zip(held_items, logits, strict=True):
        with open_slide(item.field.source) as slide:
            size = slide.dimensions
            mpp = (
                slide.mpp[0]
                if slide.mpp
                else 10.0 / level0_magnification(slide, image_magnification)
            )
        labels, valid = field_labels(item.field, size)
        sampled_valid = valid[step // 2 :: step, step // 2 :: step]
        cases.append(Case(value, downsample_labels(labels, work), sampled_valid))
        um2.append((mpp * item.field.field.hr_downsample * step) ** 2)
    areas = (0.0, 5.0, 10.0, 20.0) if kind == "nuclei" else (0.0, 200.0, 500.0, 1000.0)
    result = tune_settings(cases, model.config.out_size, kind, float(np.mean(um2)), areas)
    model.watershed = result.settings
    model.min_area_um2 = result.min_area_um2
    summary = result.summary.as_dict()
    return {
        "split": "held-out image(s)",
        "images": len({i.field.image for i in held_items}),
        "scores": {
            k: round(float(v), 4)
            for k, v in summary.items()
            if k not in ("images", "n_gt", "n_pred") and np.isfinite(v)
        },
        "objects": int(result.summary.n_gt),
    }


def _write_cards(out: Path, model: Any, evaluation: dict[str, Any]) -> None:
    from engine._files import atomic_write_bytes
    from engine.heads_catalogue import write_card

    write_card(out, evaluation, notes=[f"instance decoder at {model.magnification:g}x"])
    meta = model.metadata
    lines = [
        f"# Instance decoder {out.stem}",
        "",
        f"- Trained on: {meta.get('trained_on')} ({meta.get('images')} images, "
        f"{meta.get('fields')} fields x {meta.get('variants')} symmetries, "
        f"{meta.get('epochs')} epochs)",
        f"- Works at {model.magnification:g}x; objects of at least {model.min_area_um2:g} um^2",
        f"- Reads: {', '.join(model.config.inputs)}; output {model.config.out_size} px per field",
        f"- Post-processing: {json.dumps(model.watershed.to_dict())}",
    ]
    if meta.get("classes"):
        lines.append(f"- Classes: {', '.join(meta['classes'])}")
    if evaluation:
        s = evaluation["scores"]
        lines += [
            "",
            f"Validation on {evaluation['images']} held-out image(s), {evaluation['objects']} "
            "objects:",
            "",
            "| GlaS F1 | object Dice | AJI | PQ | F1 @ IoU 0.5 | mSA |",
            "|---|---|---|---|---|---|",
            f"| {s.get('glas_f1', 0):.3f} | {s.get('object_dice', 0):.3f} | {s.get('aji', 0):.3f} "
            f"| {s.get('pq', 0):.3f} | {s.get('f1_iou50', 0):.3f} | {s.get('msa', 0):.3f} |",
        ]
    else:
        lines += ["", "No validation: no image was held out (--holdout 0 or a single image)."]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode("utf-8"))


def _progress_printer(args: argparse.Namespace) -> Any:
    if args.progress_json:
        return lambda stage, done, total: _emit({"stage": stage, "done": done, "total": total})
    if args.quiet:
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage == "epoch":
            if "step" in bars:
                bars.pop("step").close()
            logger.info("epoch %d of %d done", done, total)
            return
        bar = bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    return update
