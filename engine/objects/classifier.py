"""Objects by example: a classifier trained from a few classified objects, saved without pickle.

:class:`ObjectClassifier` learns classes from object features (:mod:`engine.objects.features`)
of the objects a user classified, and predicts a class and its probability for every other
object. A class whose name ends in ``*`` (QuPath's ``Ignore*``) means "not an object": such
objects may be dropped (:func:`is_ignored`).

The model is scikit-learn's (:data:`KINDS`): a random forest with balanced class weights, or a
standardised logistic regression; :data:`DEFAULT_KIND` is the one chosen by cross-validation on
the GlaS training images (``scripts/eval_objects_by_example.py``, its ``RULE.md``).

Saved as JSON (:meth:`ObjectClassifier.to_json`): the model's kind and settings, the feature set
and feature settings, the encoder it was trained with, the classes and their colours, and the
training set itself (features as base64 float32 with their sha256, labels). Loading validates
every field and refits: nothing in the file is ever executed, so a file from a colleague cannot
run code. A pickle, a joblib or skops archive, a foreign or damaged file is refused with a
message that says which and why (:class:`ClassifierError`); :mod:`pickle` is never imported.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine._files import atomic_write_bytes
from engine.objects.features import FEATURE_SETS, FeatureSettings, feature_dimensions

__all__ = [
    "DEFAULT_FEATURE_SET",
    "DEFAULT_KIND",
    "FORMAT",
    "KINDS",
    "PROBABILITY_MEASUREMENT",
    "ClassifierError",
    "ObjectClassifier",
    "Prediction",
    "check_examples",
    "is_ignored",
]

#: the "format" of a saved classifier, and the version this code writes and reads
FORMAT = "wsi-sam-object-classifier"
VERSION = 1
#: the measurement that carries the predicted class's probability
PROBABILITY_MEASUREMENT = "Classifier: probability"
#: model kinds and their settings (name -> (type, lowest, highest) of the allowed values)
KINDS: dict[str, dict[str, tuple[type, float, float]]] = {
    "random_forest": {
        "n_estimators": (int, 1, 2000),
        "min_samples_leaf": (int, 1, 1000),
        "random_state": (int, 0, 2**31 - 1),
    },
    "logistic": {"C": (float, 1e-6, 1e6)},
}
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 200, "min_samples_leaf": 1, "random_state": 0},
    "logistic": {"C": 0.1},
}
#: chosen by cross-validation on the GlaS training images (see the module's docstring)
DEFAULT_KIND = "random_forest"
DEFAULT_FEATURE_SET = "hr+lr+measurements"
# a saved classifier larger than this is refused before it is read (a few thousand examples
# of 519 features take a few MB)
MAX_FILE_BYTES = 256 * 2**20


class ClassifierError(ValueError):
    """A classifier that cannot be trained, loaded or applied; the message says why."""


def is_ignored(class_name: str | None) -> bool:
    """Whether a class means "not an object" (QuPath's convention: the name ends in ``*``)."""
    return class_name is not None and class_name.endswith("*")


def check_examples(labels: Sequence[str]) -> dict[str, int]:
    """Examples per class; a :class:`ClassifierError` when they cannot train a classifier
    (none, or all of one class)."""
    counts: dict[str, int] = {}
    for label in labels:
        if not isinstance(label, str) or not label:
            raise ClassifierError(f"an example's class must be a non-empty name, got {label!r}")
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        raise ClassifierError(
            "no examples: classify at least one object of each of two classes (an Ignore* class "
            "for what is not an object counts as one)"
        )
    if len(counts) == 1:
        ((only, number),) = counts.items()
        raise ClassifierError(
            f"examples of one class only ({only!r}, {number} object{'s' * (number != 1)}): "
            "classify at least one object of another class too (e.g. Ignore* for what is not "
            "an object)"
        )
    return counts


@dataclass
class Prediction:
    """Predicted classes of N objects.

    Attributes:
        classes: (N,) the predicted class names (object array of str).
        probability: (N,) float64, the probability of the predicted class.
        probabilities: (N, K) float64, of each of the classifier's K classes.
    """

    classes: NDArray[np.object_]
    probability: NDArray[np.float64]
    probabilities: NDArray[np.float64]

    def ignored(self) -> NDArray[np.bool_]:
        """(N,) whether each object is predicted a class ending in ``*`` (not an object)."""
        return np.array([is_ignored(c) for c in self.classes], dtype=bool)


def _model(kind: str, params: Mapping[str, Any]) -> Any:
    """A fresh scikit-learn estimator of ``kind``."""
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=int(params["n_estimators"]),
            min_samples_leaf=int(params["min_samples_leaf"]),
            max_features="sqrt",
            class_weight="balanced",
            random_state=int(params["random_state"]),
            n_jobs=1,
        )
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(),
            LogisticRegression(C=float(params["C"]), class_weight="balanced", max_iter=5000),
        )
    raise ClassifierError(f"unknown classifier kind {kind!r}; known: {', '.join(KINDS)}")


