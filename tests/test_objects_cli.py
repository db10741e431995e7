"""``wsi-sam classify`` end to end on a small GlaS-like image, its clear errors, and ``wsi-sam
batch --classifier`` (the worker's side, in this process)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from shapely.geometry import Point
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide

from app import batch_io
from app.cli import main
from engine.batch import EngineSettings, Work, run_job
from engine.objects.classifier import PROBABILITY_MEASUREMENT, ObjectClassifier
from qupath_bridge import Annotation, PathClass, read_geojson, write_geojson

# one field at 20x (0.5 um/px): 1024 x 1000 pixels
GLANDS: list[Gland] = [
    (200.0, 200.0, 110.0, 80.0),
    (520.0, 560.0, 90.0, 100.0),
    (820.0, 220.0, 120.0, 90.0),
    (830.0, 820.0, 100.0, 80.0),
]
STROMA = [Point(x, y).buffer(50) for x, y in [(500, 150), (200, 800), (130, 500), (900, 520)]]
GLAND = PathClass.from_name("Gland", (20, 160, 60))
IGNORE = PathClass.from_name("Ignore*")
ENGINE = ["--magnification", "20", "--level0-magnification", "20"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slide, its objects (detections: glands then stroma) and the examples."""
    folder = Path(tmp_path_factory.mktemp("classify"))
    write_gland_slide(folder / "glands.tif", 1024, 1000, GLANDS)
    objects = [
        Annotation(gland_polygon(g), object_type="detection", name=f"gland {i}")
        for i, g in enumerate(GLANDS)
    ] + [Annotation(s, object_type="detection", name=f"stroma {i}") for i, s in enumerate(STROMA)]
    write_geojson(folder / "objects.geojson", objects)
    # examples: gland 0 by its id, gland 1 by its outline (another id), stroma 0 and 1
    examples = [
        Annotation(objects[0].geometry, path_class=GLAND, id=objects[0].id),
        Annotation(objects[1].geometry, path_class=GLAND),
        Annotation(objects[4].geometry, path_class=IGNORE, id=objects[4].id),
        Annotation(objects[5].geometry, path_class=IGNORE),
        Annotation(Point(10, 10).buffer(5)),  # unclassified: not used
    ]
    write_geojson(folder / "examples.geojson", examples)
    return folder


@pytest.fixture(scope="module")
def classified(data: Path) -> Path:
    status = main(
        [
            "classify",
            str(data / "glands.tif"),
            "--objects",
            str(data / "objects.geojson"),
            "--examples",
            str(data / "examples.geojson"),
            "--out",
            str(data / "out.geojson"),
            "--save-classifier",
            str(data / "glands.json"),
            *ENGINE,
        ]
    )
    assert status == 0
    return data / "out.geojson"


def test_classify_gives_every_object_a_class_and_a_probability(
    data: Path, classified: Path
) -> None:
    objects = read_geojson(data / "objects.geojson")
    out = read_geojson(classified)
    assert [o.id for o in out] == [o.id for o in objects]  # every object, in order, same ids
    assert all(o.object_type == "detection" for o in out)
    assert [o.class_name for o in out] == ["Gland"] * 4 + ["Ignore*"] * 4
    assert out[2].path_class is not None and out[2].path_class.color == (20, 160, 60)
    for index, obj in enumerate(out):
        probability = obj.measurements[PROBABILITY_MEASUREMENT]
        if index in (0, 1, 4, 5):  # the examples keep the class given
            assert probability == 1.0
        else:
            assert 0.5 < probability <= 1.0
    saved = ObjectClassifier.load(data / "glands.json")
    assert saved.examples_per_class() == {"Gland": 2, "Ignore*": 2}
    assert saved.settings.magnification == 20.0 and saved.feature_set == "hr+lr+measurements"


