"""Classify > Objects by example in the app, with the real MobileSAM: clicked examples give the
other objects (annotations and the project's detection layer) their classes live, Apply is one
undo step, Keep only removes the Ignore* ones, a classifier is saved and loaded (a pickle is
refused)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from shapely.geometry import Point
from synthetic_glands import Gland, gland_polygon, write_gland_slide
from test_app_support import click, data_dir, make_window, wait_ready  # noqa: F401 (a fixture)

import qupath_bridge
from engine.objects.classifier import PROBABILITY_MEASUREMENT
from engine.wsi_predictor import WsiSamPredictor

GLANDS: list[Gland] = [
    (200.0, 200.0, 110.0, 80.0),
    (520.0, 560.0, 90.0, 100.0),
    (820.0, 220.0, 120.0, 90.0),
    (830.0, 820.0, 100.0, 80.0),
]
STROMA = [Point(x, y).buffer(50) for x, y in [(500, 150), (200, 800), (130, 500), (900, 520)]]


def _detection(geometry, name: str):  # type: ignore[no-untyped-def]
    return qupath_bridge.Annotation(geometry=geometry, object_type="detection", name=name)


@pytest.fixture
def window(qtbot, data_dir, tmp_path: Path, fresh_wsi_sam):  # type: ignore[no-untyped-def]  # noqa: F811
    path = tmp_path / "glands.tif"
    write_gland_slide(path, 1024, 1000, GLANDS)
    win = make_window(qtbot, WsiSamPredictor(fresh_wsi_sam))
    assert win.open_path(path), win.prompter.errors
    wait_ready(qtbot, win)
    win.jobs.show_dialog = False
    # glands 0, 1 and stroma 0, 1 in the list; glands 2, 3 and stroma 2, 3 in the project layer
    for i in (0, 1):
        win.store.add(_detection(gland_polygon(GLANDS[i]), f"gland {i}"))
        win.store.add(_detection(STROMA[i], f"stroma {i}"))
    win.project_objects.set_objects(
        [_detection(gland_polygon(GLANDS[i]), f"gland {i}") for i in (2, 3)]
        + [_detection(STROMA[i], f"stroma {i}") for i in (2, 3)]
    )
    win.view.fit_to_window()
    yield win
    win.close()


def _by_name(window) -> dict[str, object]:  # type: ignore[no-untyped-def]
    objects = list(window.store) + window.project_objects.objects()
    return {o.name: o for o in objects}


def _ready(qtbot, window):  # type: ignore[no-untyped-def]
    controller = window.objects_by_example
    controller.open()
    qtbot.waitUntil(
        lambda: not controller.missing() and not window.jobs.is_running(), timeout=120_000
    )
    return controller


def _predicted(controller) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    return {obj.name: controller.final_class(key)[0] for key, _s, obj in controller.targets()}


def _teach(qtbot, window):  # type: ignore[no-untyped-def]
    """Click glands 0, 1 as Tumor and stroma 0, 1 as Ignore*."""
    controller = _ready(qtbot, window)
    assert window.prompts.tool() == "pan"
    window.classes.set_current("Tumor")
    for gland in GLANDS[:2]:
        click(qtbot, window, gland[0], gland[1])
    assert set(controller.examples.values()) == {"Tumor"}
    assert controller.classifier is None and not controller.predicted  # one class: no guess
    window.classes.set_current("Ignore*")
    for piece in STROMA[:2]:
        click(qtbot, window, piece.centroid.x, piece.centroid.y)
    return controller


def test_examples_give_the_other_objects_their_classes_live(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    controller = _teach(qtbot, window)
    assert len(controller.examples) == 4
    predicted = _predicted(controller)
    assert [predicted[f"gland {i}"] for i in (2, 3)] == ["Tumor", "Tumor"]
    assert [predicted[f"stroma {i}"] for i in (2, 3)] == ["Ignore*", "Ignore*"]
    layer = controller.layer()
    assert layer is not None and len(layer) == 8 and layer.isVisible()
    # a right-click removes an example: one class left, no predictions
    click(qtbot, window, STROMA[0].centroid.x, STROMA[0].centroid.y, qtbot_right_button())
    click(qtbot, window, STROMA[1].centroid.x, STROMA[1].centroid.y, qtbot_right_button())
    assert controller.classifier is None
    assert "at least two classes" in controller.dock.status_label.text()


def qtbot_right_button():  # type: ignore[no-untyped-def]
    from PySide6.QtCore import Qt

    return Qt.MouseButton.RightButton


def test_apply_is_one_undo_step_and_keep_only_removes_the_ignored(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    controller = _teach(qtbot, window)
    steps = window.undo_stack.count()
    assert controller.apply()
    assert window.undo_stack.count() == steps + 1
    objects = _by_name(window)
    for i in range(4):
        assert objects[f"gland {i}"].class_name == "Tumor"
        assert objects[f"stroma {i}"].class_name == "Ignore*"
    assert objects["gland 3"].measurements[PROBABILITY_MEASUREMENT] > 0.5  # layer: predicted
    assert objects["gland 0"].measurements[PROBABILITY_MEASUREMENT] == 1.0  # list: an example
    window.undo_stack.undo()
    objects = _by_name(window)
    assert all(o.class_name is None for o in objects.values())
    assert all(PROBABILITY_MEASUREMENT not in o.measurements for o in objects.values())

    assert controller.keep_only()
    assert window.undo_stack.count() == steps + 1  # the undone Apply was replaced
    assert sorted(_by_name(window)) == [f"gland {i}" for i in range(4)]
    window.undo_stack.undo()
    assert len(_by_name(window)) == 8


def test_a_classifier_is_saved_and_loaded_and_a_pickle_is_refused(qtbot, window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    controller = _teach(qtbot, window)
    window.prompter.texts = ["my glands"]
    assert controller.ask_save()
    saved = Path(window.slide_path).parent / "wsi-sam" / "classifiers" / "my-glands.json"
    assert saved.is_file() and controller.saved_classifiers() == [saved]
    controller.clear_examples()
    assert controller.classifier is None
    assert controller.load(saved)
    assert controller.classifier is not None  # the loaded examples alone classify
    assert _predicted(controller)["gland 3"] == "Tumor"
    evil = tmp_path / "evil.json"
    evil.write_bytes(pickle.dumps({"a": 1}))
    assert not controller.load(evil)
    title, text = window.prompter.errors[-1]
    assert title == "Cannot use this classifier" and "pickle" in text
