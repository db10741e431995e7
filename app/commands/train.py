"""``wsi-sam train``: train WSI-SAM's HR / LR heads on annotated objects (SAM stays frozen).

Takes the same data options as ``wsi-sam eval``. The frozen encoder's outputs are cached on disk
(``--cache``), so only the first epoch of the first run pays for encoding; ``--resume`` continues
from the state written after every epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.commands.eval import DataError, add_data_arguments, load_samples
from app.errors import check_writable_file, finite_float, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train WSI-SAM's heads on your annotations",
        description="Train the HR/LR heads of WSI-SAM (SAM frozen) on objects from images with "
        "label maps, slides with GeoJSON/XML, or a QuPath project. Writes a heads checkpoint "
        "(--out), a resumable state (OUT.state.pt) and a loss log (OUT.log.jsonl).",
    )
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="heads checkpoint to write (.pt)")
    parser.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="objects per step (default 4)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="AdamW learning rate (1e-3)"
    )
    parser.add_argument(
        "--lr-drop-epoch",
        type=int,
        default=None,
        help="from this epoch on (1-based) the learning rate is 10x lower (default: constant)",
    )
    parser.add_argument(
        "--weight-decay", type=finite_float, default=1e-2, help="AdamW weight decay"
    )
    parser.add_argument(
        "--lambda",
        dest="lam",
        type=finite_float,
        default=0.5,
        help="weight of the HR loss; the LR loss gets 1 - lambda (default 0.5)",
    )
    parser.add_argument(
        "--aggregation",
        choices=("mean", "sum"),
        default="mean",
        help="token aggregation: mean (paper, default) or sum (authors' code)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="feature cache folder (default: OUT's folder/feature_cache)",
    )
    parser.add_argument(
        "--augment-variants",
        type=int,
        default=2,
        help="random flip + colour-jitter variants per object besides the original (default 2)",
    )
    parser.add_argument(
        "--prompt-kinds",
        default="box,points,mask",
        help="prompt kinds drawn during training (box, points, mask)",
    )
    parser.add_argument(
        "--prompt-mixing",
        choices=("batch", "object"),
        default="batch",
        help="draw the prompt kind once per step (batch, default) or per object (object, "
        "HQ-SAM's way: a step mixes kinds)",
    )
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument(
        "--init-heads", help="start from these heads instead of fresh (zero-output) ones"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--train-precision",
        choices=("auto", "f32", "bf16"),
        default="f32",
        help="precision of the heads' training step: f32 (default), bf16 autocast (weights, loss "
        "and optimiser stay f32; about 1.7x faster on CPUs with native bf16, but in the retrain "
        "rule's same-seed check its heads scored lower with point prompts), or auto (bf16 where "
        "the CPU computes it natively, else f32)",
    )
    parser.add_argument(
        "--holdout",
        type=finite_float,
        default=0.0,
        help="fraction of the images (0-0.5) kept out of training and used after it to score "
        "WSI-SAM against SAM (written into the heads' metadata and the model card OUT.md); "
        "with one image, that fraction of its objects (default 0: none)",
    )
    parser.add_argument(
        "--progress-json",
        action="store_true",
        help="print one JSON object per line on stdout for each encoded object, step and epoch "
        '({"stage": "encode"|"step"|"epoch"|"validate"|"done", ...}), for a front end',
    )
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def train_precision(choice: str, device: str) -> str:
    """`auto` is bf16 on a CPU with native bf16, else f32."""
    if choice != "auto":
        return choice
    from engine.backends import cpu_supports_bf16

    return "bf16" if _on_cpu(device) and cpu_supports_bf16() else "f32"


def _on_cpu(device: str) -> bool:
    from engine.device import select_device

    return select_device(device).type == "cpu"


def _terminate_cleanly(_signum: int, _frame: Any) -> None:
    # SIGTERM (a front end's Cancel) unwinds like Ctrl+C, so an atomic write in progress removes
    # its temporary file; the heads file is only ever written whole
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from engine.build import load_wsi_sam
    from engine.train.features import FeatureCache
    from engine.train.holdout import model_card, score_heldout, split_holdout
    from engine.train.trainer import TrainConfig, train_heads

    with contextlib.suppress(ValueError):  # not the main thread (tests calling run())
        signal.signal(signal.SIGTERM, _terminate_cleanly)
    out: Path = args.out
    emit = _emit if args.progress_json else None
    try:
        if not 0.0 <= args.holdout <= 0.5:
            raise ValueError(f"--holdout must be between 0 and 0.5, got {args.holdout}")
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_drop_epoch=args.lr_drop_epoch,
            weight_decay=args.weight_decay,
            lam=args.lam,
            aggregation=args.aggregation,
            augment_variants=args.augment_variants,
            seed=args.seed,
            prompt_kinds=tuple(k.strip() for k in args.prompt_kinds.split(",") if k.strip()),
            prompt_mixing=args.prompt_mixing,
            magnification=args.magnification,
            precision=train_precision(args.train_precision, args.device),
        )
        if args.augment_variants < 0:
            raise ValueError(f"--augment-variants must be >= 0, got {args.augment_variants}")
        state = out.with_name(out.stem + ".state.pt")
        if args.resume and not state.is_file():
            raise DataError(f"--resume: no training state at {state}")
        check_writable_file(out, "--out")  # before the run, not after it
        samples = load_samples(args)
    except (DataError, ValueError, OSError) as exc:
        print(f"wsi-sam train: {exc}", file=sys.stderr)
        return 2
    datasets = sorted({s.dataset for s in samples})
    config.trained_on = ", ".join(datasets)
    holdout = split_holdout(samples, args.holdout)
    samples = holdout.train
    out_stream = sys.stderr if args.progress_json else sys.stdout
    print(
        f"training on {len(samples)} objects from {len({s.source for s in samples})} file(s)",
        file=out_stream,
    )
    if holdout.held:
        print(f"validation: {holdout.describe()}", file=out_stream)
    try:
        model = load_wsi_sam(
            heads=args.init_heads or "none",
            checkpoint=args.checkpoint,
            aggregation=args.aggregation,
            fast_decoders=False,  # training changes the heads: converted decoders would not fit
            **engine_kwargs(args),
        )
    except RuntimeError as exc:  # WeightsError, HeadsError, BackendError
        print(f"wsi-sam train: {exc}", file=sys.stderr)
        return 1
    print(
        f"image encoder: {model.sam.backend_label}; heads trained in {config.precision}",
        file=out_stream,
    )
    model.metadata = {
        "image_magnification": args.image_magnification,
        "adaptive": bool(args.adaptive),
    }
    cache = FeatureCache(args.cache or out.parent / "feature_cache", model)
    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    result = train_heads(
        model,
        samples,
        config,
        cache=cache,
        out=out,
        state_path=state,
        resume=args.resume,
        progress=not (args.quiet or args.progress_json),
        on_progress=emit,
        extra_metadata={"classes": classes} if classes else None,
    )
    if holdout.held:
        if emit is not None:
            emit({"stage": "validate", "objects": len(holdout.held)})
        validation = {"split": holdout.describe(), **score_heldout(model, cache, holdout.held)}
        model.save_heads(out, validation=validation)  # the same heads, with their figures
    command = "wsi-sam train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    model_card(
        out, metadata=model.metadata, holdout=holdout, command=command, classes=classes or None
    )
    per_epoch = (
        sum(result.seconds_per_epoch) / len(result.seconds_per_epoch)
        if result.seconds_per_epoch
        else 0.0
    )
    per_object = per_epoch / len(samples) if samples else 0.0
    print(
        f"encoded {result.encoder_calls} patches in {result.prepare_seconds:.1f} s "
        f"(cache {cache.root}); {result.epochs_run} epoch(s), {per_epoch:.1f} s per epoch "
        f"({per_object:.3f} s per object-epoch)",
        file=out_stream,
    )
    losses = ", ".join(f"{v:.4f}" for v in result.epoch_losses)
    print(f"epoch losses: {losses}", file=out_stream)
    figures: dict[str, Any] | None = model.metadata.get("validation")
    if figures:
        print(f"validation Dice (%): {json.dumps(figures['dice'])}", file=out_stream)
    print(f"heads: {out} (model card {out.with_suffix('.md')})", file=out_stream)
    if emit is not None:
        emit({"stage": "done", "heads": str(out), "validation": figures})
    return 0
