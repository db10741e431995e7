"""``wsi-sam segment SLIDE --refine IN.geojson`` and ``--everything --region ...``.

The many-object modes of ``segment``: refine every annotation of a GeoJSON file in place (ids,
classes, names and other properties kept), or segment everything inside a region. Both show a
progress bar (tqdm, on stderr) and write each object with its provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from app.errors import UserError, check_writable_file, finite_float, positive_int

PROG = "wsi-sam segment"


def _area(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser, box_type: Any) -> None:
    """The options of the two many-object modes, in their own group."""
    group = parser.add_argument_group("many objects")
    group.add_argument(
        "--refine",
        metavar="IN.geojson",
        help="refine every annotation of this GeoJSON file (box + its own mask as the prompt); "
        "ids, classes and names are kept",
    )
    group.add_argument(
        "--everything",
        action="store_true",
        help="segment every object inside --region / --region-geojson",
    )
    group.add_argument("--region", type=box_type, help="x0,y0,x1,y1 in level-0 pixels")
    group.add_argument(
        "--region-geojson",
        metavar="R.geojson",
        help="regions: every polygon annotation of this file (objects become its children)",
    )
    group.add_argument(
        "--min-area",
        type=_area,
        default=0.0,
        help="smallest object, um^2 (px^2 when the slide has no pixel size); default 0",
    )
    group.add_argument("--max-area", type=_area, help="largest object, um^2 (px^2); default none")
    group.add_argument(
        "--points-per-side",
        type=positive_int,
        default=16,
        help="point grid per field (N x N prompts); default 16",
    )
    group.add_argument(
        "--pred-iou-thresh",
        type=finite_float,
        default=0.8,
        help="keep masks with predicted IoU >= this (default 0.8)",
    )
    group.add_argument(
        "--stability-thresh",
        type=finite_float,
        default=0.9,
        help="keep masks with stability score >= this (default 0.9)",
    )
    group.add_argument(
        "--detections",
        action="store_true",
        help="write segment-everything objects as detections instead of annotations",
    )
    group.add_argument(
        "--instances",
        metavar="NAME",
        help="segment everything with this instance decoder (glands, nuclei, a name from "
        "'wsi-sam heads list' or a .pt file); it works at its own magnification",
    )
    group.add_argument(
        "--refine-instances",
        choices=("auto", "on", "off"),
        default="auto",
        help="refine each decoder object with WSI-SAM (its box and mask as the prompt): on, "
        "off, or auto (default): as the decoder's card recommends (cross-validated)",
    )
    group.add_argument(
        "--everything-method",
        choices=("auto", "instances", "grid"),
        default="auto",
        help="instances: the decoder of --instances; grid: SAM's point grid (zero-shot, any "
        "object); auto (default): the decoder when --instances is given, else the grid",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for one of the many-object modes."""
    return bool(args.refine or args.everything)


def run(args: argparse.Namespace) -> int:
    if args.refine and args.everything:
        raise UserError("give --refine or --everything, not both", 2)
    if args.box is not None or args.point:
        raise UserError(
            "--box / --point prompt one object; leave them out with --refine or --everything", 2
        )
    if args.everything and args.region is None and not args.region_geojson:
        raise UserError("--everything needs --region x0,y0,x1,y1 or --region-geojson FILE", 2)
    if args.refine and (args.region is not None or args.region_geojson):
        raise UserError("--region / --region-geojson go with --everything, not --refine", 2)
    if args.max_area is not None and args.max_area < args.min_area:
        raise UserError("--max-area must be at least --min-area", 2)
    if args.everything_method == "instances" and not args.instances:
        raise UserError("--everything-method instances needs --instances NAME", 2)
    if args.instances and not args.everything:
        raise UserError("--instances goes with --everything", 2)
    check_writable_file(args.out, "--out", folder_must_exist=True)

    from qupath_bridge import read_geojson

    inputs = (
        read_geojson(args.refine or args.region_geojson)
        if (args.refine or args.region_geojson)
        else []
    )

    import engine
    from app.commands.engine_options import engine_kwargs

    started = time.perf_counter()
    slide = engine.open_slide(args.slide)
    note = slide.scale_note(args.level0_magnification)
    if note is not None:
        print(f"{PROG}: note: {note} (--level0-magnification)", file=sys.stderr)
    with slide:
        model = engine.load_wsi_sam(
            heads=args.heads if args.mode == "wsi-sam" else "none",
            checkpoint=args.checkpoint,
            **engine_kwargs(args),
        )
        predictor = engine.WsiSamPredictor(
            model,
            magnification=args.magnification,
            adaptive=not args.fixed_magnification,
            default_magnification=args.level0_magnification,
        )
        if args.refine:
            return _refine(args, slide, predictor, inputs, started)
        decoder = None
        if args.instances and args.everything_method != "grid":
            decoder = load_decoder(args.instances, model)
        return _everything(args, slide, predictor, inputs, started, decoder)