def _checked_params(kind: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    if kind not in KINDS:
        raise ClassifierError(f"unknown classifier kind {kind!r}; known: {', '.join(KINDS)}")
    out = dict(DEFAULT_PARAMS[kind])
    for name, value in (params or {}).items():
        if name not in KINDS[kind]:
            raise ClassifierError(
                f"{kind} has no setting {name!r}; it has {', '.join(KINDS[kind])}"
            )
        kind_type, low, high = KINDS[kind][name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClassifierError(f"{kind} setting {name} must be a number, got {value!r}")
        if kind_type is int and float(value) != int(value):
            raise ClassifierError(f"{kind} setting {name} must be a whole number, got {value!r}")
        if not (math.isfinite(float(value)) and low <= value <= high):
            raise ClassifierError(
                f"{kind} setting {name} must be in [{low:g}, {high:g}], got {value}"
            )
        out[name] = kind_type(value)
    return out


@dataclass
class ObjectClassifier:
    """A fitted object classifier and everything needed to apply it again.

    Build one with :meth:`train` or :meth:`load`; the fields are its saved content.

    Attributes:
        kind, params: the scikit-learn model (:data:`KINDS`) and its settings.
        feature_set: which features it reads (:data:`~engine.objects.features.FEATURE_SETS`).
        settings: how the features are computed (magnification, context radius).
        encoder_sha256: the image encoder's checkpoint the features came from ("" unknown).
        classes: the class names, sorted.
        colors: class name -> (r, g, b), for display (optional).
        x: (N, D) float32 training features; labels: N class names.
        name, created: a label and the time it was trained (ISO 8601).
    """

    kind: str
    params: dict[str, Any]
    feature_set: str
    settings: FeatureSettings
    encoder_sha256: str
    classes: list[str]
    x: NDArray[np.float32]
    labels: list[str]
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    name: str = ""
    created: str = ""
    _model: Any = field(default=None, repr=False)

    # --- training and prediction ------------------------------------------------------------

    @classmethod
    def train(
        cls,
        x: NDArray[np.floating[Any]],
        labels: Sequence[str],
        *,
        feature_set: str = DEFAULT_FEATURE_SET,
        settings: FeatureSettings | None = None,
        encoder_sha256: str = "",
        kind: str = DEFAULT_KIND,
        params: Mapping[str, Any] | None = None,
        colors: Mapping[str, tuple[int, int, int]] | None = None,
        name: str = "",
    ) -> ObjectClassifier:
        """Fit on (N, D) features ``x`` (``ObjectFeatures.matrix(feature_set)``) of the examples
        and their N class names.

        Raises:
            ClassifierError: no examples, examples of one class only, or features that do not
                match ``feature_set``.
        """
        check_examples(labels)
        if feature_set not in FEATURE_SETS:
            raise ClassifierError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")
        matrix = np.asarray(x, dtype=np.float32)
        width = feature_dimensions(feature_set)
        if matrix.ndim != 2 or matrix.shape != (len(labels), width):
            raise ClassifierError(
                f"features of shape {matrix.shape} for {len(labels)} examples; the feature set "
                f"{feature_set} has {width} columns"
            )
        if not np.isfinite(matrix).all():
            raise ClassifierError("the examples' features contain NaN or infinite values")
        made = cls(
            kind=kind,
            params=_checked_params(kind, params),
            feature_set=feature_set,
            settings=settings or FeatureSettings(),
            encoder_sha256=encoder_sha256,
            classes=sorted(set(labels)),
            x=np.ascontiguousarray(matrix),
            labels=[str(label) for label in labels],
            colors={k: _rgb(v, k) for k, v in (colors or {}).items() if k in set(labels)},
            name=name,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        made._fit()
        return made

    def _fit(self) -> None:
        model = _model(self.kind, self.params)
        model.fit(self.x, np.asarray(self.labels, dtype=object))
        self._model = model

    def predict(self, x: NDArray[np.floating[Any]]) -> Prediction:
        """Class and probability of each of N objects from their (N, D) features."""
        matrix = np.asarray(x, dtype=np.float32)
        width = feature_dimensions(self.feature_set)
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise ClassifierError(
                f"features of shape {matrix.shape}; this classifier reads {width} columns "
                f"({self.feature_set})"
            )
        if matrix.shape[0] == 0:
            empty = np.zeros(0)
            return Prediction(np.array([], dtype=object), empty, np.zeros((0, len(self.classes))))
        if self._model is None:
            self._fit()
        probabilities = np.asarray(self._model.predict_proba(matrix), dtype=np.float64)
        known = [str(c) for c in self._model.classes_]
        best = probabilities.argmax(axis=1)
        names = np.array(known, dtype=object)
        return Prediction(names[best], probabilities[np.arange(len(best)), best], probabilities)

    def check_encoder(self, encoder_sha256: str) -> None:
        """Refuse features from another image encoder than the one it was trained with."""
        if self.encoder_sha256 and encoder_sha256 and self.encoder_sha256 != encoder_sha256:
            raise ClassifierError(
                f"this classifier was trained on features of another image encoder "
                f"(sha256 {self.encoder_sha256[:12]}..., this one {encoder_sha256[:12]}...): "
                "train it again with this encoder"
            )

    def examples_per_class(self) -> dict[str, int]:
        return {c: self.labels.count(c) for c in self.classes}

    # --- saving and loading -------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The classifier as UTF-8 JSON (the training set included; see the module docstring)."""
        raw = np.ascontiguousarray(self.x, dtype="<f4").tobytes()
        content = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "created": self.created,
            "model": {"kind": self.kind, "params": self.params},
            "feature_set": self.feature_set,
            "features": {
                "magnification": self.settings.magnification,
                "context_cells": self.settings.context_cells,
                "tile_overlap": self.settings.tile_overlap,
                "margin": self.settings.margin,
                "encoder_sha256": self.encoder_sha256,
                "dimensions": feature_dimensions(self.feature_set),
            },
            "classes": self.classes,
            "colors": {k: list(v) for k, v in self.colors.items()},
            "training": {
                "labels": self.labels,
                "x": {
                    "dtype": "<f4",
                    "shape": list(self.x.shape),
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "base64": base64.b64encode(raw).decode("ascii"),
                },
            },
        }
        return (json.dumps(content, indent=1) + "\n").encode("utf-8")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` atomically (a failed write leaves an older file as it was)."""
        atomic_write_bytes(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ObjectClassifier:
        """Read, validate and refit a saved classifier; a :class:`ClassifierError` names the
        file and says what is wrong with it."""
        source = Path(path)
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise ClassifierError(f"{source}: no such classifier file") from None
        if size > MAX_FILE_BYTES:
            raise ClassifierError(
                f"{source}: {size / 2**20:.0f} MB is too large for a classifier file"
            )
        return cls.from_json(source.read_bytes(), str(source))

    @classmethod
    def from_json(cls, data: bytes, source: str = "classifier") -> ObjectClassifier:
        """The classifier in ``data`` (as written by :meth:`to_json`), validated and refitted."""
        content = _parse(data, source)
        try:
            made = _from_content(content)
        except ClassifierError as exc:
            raise ClassifierError(f"{source}: {exc}") from None
        try:
            made._fit()
        except ValueError as exc:  # scikit-learn refusing the training set
            raise ClassifierError(f"{source}: its training set cannot be fitted: {exc}") from None
        return made


def _rgb(value: Any, name: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        raise ClassifierError(f"the colour of {name!r} must be three integers 0-255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _parse(data: bytes, source: str) -> dict[str, Any]:
    """The JSON object in ``data``; pickles, archives and other files are refused unread."""
    head = bytes(data[:4])
    if head[:1] == b"\x80" or (head[:1] in (b"(", b"c") and bytes(data[-1:]) == b"."):
        raise ClassifierError(
            f"{source} is a Python pickle (a joblib or pickle dump): loading it could run any "
            "code, so WSI-SAM Studio never does; save the classifier from WSI-SAM Studio (JSON)"
        )
    if head == b"PK\x03\x04":
        raise ClassifierError(
            f"{source} is a zip archive (a skops or other model file), not a WSI-SAM Studio "
            "classifier (JSON); it was not opened"
        )
    if head[:2] in (b"\x1f\x8b", b"\x78\x9c", b"\x78\x01", b"\x78\xda") or head[:3] == b"BZh":
        raise ClassifierError(
            f"{source} is compressed (a joblib dump?), not a WSI-SAM Studio classifier (JSON); "
            "it was not opened"
        )
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ClassifierError(
            f"{source} is not a WSI-SAM Studio classifier: not text (JSON)"
        ) from None
    if not text.lstrip().startswith("{"):
        raise ClassifierError(f"{source} is not a WSI-SAM Studio classifier: not a JSON object")
    try:
        content = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ClassifierError(f"{source} is damaged: not valid JSON ({exc})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ClassifierError(
            f'{source} is not a WSI-SAM Studio classifier (its "format" is not {FORMAT!r})'
        )
    return content


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _get(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ClassifierError(f"{where}: {key!r} is missing")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ClassifierError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _from_content(content: dict[str, Any]) -> ObjectClassifier:
    version = _get(content, "version", int, "the file")
    if version > VERSION:
        raise ClassifierError(
            f"made by a newer WSI-SAM Studio (format version {version}, this one reads "
            f"{VERSION}): update WSI-SAM Studio"
        )
    if version < 1:
        raise ClassifierError(f"unknown format version {version}")
    model = _get(content, "model", dict, "the file")
    kind = _get(model, "kind", str, "model")
    params = _checked_params(kind, _get(model, "params", dict, "model"))
    feature_set = _get(content, "feature_set", str, "the file")
    if feature_set not in FEATURE_SETS:
        raise ClassifierError(f"unknown feature set {feature_set!r}")
    features = _get(content, "features", dict, "the file")
    magnification = features.get("magnification")
    if magnification is not None and (
        isinstance(magnification, bool) or not isinstance(magnification, int | float)
    ):
        raise ClassifierError("features: 'magnification' must be a number or null")
    try:
        settings = FeatureSettings(
            magnification=None if magnification is None else float(magnification),
            context_cells=float(_get(features, "context_cells", (int, float), "features")),
            tile_overlap=float(_get(features, "tile_overlap", (int, float), "features")),
            margin=int(_get(features, "margin", int, "features")),
        )
    except ValueError as exc:
        raise ClassifierError(f"features: {exc}") from None
    encoder = _get(features, "encoder_sha256", str, "features")
    width = feature_dimensions(feature_set)
    if _get(features, "dimensions", int, "features") != width:
        raise ClassifierError(
            f"features: {feature_set} has {width} dimensions, not {features['dimensions']}"
        )
    classes = _get(content, "classes", list, "the file")
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ClassifierError("classes must be distinct non-empty names")
    training = _get(content, "training", dict, "the file")
    labels = _get(training, "labels", list, "training")
    if not all(isinstance(label, str) for label in labels):
        raise ClassifierError("training: every label must be a class name")
    check_examples(labels)
    if sorted(set(labels)) != sorted(classes):
        raise ClassifierError("training: the labels do not match the classes")
    matrix = _get(training, "x", dict, "training")
    if _get(matrix, "dtype", str, "training x") != "<f4":
        raise ClassifierError("training x: dtype must be '<f4'")
    shape = _get(matrix, "shape", list, "training x")
    if shape != [len(labels), width]:
        raise ClassifierError(
            f"training x: shape {shape} does not match {len(labels)} labels x {width} features"
        )
    try:
        raw = base64.b64decode(_get(matrix, "base64", str, "training x"), validate=True)
    except ValueError:
        raise ClassifierError("training x is damaged: not valid base64") from None
    if len(raw) != len(labels) * width * 4:
        raise ClassifierError("training x is damaged: wrong length")
    if hashlib.sha256(raw).hexdigest() != _get(matrix, "sha256", str, "training x"):
        raise ClassifierError("training x is damaged: its sha256 does not match")
    x = np.frombuffer(raw, dtype="<f4").reshape(len(labels), width).astype(np.float32)
    if not np.isfinite(x).all():
        raise ClassifierError("training x contains NaN or infinite values")
    colors_in = content.get("colors", {})
    if not isinstance(colors_in, dict):
        raise ClassifierError("'colors' must map class names to [r, g, b]")
    colors = {str(k): _rgb(v, str(k)) for k, v in colors_in.items()}
    name = content.get("name", "")
    created = content.get("created", "")
    return ObjectClassifier(
        kind=kind,
        params=params,
        feature_set=feature_set,
        settings=settings,
        encoder_sha256=encoder,
        classes=list(classes),
        x=x,
        labels=list(labels),
        colors=colors,
        name=name if isinstance(name, str) else "",
        created=created if isinstance(created, str) else "",
    )
