"""``wsi-sam segment SLIDE (--box x0,y0,x1,y1 | --point x,y[,label] ...) --out OUT.geojson``.

``--refine IN.geojson`` and ``--everything --region ...`` work on many objects
(:mod:`app.commands.segment_many`).
"""

from __future__ import annotations

import argparse
import sys
import time

from app.commands import segment_many
from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.errors import UserError, check_writable_file, positive_float


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} must be numbers separated by commas: {text!r}"
        ) from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{what} needs {' or '.join(map(str, count))} numbers")
    from engine.validation import check_coordinates

    try:
        return check_coordinates(values, what)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "--box x0,y0,x1,y1")


def _point(text: str) -> list[float]:
    values = _floats(text, (2, 3), "--point x,y[,label]")
    if len(values) == 3 and values[2] not in (0, 1):
        raise argparse.ArgumentTypeError("a point's label is 1 (positive) or 0 (negative)")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment one object from a box or points, refine annotations (--refine) or "
        "segment everything in a region (--everything); level-0 pixels",
        description="Segment one object and write it as a QuPath GeoJSON annotation; or refine "
        "every annotation of a GeoJSON file (--refine); or segment every object inside a region "
        "(--everything). Objects carry their provenance (model, heads, prompt, field, "
        "predicted IoU) as measurements and metadata.",
    )
    parser.add_argument("slide", help="slide or image file")
    parser.add_argument("--box", type=_box, help="x0,y0,x1,y1 in level-0 pixels")
    parser.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        help="x,y[,label] in level-0 pixels; label 1 positive (default) or 0 negative; repeatable",
    )
    parser.add_argument("--mode", choices=("wsi-sam", "sam"), default="wsi-sam")
    parser.add_argument("--heads", help="WSI-SAM heads checkpoint (default: the shipped heads)")
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument(
        "--magnification", type=positive_float, default=10.0, help="working (HR) magnification"
    )
    parser.add_argument(
        "--fixed-magnification",
        action="store_true",
        help="do not adapt the magnification to the object's size (the paper's protocol)",
    )
    parser.add_argument(
        "--level0-magnification",
        type=positive_float,
        default=40.0,
        help="magnification assumed for level 0 when the file does not say (default 40)",
    )
    parser.add_argument("--class", dest="class_name", help="classification of the annotation")
    parser.add_argument("--name", help="name of the annotation")
    parser.add_argument("--out", required=True, help="output .geojson file")
    segment_many.add_arguments(parser, _box)
    add_engine_arguments(parser, device=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if segment_many.wanted(args):
        return segment_many.run(args)
    if args.box is None and not args.point:
        print("wsi-sam segment: give --box or at least one --point", file=sys.stderr)
        return 2
    from engine.validation import MAX_POINTS

    if len(args.point) > MAX_POINTS:
        raise UserError(f"--point: {len(args.point)} points; at most {MAX_POINTS} per prompt", 2)
    check_writable_file(args.out, "--out", folder_must_exist=True)
    import engine
    from qupath_bridge import Annotation, PathClass, write_geojson

    started = time.perf_counter()
    try:
        slide = engine.open_slide(args.slide)
    except engine.SlideError as exc:
        print(f"wsi-sam segment: {exc}", file=sys.stderr)
        return 1
    note = slide.scale_note(args.level0_magnification)
    if note is not None:
        print(f"wsi-sam segment: note: {note} (--level0-magnification)", file=sys.stderr)
    with slide:
        try:
            model = engine.load_wsi_sam(
                heads=args.heads if args.mode == "wsi-sam" else "none",
                checkpoint=args.checkpoint,
                **engine_kwargs(args),
            )
        except (engine.WeightsError, RuntimeError) as exc:
            print(f"wsi-sam segment: {exc}", file=sys.stderr)
            return 1
        loaded = time.perf_counter()
        predictor = engine.WsiSamPredictor(
            model,
            magnification=args.magnification,
            adaptive=not args.fixed_magnification,
            default_magnification=args.level0_magnification,
        )
        points = [p[:2] for p in args.point] or None
        labels = [int(p[2]) if len(p) == 3 else 1 for p in args.point] or None
        try:
            result = predictor.segment(
                slide, box=args.box, points=points, labels=labels, mode=args.mode
            )
        except engine.PromptError as exc:
            print(f"wsi-sam segment: {exc}", file=sys.stderr)
            return 1
    if result.geometry is None:
        print("wsi-sam segment: the mask is empty; nothing written", file=sys.stderr)
        return 1
    annotation = Annotation(
        geometry=result.geometry,
        path_class=PathClass.from_name(args.class_name) if args.class_name else None,
        name=args.name,
    )
    from app import __version__
    from engine.provenance import Provenance

    kind = (
        "box+points" if args.box is not None and points else "box" if points is None else "points"
    )
    Provenance.create(
        model,
        result.mode,
        kind,
        field=result.field,
        predicted_iou=result.score,
        box=args.box,
        points=points,
        labels=labels,
        app_version=f"WSI-SAM Studio {__version__}",
    ).apply(annotation.measurements, annotation.metadata)
    write_geojson(args.out, [annotation])
    done = time.perf_counter()
    mag = result.field.hr_magnification
    field_text = f"{mag:g}x / {mag / 2:g}x" if mag else f"downsample {result.field.hr_downsample:g}"
    print(
        f"wrote {args.out}: 1 annotation, area {result.geometry.area:.0f} px^2, "
        f"score {result.score:.3f}, mode {result.mode}, field {field_text}"
    )
    print(
        f"time {done - started:.2f} s (model load {loaded - started:.2f} s, "
        f"encode {result.timings.get('encode', 0):.2f} s, decode {result.timings['decode']:.2f} s; "
        f"{model.sam.backend_label})"
    )
    return 0
