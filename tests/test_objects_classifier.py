"""The object classifier: clear errors for unusable examples, a JSON round trip, and pickles,
archives, foreign and damaged files refused without being unpickled."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.objects.classifier import (
    PROBABILITY_MEASUREMENT,
    ClassifierError,
    ObjectClassifier,
    check_examples,
    is_ignored,
)
from engine.objects.features import FeatureSettings


def _data(seed: int = 0, per_class: int = 4) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    glands = rng.normal(2.0, 1.0, (per_class, 7))
    other = rng.normal(-2.0, 1.0, (per_class, 7))
    return np.concatenate([glands, other]).astype(np.float32), ["Gland"] * per_class + [
        "Ignore*"
    ] * per_class


@pytest.mark.parametrize("kind", ["random_forest", "logistic"])
def test_a_few_examples_classify_the_other_objects(kind: str) -> None:
    x, labels = _data()
    classifier = ObjectClassifier.train(x, labels, feature_set="measurements", kind=kind)
    test, truth = _data(seed=1, per_class=50)
    predicted = classifier.predict(test)
    assert (predicted.classes == np.array(truth, dtype=object)).mean() > 0.9
    assert predicted.probabilities.shape == (100, 2)
    np.testing.assert_allclose(predicted.probabilities.sum(axis=1), 1.0)
    assert (predicted.ignored() == (predicted.classes == "Ignore*")).all()
    assert PROBABILITY_MEASUREMENT == "Classifier: probability"


def test_examples_of_one_class_or_none_give_a_clear_error() -> None:
    with pytest.raises(ClassifierError, match="no examples"):
        check_examples([])
    x, _ = _data()
    with pytest.raises(ClassifierError, match=r"one class only \('Gland', 8 objects\)"):
        ObjectClassifier.train(x, ["Gland"] * 8, feature_set="measurements")
    with pytest.raises(ClassifierError, match="no examples"):
        ObjectClassifier.train(x[:0], [], feature_set="measurements")
    with pytest.raises(ClassifierError, match="columns"):
        ObjectClassifier.train(x, ["A", "B"] * 4, feature_set="hr+measurements")
    assert is_ignored("Ignore*") and is_ignored("Region*") and not is_ignored("Tumor")
    assert not is_ignored(None)


def test_a_saved_classifier_round_trips(tmp_path: Path) -> None:
    x, labels = _data()
    settings = FeatureSettings(magnification=20.0, context_cells=2.0)
    classifier = ObjectClassifier.train(
        x,
        labels,
        feature_set="measurements",
        settings=settings,
        encoder_sha256="ab" * 32,
        colors={"Gland": (200, 0, 0)},
        name="glands",
    )
    path = tmp_path / "wsi-sam" / "classifiers" / "glands.json"
    classifier.save(path)
    loaded = ObjectClassifier.load(path)
    assert loaded.settings == settings
    assert (loaded.kind, loaded.params, loaded.feature_set) == (
        classifier.kind,
        classifier.params,
        "measurements",
    )
    assert loaded.classes == ["Gland", "Ignore*"] and loaded.labels == labels
    assert loaded.colors == {"Gland": (200, 0, 0)} and loaded.name == "glands"
    np.testing.assert_array_equal(loaded.x, x)
    test, _ = _data(seed=2, per_class=20)
    np.testing.assert_allclose(
        loaded.predict(test).probabilities, classifier.predict(test).probabilities
    )
    loaded.check_encoder("ab" * 32)
    with pytest.raises(ClassifierError, match="another image encoder"):
        loaded.check_encoder("cd" * 32)


class _Trap:
    """Unpickling this would create the marker file (what a malicious pickle could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickled_or_joblib_classifier_is_refused_without_being_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "code-ran"
    x, labels = _data()
    trained = ObjectClassifier.train(x, labels, feature_set="measurements")

    def _never(*args: object, **kwargs: object) -> None:
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", _never)
    monkeypatch.setattr(pickle, "load", _never)
    monkeypatch.setattr(pickle, "Unpickler", _never)
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.json"
        path.write_bytes(pickle.dumps([_Trap(marker), trained._model], protocol=protocol))
        with pytest.raises(ClassifierError, match="pickle"):
            ObjectClassifier.load(path)
    import joblib

    for compress in (0, 3):
        path = tmp_path / f"model{compress}.joblib"
        joblib.dump(_Trap(marker), path, compress=compress)
        with pytest.raises(ClassifierError, match=r"pickle|compressed"):
            ObjectClassifier.load(path)
    assert not marker.exists()


def test_foreign_and_damaged_files_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    x, labels = _data()
    good = json.loads(ObjectClassifier.train(x, labels, feature_set="measurements").to_json())

    def refused(content: bytes, match: str) -> None:
        path = tmp_path / "c.json"
        path.write_bytes(content)
        with pytest.raises(ClassifierError, match=match) as caught:
            ObjectClassifier.load(path)
        assert str(path) in str(caught.value)

    archive = tmp_path / "model.skops"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("schema.json", "{}")
    refused(archive.read_bytes(), "zip archive")
    refused(b'{"type": "FeatureCollection", "features": []}', "not a WSI-SAM Studio classifier")
    refused(b"\x00\x01binary", "not text|not a JSON")
    refused(json.dumps(good).encode()[:-40], "damaged: not valid JSON")
    damaged = json.loads(json.dumps(good))
    data = bytearray(base64.b64decode(damaged["training"]["x"]["base64"]))
    data[5] ^= 0xFF
    damaged["training"]["x"]["base64"] = base64.b64encode(bytes(data)).decode()
    refused(json.dumps(damaged).encode(), "sha256 does not match")
    newer = dict(good, version=99)
    refused(json.dumps(newer).encode(), "newer WSI-SAM Studio")
    odd = json.loads(json.dumps(good))
    odd["model"] = {"kind": "exec", "params": {}}
    refused(json.dumps(odd).encode(), "unknown classifier kind 'exec'")
    odd["model"] = {"kind": "random_forest", "params": {"n_estimators": 10**9}}
    refused(json.dumps(odd).encode(), "n_estimators must be in")
    single = json.loads(json.dumps(good))
    single["training"]["labels"] = ["Gland"] * len(labels)
    single["classes"] = ["Gland"]
    refused(json.dumps(single).encode(), "one class only")
    with pytest.raises(ClassifierError, match="no such classifier file"):
        ObjectClassifier.load(tmp_path / "missing.json")
