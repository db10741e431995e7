"""``wsi-sam eval-instances``: how well "find every object" works on annotated data.

Runs an instance decoder (``--decoder``) and/or SAM's point grid (``--grid``) over each image
(label maps: the whole image; slides / a project: each completely annotated area) and scores the
objects against the truth: GlaS F1 and object Dice / Hausdorff, AJI, PQ, F1 at IoU 0.5, mSA.
Writes ``results.csv``, ``results.md`` and one picture per image and method (predictions in red
over the truth in green) into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.commands.eval import DataError, add_data_arguments
from app.errors import UserError, check_writable_dir, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-instances",
        help="score an instance decoder and/or the point grid on annotated images",
        description="Find every object in annotated images with an instance decoder "
        "(--decoder) and/or the point grid (--grid), and score them: GlaS F1, object Dice and "
        "Hausdorff, AJI, PQ, F1 at IoU 0.5, mSA. Writes results.csv, results.md and pictures.",
    )
    add_data_arguments(parser)
    parser.set_defaults(magnification=None)
    parser.add_argument(
        "--decoder",
        action="append",
        default=[],
        help="instance decoder (name from 'wsi-sam heads list' or a .pt file); repeatable",
    )
    parser.add_argument("--grid", action="store_true", help="also the point grid")
    parser.add_argument(
        "--points-per-side", type=positive_int, default=16, help="grid points per field side"
    )
    parser.add_argument(
        "--mode",
        choices=("wsi-sam", "sam"),
        default="wsi-sam",
        help="grid mode (and the refinement's)",
    )
    parser.add_argument(
        "--refine-instances",
        choices=("auto", "on", "off"),
        default="auto",
        help="refine each decoder object with WSI-SAM (auto: as the decoder recommends)",
    )
    parser.add_argument(
        "--region-class",
        default="Region*",
        help="slides / project: class of the completely annotated areas (default 'Region*')",
    )
    parser.add_argument("--heads", help="WSI-SAM heads for the grid (default: the shipped ones)")
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument("--out", type=Path, default=Path("eval_instances"), help="output folder")
    parser.add_argument("--no-pictures", action="store_true", help="no pictures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.decoder and not args.grid:
        raise UserError("give --decoder NAME and/or --grid", 2)
    check_writable_dir(args.out, "--out")
    import numpy as np

    import engine
    from app.commands.segment_many import load_decoder
    from engine.everything import EverythingSettings, segment_everything
    from engine.instances.evaluate import evaluate_methods, write_instance_reports
    from engine.instances.refine import field_refiner, refinement_wanted
    from engine.instances.segment import segment_instances

    try:
        model = engine.load_wsi_sam(
            heads=args.heads if args.mode == "wsi-sam" else "none",
            checkpoint=args.checkpoint,
            **engine_kwargs(args),
        )
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    decoders = [load_decoder(name, model, project=args.project) for name in args.decoder]
    grid_magnification = args.magnification or (decoders[0].magnification if decoders else 10.0)
    try:
        cases = _cases(args)
    except DataError as exc:
        raise UserError(str(exc)) from None
    methods: dict[str, Any] = {}
    for decoder in decoders:

        def run_decoder(case: Any, d: Any = decoder) -> list[Any]:
            refine = field_refiner(
                model,
                d,
                case.slide,
                args.image_magnification,
                mode=args.mode,
                choice=args.refine_instances,
            )
            result = segment_instances(
                model.sam,
                d,
                case.slide,
                case.region,
                default_magnification=args.image_magnification,
                refine=refine,
            )
            return [o.geometry for o in result.objects]

        refined = refinement_wanted(decoder, args.refine_instances)
        methods[f"decoder {decoder.name}" + (" + WSI-SAM refinement" if refined else "")] = (
            run_decoder
        )
    if args.grid:
        predictor = engine.WsiSamPredictor(
            model,
            magnification=grid_magnification,
            default_magnification=args.image_magnification,
        )
        settings = EverythingSettings(points_per_side=args.points_per_side)

        def run_grid(case: Any) -> list[Any]:
            result = segment_everything(predictor, case.slide, case.region, args.mode, settings)
            return [o.geometry for o in result.objects]

        methods[
            f"grid {args.points_per_side}x{args.points_per_side} {args.mode} "
            f"{grid_magnification:g}x"
        ] = run_grid
    progress = None
    if not args.quiet:

        def progress(name: str, done: int, total: int) -> None:
            print(f"{name}: {done}/{total}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = evaluate_methods(
        cases,
        methods,
        pictures=None if args.no_pictures else args.out / "pictures",
        progress=progress,
    )
    for case in cases:
        case.close()
    notes = [
        f"{len(cases)} image(s) or areas; {sum(int(np.max(c.truth) > 0) for c in cases)} with "
        f"objects; encoder {model.sam.backend_label}; {time.perf_counter() - started:.0f} s",
        "GlaS F1: a prediction counts when it covers more than half of a truth object; F1 @ IoU "
        "0.5: one-to-one matches; object Dice / Hausdorff, AJI, PQ, mSA averaged per image",
    ]
    for decoder in decoders:
        notes.append(
            f"decoder {decoder.name}: {decoder.path} (sha256 {decoder.sha256}), "
            f"{decoder.magnification:g}x"
        )
    csv_path, md_path = write_instance_reports(results, args.out, notes)
    print(md_path.read_text(encoding="utf-8"))
    print(f"results: {csv_path}, {md_path}")
    return 0


class EvalCase:
    """One scored area: an open slide, the area (level-0), the truth as a label map of the
    area's bounding box at ``scale`` level-0 pixels per pixel."""

    def __init__(
        self,
        name: str,
        slide: Any,
        region: Any,
        truth: Any,
        origin: tuple[float, float],
        scale: float,
    ) -> None:
        self.name = name
        self.slide = slide
        self.region = region
        self.truth = truth
        self.origin = origin
        self.scale = scale

    def close(self) -> None:
        self.slide.close()