def load_decoder(name: str, model: Any, project: Any = None) -> Any:
    """The instance decoder ``name`` (catalogue name or file) for ``model``'s encoder, or a
    UserError that says why not."""
    from engine.heads_catalogue import resolve_decoder
    from engine.instances.checkpoint import DecoderError, read_decoder
    from engine.wsi_sam import HeadsError

    try:
        path = resolve_decoder(name, project=project)
        return read_decoder(path, encoder_sha256=model.sam.checkpoint_info.sha256)
    except (DecoderError, HeadsError) as exc:
        raise UserError(f"--instances: {exc}") from None


def _bar(total: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def _refine(
    args: argparse.Namespace, slide: Any, predictor: Any, objects: list[Any], started: float
) -> int:
    import dataclasses

    from app import __version__
    from engine.provenance import Provenance
    from engine.refine import refine_many
    from qupath_bridge import write_geojson

    targets = [i for i, o in enumerate(objects) if o.object_type == "annotation"]
    polygonal = [i for i in targets if o_area(objects[i]) > 0]
    if not polygonal:
        raise UserError(f"{args.refine}: no annotation with an area to refine")
    with _bar(len(polygonal), "object") as bar:
        results = refine_many(
            predictor,
            slide,
            [objects[i].geometry for i in polygonal],
            args.mode,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    out = list(objects)
    refined = 0
    for index, result in zip(polygonal, results, strict=True):
        original = objects[index]
        if not result.refined:
            label = original.name or original.id
            print(f"{PROG}: {label}: {result.message}", file=sys.stderr)
            continue
        measurements, metadata = dict(original.measurements), dict(original.metadata)
        x0, y0, x1, y1 = original.geometry.bounds
        Provenance.create(
            predictor.model,
            args.mode,
            "refine",
            field=result.field,
            predicted_iou=result.score,
            box=(x0, y0, x1, y1),
            app_version=f"WSI-SAM Studio {__version__}",
        ).apply(measurements, metadata)
        out[index] = dataclasses.replace(
            original, geometry=result.geometry, measurements=measurements, metadata=metadata
        )
        refined += 1
    write_geojson(args.out, out)
    print(
        f"wrote {args.out}: {refined} of {len(polygonal)} annotations refined "
        f"({len(out) - len(polygonal)} other objects unchanged), mode {args.mode}, "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def o_area(annotation: Any) -> float:
    geometry = annotation.geometry
    return 0.0 if geometry is None or geometry.is_empty else float(geometry.area)


def _everything(
    args: argparse.Namespace,
    slide: Any,
    predictor: Any,
    regions: list[Any],
    started: float,
    decoder: Any = None,
) -> int:
    from shapely.geometry import box as shapely_box

    from engine.cleanup import area_unit
    from engine.everything import EverythingSettings, drop_duplicates
    from qupath_bridge import Annotation, PathClass, write_geojson

    settings = EverythingSettings(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        min_area=args.min_area,
        max_area=args.max_area,
    )
    targets: list[tuple[Any, str | None]] = []
    if args.region is not None:
        targets.append((shapely_box(*args.region), None))
    for region in regions:
        if o_area(region) > 0:
            targets.append((region.geometry, region.id))
    if not targets:
        raise UserError(f"{args.region_geojson}: no polygon to use as a region")
    path_class = PathClass.from_name(args.class_name) if args.class_name else None
    object_type = "detection" if args.detections else "annotation"
    found_objects: list[tuple[Any, str | None]] = []
    fields = 0
    for geometry, parent_id in targets:
        if decoder is not None:
            result = _run_region_instances(args, predictor, decoder, slide, geometry)
        else:
            result = _run_region(predictor, slide, geometry, args.mode, settings)
        fields += len(result.fields)
        found_objects.extend((found, parent_id) for found in result.objects)
    # overlapping regions see some objects twice: each object is written once
    kept = drop_duplicates([found for found, _ in found_objects])
    out: list[Any] = []
    for index in kept:
        found, parent_id = found_objects[index]
        provenance = (
            _decoder_provenance_fields(decoder, found, getattr(args, "refined_with", None))
            if decoder is not None
            else _provenance_fields(predictor.model, args.mode, found)
        )
        out.append(
            Annotation(
                geometry=found.geometry,
                object_type=object_type,
                path_class=path_class,
                parent_id=parent_id,
                **provenance,
            )
        )
    write_geojson(args.out, out)
    elapsed = time.perf_counter() - started
    if decoder is not None:
        low = decoder.min_area_um2 if args.min_area == 0 else args.min_area
        high = decoder.max_area_um2 if args.max_area is None else args.max_area
        method = f"decoder {decoder.name} at {decoder.magnification:g}x"
    else:
        low, high = args.min_area, args.max_area
        method = f"point grid, mode {args.mode}"
    limits = f"area >= {low:g}" + (f", <= {high:g}" if high is not None else "")
    print(
        f"wrote {args.out}: {len(out)} {object_type}s from {fields} fields "
        f"({limits} {area_unit(slide.mpp)}), {method}, {elapsed:.1f} s"
    )
    return 0


def _run_region_instances(
    args: argparse.Namespace, predictor: Any, decoder: Any, slide: Any, geometry: Any
) -> Any:
    from engine.everything import tile_fields
    from engine.instances.segment import InstanceSettings, segment_instances

    settings = InstanceSettings(
        min_area=args.min_area if args.min_area > 0 else None, max_area=args.max_area
    )
    total = len(
        tile_fields(
            slide,
            geometry,
            decoder.magnification,
            settings.tile_overlap,
            args.level0_magnification,
        )
    )
    from engine.instances.refine import field_refiner

    refine = field_refiner(
        predictor.model,
        decoder,
        slide,
        args.level0_magnification,
        mode=args.mode,
        choice=args.refine_instances,
    )
    if refine is not None:
        from engine.provenance import heads_identity

        args.refined_with = heads_identity(predictor.model, args.mode)[0]

    with _bar(total, "field") as bar:
        return segment_instances(
            predictor.model.sam,
            decoder,
            slide,
            geometry,
            settings,
            default_magnification=args.level0_magnification,
            progress=lambda done, _total: bar.update(done - bar.n),
            refine=refine,
        )


def _decoder_provenance_fields(
    decoder: Any, found: Any, refined_with: str | None = None
) -> dict[str, Any]:
    from app import __version__
    from engine.provenance import Provenance

    measurements: dict[str, float] = {}
    metadata: dict[str, str] = {}
    Provenance.from_decoder(
        decoder.name,
        decoder.sha256 or "",
        field=found.field,
        score=found.score,
        refined_with=refined_with,
        app_version=f"WSI-SAM Studio {__version__}",
    ).apply(measurements, metadata)
    return {"measurements": measurements, "metadata": metadata}


def _run_region(predictor: Any, slide: Any, geometry: Any, mode: str, settings: Any) -> Any:
    from engine.everything import segment_everything, tile_fields

    magnification = settings.magnification or predictor.magnification
    total = len(
        tile_fields(
            slide, geometry, magnification, settings.tile_overlap, predictor.default_magnification
        )
    )
    with _bar(total, "field") as bar:
        return segment_everything(
            predictor,
            slide,
            geometry,
            mode,
            settings,
            progress=lambda done, _total: bar.update(done - bar.n),
        )


def _provenance_fields(model: Any, mode: str, found: Any) -> dict[str, Any]:
    from app import __version__
    from engine.provenance import Provenance

    measurements: dict[str, float] = {}
    metadata: dict[str, str] = {}
    Provenance.create(
        model,
        mode,
        "everything",
        field=found.field,
        predicted_iou=found.score,
        points=[found.point],
        stability=found.stability,
        app_version=f"WSI-SAM Studio {__version__}",
    ).apply(measurements, metadata)
    return {"measurements": measurements, "metadata": metadata}
