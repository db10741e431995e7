"""Objects by example: per-object features on multi-resolution embeddings, and a classifier.

- :mod:`engine.objects.measurements`: shape and stain measurements in um.
- :mod:`engine.objects.features`: objects grouped by field, the mask-pooled HR embedding, the LR
  context and the measurements of each (:func:`object_features`), cached with the field.
- :mod:`engine.objects.classifier`: :class:`ObjectClassifier` (scikit-learn), trained from
  classified examples, saved as JSON with its training set (never a pickle).
"""

from __future__ import annotations

from engine.objects.classifier import (
    DEFAULT_FEATURE_SET,
    DEFAULT_KIND,
    PROBABILITY_MEASUREMENT,
    ClassifierError,
    ObjectClassifier,
    Prediction,
    check_examples,
    is_ignored,
)
from engine.objects.features import (
    FEATURE_SETS,
    FeaturesCancelledError,
    FeatureSettings,
    ObjectError,
    ObjectFeatures,
    object_features,
)
from engine.objects.measurements import MEASUREMENT_NAMES

__all__ = [
    "DEFAULT_FEATURE_SET",
    "DEFAULT_KIND",
    "FEATURE_SETS",
    "MEASUREMENT_NAMES",
    "PROBABILITY_MEASUREMENT",
    "ClassifierError",
    "FeatureSettings",
    "FeaturesCancelledError",
    "ObjectClassifier",
    "ObjectError",
    "ObjectFeatures",
    "Prediction",
    "check_examples",
    "is_ignored",
    "object_features",
]