def _cases(args: argparse.Namespace) -> list[EvalCase]:
    from shapely.geometry import box as shapely_box

    import engine
    from app.commands.eval import pair_images_and_masks
    from app.commands.train_instances import load_fields
    from engine.train.readers import read_label_image

    cases = []
    if args.images:
        if not args.masks:
            raise DataError("--images needs --masks DIR (instance label maps)")
        for image, mask in pair_images_and_masks(args.images, args.masks):
            slide = engine.open_slide(image)
            if slide.magnification is None:
                slide.set_scale(magnification=args.image_magnification)
            truth = read_label_image(mask)
            height, width = truth.shape
            cases.append(
                EvalCase(
                    image.name, slide, shapely_box(0, 0, width, height), truth, (0.0, 0.0), 1.0
                )
            )
        return cases
    from engine.instances.evaluate import draw_labels, to_area_pixels

    fields, _ = load_fields(args, args.magnification or 20.0)
    by_image: dict[Path, list[Any]] = {}
    for item in fields:
        by_image.setdefault(item.source, []).append(item)
    for source, items in by_image.items():
        complete = items[0].complete
        objects = {id(g): g for item in items for g in item.objects}.values()
        slide = engine.open_slide(source)
        for index, area in enumerate(getattr(complete, "geoms", [complete])):
            x0, y0, x1, y1 = area.bounds
            scale = items[0].field.hr_downsample
            shape = (int((y1 - y0) / scale) + 1, int((x1 - x0) / scale) + 1)
            inside = [g.intersection(area) for g in objects if g.intersects(area)]
            truth = draw_labels(to_area_pixels(inside, (x0, y0), scale), shape)
            cases.append(EvalCase(f"{source.name}#{index}", slide, area, truth, (x0, y0), scale))
    return cases
