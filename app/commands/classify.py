"""``wsi-sam classify SLIDE --objects OBJECTS.geojson --examples EXAMPLES.geojson --out OUT``.

Objects by example: the classified objects of EXAMPLES teach a classifier (:mod:`engine.objects`)
that gives every object of OBJECTS a class and a probability (measurement ``Classifier:
probability``); an object that is also an example (same id, or the same outline) keeps the class
given. ``--drop-ignored`` leaves out the objects whose class ends in ``*`` (``Ignore*``: not an
object). ``--classifier FILE`` applies a saved classifier (examples, when given too, are added to
its training set); ``--save-classifier FILE`` writes the one used.

The helpers here (examples from annotations, class colours, the classified copy of an object)
are shared with the app's Classify > Objects by example.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.commands.engine_options import add_engine_arguments, engine_kwargs
from app.errors import UserError, check_writable_file, positive_float

PROG = "wsi-sam classify"
MODEL_CHOICES = {"random-forest": "random_forest", "logistic": "logistic"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="classify objects by example: a few classified objects teach the class of the rest",
        description="Give every object of --objects a class and a probability (measurement "
        "'Classifier: probability'), learnt from the classified objects of --examples (or a "
        "saved --classifier) on their SAM embedding at the working magnification, their "
        "surroundings at half of it and their measurements. A class ending in '*' (Ignore*) "
        "means 'not an object': --drop-ignored leaves those out.",
    )
    parser.add_argument("slide", help="slide or image file the objects are on")
    parser.add_argument(
        "--objects", required=True, metavar="OBJECTS.geojson", help="the objects to classify"
    )
    parser.add_argument(
        "--examples",
        metavar="EXAMPLES.geojson",
        help="classified objects to learn from (at least two classes); may be the objects file",
    )
    parser.add_argument("--out", required=True, help="output .geojson file")
    parser.add_argument(
        "--drop-ignored",
        action="store_true",
        help="leave out the objects classified as a class ending in '*' (Ignore*)",
    )
    parser.add_argument("--classifier", metavar="FILE", help="a saved classifier (.json) to apply")
    parser.add_argument(
        "--save-classifier", metavar="FILE", help="write the classifier used (.json)"
    )
    parser.add_argument(
        "--features",
        choices=("measurements", "hr+measurements", "hr+lr+measurements"),
        help="what a new classifier learns from (default hr+lr+measurements: the HR embedding, "
        "the LR context and the measurements)",
    )
    parser.add_argument(
        "--model",
        choices=tuple(MODEL_CHOICES),
        help="a new classifier's model (default: the one chosen by cross-validation)",
    )
    parser.add_argument("--checkpoint", help="MobileSAM checkpoint (default: the packaged one)")
    parser.add_argument(
        "--magnification",
        type=positive_float,
        default=10.0,
        help="working (HR) magnification of the features (default 10; a saved classifier "
        "uses its own)",
    )
    parser.add_argument(
        "--level0-magnification",
        type=positive_float,
        default=40.0,
        help="magnification assumed for level 0 when the file does not say (default 40)",
    )
    add_engine_arguments(parser, device=True)
    parser.set_defaults(func=run)


# --- shared with the app ------------------------------------------------------------------------


def object_label(annotation: Any) -> str:
    """How messages name an object: its name, else its id."""
    return str(annotation.name or annotation.id)


def outline_key(geometry: Any) -> bytes:
    """The same outline gives the same key (vertex order and start normalised)."""
    import shapely

    return bytes(shapely.to_wkb(shapely.normalize(geometry)))


def class_colors(annotations: Sequence[Any]) -> dict[str, tuple[int, int, int]]:
    """Class name -> colour, from the objects' own classes and QuPath's default classes."""
    from qupath_bridge import DEFAULT_PATH_CLASSES

    colors = {c.name: c.color for c in DEFAULT_PATH_CLASSES if c.color is not None}
    for annotation in annotations:
        path_class = annotation.path_class
        if path_class is not None and path_class.color is not None:
            colors[path_class.name] = tuple(path_class.color)
    return colors


def classified_copy(
    annotation: Any,
    class_name: str,
    probability: float,
    colors: dict[str, tuple[int, int, int]],
) -> Any:
    """``annotation`` with the class and the probability measurement (a new object, same id)."""
    from engine.objects.classifier import PROBABILITY_MEASUREMENT
    from qupath_bridge import PathClass

    measurements = dict(annotation.measurements)
    measurements[PROBABILITY_MEASUREMENT] = float(probability)
    path_class = PathClass.from_name(class_name, colors.get(class_name))
    return dataclasses.replace(annotation, path_class=path_class, measurements=measurements)


def polygonal(annotation: Any) -> bool:
    geometry = annotation.geometry
    return (
        geometry is not None
        and not geometry.is_empty
        and geometry.geom_type in ("Polygon", "MultiPolygon")
        and geometry.area > 0
    )


# --- the command --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if not args.examples and not args.classifier:
        raise UserError("give --examples FILE (classified objects) or a saved --classifier", 2)
    if args.classifier and (args.features or args.model):
        raise UserError("--features / --model describe a new classifier, not a saved one", 2)
    check_writable_file(args.out, "--out", folder_must_exist=True)
    if args.save_classifier:
        check_writable_file(args.save_classifier, "--save-classifier")
    from engine.objects.classifier import (
        DEFAULT_FEATURE_SET,
        DEFAULT_KIND,
        ClassifierError,
        ObjectClassifier,
        check_examples,
    )
    from qupath_bridge import read_geojson, write_geojson

    started = time.perf_counter()
    objects = read_geojson(args.objects)
    if not objects:
        raise UserError(f"--objects {args.objects}: no objects")
    flat = [object_label(o) for o in objects if not polygonal(o)]
    if flat:
        shown = ", ".join(flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
        raise UserError(
            f"--objects {args.objects}: {len(flat)} objects without an area (points or lines) "
            f"cannot be classified: {shown}"
        )
    examples = []
    skipped = 0
    if args.examples:
        for example in read_geojson(args.examples):
            if example.path_class is None or not polygonal(example):
                skipped += 1
            else:
                examples.append(example)
    loaded = None
    if args.classifier:
        try:
            loaded = ObjectClassifier.load(args.classifier)
        except ClassifierError as exc:
            raise UserError(f"--classifier: {exc}") from None
    labels = [str(e.class_name) for e in examples]
    if loaded is None or examples:
        try:
            check_examples(labels + (loaded.labels if loaded is not None else []))
        except ClassifierError as exc:
            where = f"--examples {args.examples}" if args.examples else "--classifier"
            raise UserError(f"{where}: {exc}") from None

    import engine
    from engine.objects.features import FeatureSettings, object_features

    slide = engine.open_slide(args.slide)
    note = slide.scale_note(args.level0_magnification)
    if note is not None:
        print(f"{PROG}: note: {note} (--level0-magnification)", file=sys.stderr)
    with slide:
        model = engine.load_wsi_sam(
            heads="none", checkpoint=args.checkpoint, fast_decoders=False, **engine_kwargs(args)
        )
        encoder_sha256 = model.sam.checkpoint_info.sha256
        if loaded is not None:
            try:
                loaded.check_encoder(encoder_sha256)
            except ClassifierError as exc:
                raise UserError(f"--classifier {args.classifier}: {exc}") from None
            settings = loaded.settings
            feature_set = loaded.feature_set
        else:
            settings = FeatureSettings(magnification=args.magnification)
            feature_set = args.features or DEFAULT_FEATURE_SET
        predictor = engine.WsiSamPredictor(
            model,
            magnification=settings.magnification or args.magnification,
            default_magnification=args.level0_magnification,
        )
        settings = dataclasses.replace(settings, magnification=predictor.magnification)
        # examples that are objects too are computed once
        by_id = {o.id: i for i, o in enumerate(objects)}
        by_outline = {outline_key(o.geometry): i for i, o in enumerate(objects)}
        example_of: dict[int, int] = {}  # object row -> example
        row_of_example: list[int] = []  # example -> row in ``everything``
        extra: list[Any] = []
        for e_index, example in enumerate(examples):
            match = by_id.get(example.id)
            if match is None:
                match = by_outline.get(outline_key(example.geometry))
            if match is not None:
                example_of[match] = e_index
                row_of_example.append(match)
            else:
                row_of_example.append(len(objects) + len(extra))
                extra.append(example)
        everything = objects + extra
        context = "lr" in feature_set.split("+")
        with _bar(1, "field") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            features = object_features(
                predictor,
                slide,
                [o.geometry for o in everything],
                settings,
                context=context,
                names=[object_label(o) for o in everything],
                progress=progress,
            )
    matrix = features.matrix(feature_set)
    if examples:
        import numpy as np

        kind = DEFAULT_KIND

        x = matrix[row_of_example]
        train_labels = list(labels)
        if loaded is not None:
            x = np.concatenate([loaded.x, x])
            train_labels = loaded.labels + train_labels
        colors = {**(loaded.colors if loaded is not None else {}), **class_colors(examples)}
        try:
            classifier = ObjectClassifier.train(
                x,
                train_labels,
                feature_set=feature_set,
                settings=settings,
                encoder_sha256=encoder_sha256,
                kind=loaded.kind if loaded is not None else MODEL_CHOICES.get(args.model, kind),
                params=loaded.params if loaded is not None else None,
                colors={k: v for k, v in colors.items() if k in set(train_labels)},
                name=Path(args.save_classifier).stem if args.save_classifier else "",
            )
        except ClassifierError as exc:
            raise UserError(f"{PROG}: {exc}") from None
    else:
        assert loaded is not None
        classifier = loaded
    predicted = classifier.predict(matrix[: len(objects)])
    colors = {**class_colors(objects), **classifier.colors, **class_colors(examples)}
    out = []
    dropped = 0
    counts: Counter[str] = Counter()
    from engine.objects.classifier import is_ignored

    for index, annotation in enumerate(objects):
        if index in example_of:
            class_name, probability = labels[example_of[index]], 1.0
        else:
            class_name = str(predicted.classes[index])
            probability = float(predicted.probability[index])
        counts[class_name] += 1
        if args.drop_ignored and is_ignored(class_name):
            dropped += 1
            continue
        out.append(classified_copy(annotation, class_name, probability, colors))
    if args.save_classifier:
        classifier.save(args.save_classifier)
    write_geojson(args.out, out)
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    learnt = classifier.examples_per_class()
    print(
        f"wrote {args.out}: {len(out)} objects ({summary}"
        + (f"; {dropped} dropped as not objects" if dropped else "")
        + f"); {classifier.kind.replace('_', ' ')} on {classifier.feature_set} from "
        f"{sum(learnt.values())} examples of {len(learnt)} classes; features "
        f"{features.timings.get('total', 0):.1f} s on {len(features.fields)} fields, "
        f"{elapsed:.1f} s in all"
        + (f"; saved {args.save_classifier}" if args.save_classifier else "")
    )
    if skipped:
        print(
            f"{PROG}: note: {skipped} unclassified objects (or without an area) of --examples "
            "were not used",
            file=sys.stderr,
        )
    return 0


def _bar(total: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
