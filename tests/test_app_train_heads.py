"""Tools > Train heads from this project, end to end: a tiny project on the sample slide, the real
``wsi-sam train`` in a separate process (1 epoch, no augmentation), the heads and their model card
in the project's wsi-sam/heads/, selectable in Model > Heads and remembered for the project; Cancel
leaves no heads file, whole or half-written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from test_app_support import data_dir, make_window, wait_ready  # noqa: F401 (fixture)

import qupath_bridge
from app.controllers.heads import PLAIN_SAM, TrainRequest
from app.session.settings import heads_choice
from engine.heads_catalogue import build_catalogue, project_heads_dir

DEMO = (
    Path(__file__).parent / "data" / "qupath" / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
)

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.fixture
def project(tmp_path: Path, sample_slide: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real demo project (QuPath 0.6) with its image pointed at the sample slide: its four
    "circles" annotations are the training objects."""
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    qupath_bridge.relink_images(qupath_bridge.open_project(folder), {"1": sample_slide})
    monkeypatch.setenv("WSI_SAM_HEADS_DIR", str(tmp_path / "user-heads"))
    return folder


def _window(qtbot: Any, project: Path, tmp_path: Path) -> Any:
    window = make_window(qtbot)
    assert window.open_path(project), window.prompter.errors
    wait_ready(qtbot, window)
    window.heads.feature_cache = tmp_path / "features"
    return window


def _menu_entries(window: Any) -> dict[str, Any]:
    window.heads.refresh()
    return {a.text().replace("&", ""): a for a in window.heads.menu.actions() if a.text()}


def test_train_from_project_then_switch_to_the_new_heads(qtbot, project, tmp_path) -> None:
    window = _window(qtbot, project, tmp_path)
    try:
        controller = window.heads
        counts = controller.project_classes()
        assert counts["circles"] == 4
        asked: list[str] = []
        controller.ask_train = lambda classes, name: TrainRequest(
            classes=["circles"], name="circles", epochs=1, holdout=0.25, augment_variants=0
        )
        controller.ask_switch = lambda name, summary: asked.append(summary) or True
        with qtbot.waitSignal(controller.trainingFinished, timeout=600_000) as finished:
            assert controller.train_from_project()
        heads_path, summary = finished.args
        out = project_heads_dir(project) / "circles.pt"
        assert heads_path == str(out), summary
        assert controller.last_progress.get("stage") == "done"
        card = out.with_suffix(".md").read_text()
        assert "Classes: circles" in card and "| SAM |" in card and "| WSI-SAM |" in card
        entry = build_catalogue(project=project).find("circles")
        assert entry is not None and entry.place == "project"
        assert entry.metadata["classes"] == ["circles"]
        assert entry.figures["n_objects"] == 1 and set(entry.figures["dice"]) == {"WSI-SAM", "SAM"}
        # selectable: in Model > Heads with its figures, chosen after the offer, remembered
        assert asked and "Dice %" in asked[0]
        entries = _menu_entries(window)
        assert "circles (project)" in entries and "Plain SAM (no heads)" in entries
        assert "trained on" in entries["circles (project)"].toolTip()
        assert entries["circles (project)"].isChecked()
        assert controller.current == str(out)
        assert heads_choice(str(window.project.path)) == str(out)
        assert window.mode_combo.currentData() == "wsi-sam"
        entries["Plain SAM (no heads)"].trigger()
        assert window.mode_combo.currentData() == "sam"
        assert heads_choice(str(window.project.path)) == PLAIN_SAM
    finally:
        window.close()


def test_cancel_leaves_no_heads_file(qtbot, project, tmp_path) -> None:
    window = _window(qtbot, project, tmp_path)
    try:
        controller = window.heads
        controller.ask_train = lambda classes, name: TrainRequest(
            classes=["circles"], name="long", epochs=200, holdout=0.0, augment_variants=0
        )
        controller.ask_switch = lambda name, summary: pytest.fail("nothing to switch to")
        assert controller.train_from_project()
        qtbot.waitUntil(lambda: controller.last_progress.get("stage") == "step", timeout=600_000)
        with qtbot.waitSignal(controller.trainingFinished, timeout=60_000) as finished:
            controller.cancel()
        assert finished.args[0] == "" and "cancelled" in finished.args[1]
        folder = project_heads_dir(project)
        assert not (folder / "long.pt").exists()
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert build_catalogue(project=project).find("long") is None
        assert "long (project)" not in _menu_entries(window)
    finally:
        window.close()