def test_a_saved_classifier_keeps_only_the_objects(
    data: Path, classified: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kept.geojson"
    args = ["classify", str(data / "glands.tif"), "--objects", str(data / "objects.geojson")]
    status = main(
        [*args, "--classifier", str(data / "glands.json"), "--drop-ignored", "--out", str(out)]
    )
    assert status == 0, capsys.readouterr().err
    kept = read_geojson(out)
    assert [o.name for o in kept] == [f"gland {i}" for i in range(4)]
    assert "4 dropped as not objects" in capsys.readouterr().out


def test_examples_of_one_class_or_none_give_a_clear_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["classify", str(data / "glands.tif"), "--objects", str(data / "objects.geojson")]
    out = ["--out", str(tmp_path / "out.geojson")]
    one = tmp_path / "one.geojson"
    write_geojson(one, [Annotation(gland_polygon(GLANDS[0]), path_class=GLAND)])
    assert main([*args, "--examples", str(one), *out]) == 1
    err = capsys.readouterr().err
    assert "examples of one class only ('Gland', 1 object)" in err and str(one) in err
    none = tmp_path / "none.geojson"
    write_geojson(none, [Annotation(gland_polygon(GLANDS[0]))])
    assert main([*args, "--examples", str(none), *out]) == 1
    assert "no examples" in capsys.readouterr().err
    assert main([*args, *out]) == 2
    assert "give --examples" in capsys.readouterr().err
    assert not (tmp_path / "out.geojson").exists()


def test_objects_outside_the_slide_are_refused_by_name(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects.geojson"
    write_geojson(
        objects,
        [
            Annotation(STROMA[2], name="inside"),
            Annotation(shapely_box(5000, 5000, 5100, 5100), name="from another slide"),
        ],
    )
    status = main(
        [
            "classify",
            str(data / "glands.tif"),
            "--objects",
            str(objects),
            "--examples",
            str(data / "examples.geojson"),
            "--out",
            str(tmp_path / "out.geojson"),
            *ENGINE,
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "1 object lies outside the slide (1024 x 1000 pixels): from another slide" in err


def test_a_pickled_classifier_is_refused_before_anything_runs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "classifier.json"
    evil.write_bytes(pickle.dumps({"kind": "random_forest"}))
    args = ["--objects", str(data / "objects.geojson"), "--classifier", str(evil)]
    status = main(["classify", str(data / "glands.tif"), *args, "--out", str(tmp_path / "o")])
    assert status == 1
    assert "is a Python pickle" in capsys.readouterr().err
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copyfile(data / "glands.tif", folder / "glands.tif")
    batch = ["batch", str(folder), "--out", str(tmp_path / "b"), "--refine"]
    assert main([*batch, "--classifier", str(evil)]) == 1
    assert "is a Python pickle" in capsys.readouterr().err
    assert main([*batch, "--drop-ignored"]) == 2


def test_batch_classifies_the_objects_it_made(data: Path, classified: Path, tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copyfile(data / "glands.tif", folder / "glands.tif")
    # refine rough outlines of two glands and two pieces of stroma
    rough = [
        Annotation(gland_polygon(GLANDS[2]).buffer(10), name="g2", path_class=GLAND),
        Annotation(gland_polygon(GLANDS[3]).buffer(10), name="g3"),
        Annotation(STROMA[2], name="s2"),
        Annotation(STROMA[3], name="s3"),
    ]
    write_geojson(folder / "glands.geojson", rough)
    settings = EngineSettings(mode="sam", magnification=20.0, default_magnification=20.0)
    path = str(data / "glands.json")
    sha = __import__("hashlib").sha256(Path(path).read_bytes()).hexdigest()
    for drop in (False, True):
        out = tmp_path / f"out-{drop}"
        work = Work("refine", classifier=path, classifier_sha256=sha, drop_ignored=drop)
        found = batch_io.find_inputs(folder)
        (job,) = batch_io.make_jobs(found, out, settings, work, batch_io.BatchIO())
        outcome = run_job(job)
        assert outcome.status == "done", outcome.error
        made = {a.name: a for a in read_geojson(out / "glands.geojson")}
        assert made["g2"].class_name == "Gland" and made["g3"].class_name == "Gland"
        assert made["g2"].measurements[PROBABILITY_MEASUREMENT] > 0.5
        if drop:
            assert set(made) == {"g2", "g3"}
            assert "classified Ignore* (dropped)" in outcome.note
        else:
            assert {made["s2"].class_name, made["s3"].class_name} == {"Ignore*"}
    stale = Work("refine", classifier=path, classifier_sha256="0" * 64)
    (job,) = batch_io.make_jobs(
        batch_io.find_inputs(folder), tmp_path / "stale", settings, stale, batch_io.BatchIO()
    )
    outcome = run_job(job)
    assert outcome.status == "failed" and "changed since the batch started" in outcome.error
