"""Automatic segmentation in the app: Segment everything with an instance decoder (the real
MobileSAM, a decoder file written here), the method in the dialog and in Model > Automatic
segmentation, a decoder for another encoder refused in one message, and Tools > Train automatic
segmentation running the real ``wsi-sam train-instances`` on the demo project (1 epoch, 1
symmetry), with Cancel and Resume."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, write_gland_slide
from test_app_support import data_dir, make_window, wait_ready  # noqa: F401 (a fixture)

import qupath_bridge
from app.controllers.train_instances import InstancesRequest, state_file
from app.dialogs.cleanup_settings import (
    GRID,
    EverythingDialog,
    saved_everything,
    saved_everything_method,
)
from engine.everything import EverythingSettings
from engine.heads_catalogue import build_catalogue, project_heads_dir
from engine.instances.checkpoint import InstanceModel, read_decoder, write_decoder
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.wsi_predictor import WsiSamPredictor

DEMO = (
    Path(__file__).parent / "data" / "qupath" / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
)
GLANDS: list[Gland] = [(300.0, 300.0, 110.0, 80.0), (650.0, 450.0, 80.0, 100.0)]

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.fixture
def heads_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-heads"
    folder.mkdir()
    monkeypatch.setenv("WSI_SAM_HEADS_DIR", str(folder))
    # the shipped decoders are left out here, so that the lists are the test's own
    empty = tmp_path / "no-shipped-decoders"
    empty.mkdir()
    monkeypatch.setattr("engine.instances.checkpoint.shipped_decoders_dir", lambda: empty)
    return folder


def write_test_decoder(path: Path, encoder_sha256: str) -> Path:
    """A decoder at 10x whose maps say "foreground, seed" everywhere: every field it sees is
    one object (enough to follow the objects through the app)."""
    decoder = InstanceDecoder(DecoderConfig(inputs=("embedding", "early")))
    assert decoder.head.bias is not None
    with torch.no_grad():
        decoder.head.weight.zero_()
        decoder.head.bias.copy_(torch.tensor([6.0, -6.0, -6.0]))
    model = InstanceModel(
        decoder=decoder,
        magnification=10.0,
        encoder_sha256=encoder_sha256,
        metadata={"trained_on": "a test"},
    )
    return write_decoder(path, model)


@pytest.fixture
def window(qtbot: Any, tmp_path: Path, heads_dir: Path, fresh_wsi_sam: Any) -> Iterator[Any]:
    path = tmp_path / "glands.tif"
    write_gland_slide(path, 900, 700, GLANDS)
    win = make_window(qtbot, WsiSamPredictor(fresh_wsi_sam))
    assert win.open_path(path), win.prompter.errors
    wait_ready(qtbot, win)
    win.jobs.show_dialog = False
    yield win
    win.close()


def _automatic_menu(window: Any) -> dict[str, Any]:
    window.everything.refresh_menu()
    return {a.text(): a for a in window.everything.menu.actions() if a.text()}


def test_segment_everything_with_a_decoder_is_one_undo_step(
    qtbot: Any, window: Any, heads_dir: Path, fresh_wsi_sam: Any
) -> None:
    write_test_decoder(heads_dir / "cells.pt", fresh_wsi_sam.sam.checkpoint_info.sha256)
    # chosen in Model > Automatic segmentation: remembered for Segment everything
    entries = _automatic_menu(window)
    assert set(entries) == {"cells (10x, user)", "Point grid (any object)"}
    assert entries["Point grid (any object)"].isChecked()
    assert "instance decoder" in entries["cells (10x, user)"].toolTip()
    entries["cells (10x, user)"].trigger()
    assert saved_everything_method() == str(heads_dir / "cells.pt")
    assert _automatic_menu(window)["cells (10x, user)"].isChecked()

    region = qupath_bridge.Annotation(geometry=shapely_box(150, 150, 800, 650), name="region")
    window.store.add(region)
    window.annotation_dock.select_ids([region.id])
    window.classes.set_current("Tumor")
    steps = window.undo_stack.count()
    window.everything.ask_settings = False  # the remembered settings and method
    assert window.everything.run()
    qtbot.waitUntil(window.pending.is_active, timeout=120_000)
    assert window.everything.last_message.endswith("found by decoder cells (10x) in 1 field")
    assert len(window.store) == 1  # previewed, not added yet
    qtbot.keyClick(window, Qt.Key.Key_Return)
    assert window.undo_stack.count() == steps + 1
    found = [a for a in window.store if a.id != region.id]
    assert found and all(a.parent_id == region.id and a.class_name == "Tumor" for a in found)
    assert all(a.metadata["wsi-sam prompt kind"] == "instances" for a in found)
    assert all(a.metadata["wsi-sam decoder"] == "cells" for a in found)
    assert all(region.geometry.buffer(1).contains(a.geometry) for a in found)
    window.undo_stack.undo()
    assert [a.id for a in window.store] == [region.id]


def test_a_decoder_for_another_encoder_is_refused_in_one_message(
    qtbot: Any, window: Any, heads_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_test_decoder(heads_dir / "foreign.pt", "0" * 64)
    window.everything.ask_settings = False
    assert not window.everything.run(EverythingSettings(), "annotation", method=str(path))
    assert not window.jobs.is_running() and not window.pending.is_active()
    [(title, text)] = window.prompter.errors
    assert "cannot be used" in title and "another SAM encoder" in text
    assert "\n" not in text and "Traceback" not in capfd.readouterr().err


def test_the_dialog_offers_the_decoders_and_the_grid(
    qtbot: Any, heads_dir: Path, monkeypatch: pytest.MonkeyPatch, sample_slide: Path
) -> None:
    path = write_test_decoder(heads_dir / "nuclei.pt", "")
    window = make_window(qtbot)
    try:
        assert window.open_path(sample_slide), window.prompter.errors
        choices = window.everything.method_choices()
        assert [label for label, _, _ in choices] == [
            "nuclei (10x, user)",
            "Point grid (any object)",
        ]
        assert saved_everything_method() == GRID and window.everything.method(choices) == GRID
        settings, output = saved_everything()
        dialog = EverythingDialog(settings, output, True, window, choices, GRID)
        combo = dialog.method_combo
        assert [combo.itemText(i) for i in range(combo.count())] == [c[0] for c in choices]
        assert combo.currentData() == GRID and dialog.points.isEnabled()
        assert "instance decoder" in combo.itemData(0, Qt.ItemDataRole.ToolTipRole)
        combo.setCurrentIndex(0)
        assert dialog.method() == str(path) and not dialog.points.isEnabled()
        dialog.deleteLater()

        # the choice made in the dialog is remembered with the other settings
        def accept_with_decoder(self: EverythingDialog) -> int:
            assert self.method() == GRID  # nothing remembered yet
            self.method_combo.setCurrentIndex(0)
            self.output.setCurrentIndex(1)
            return int(QDialog.DialogCode.Accepted)

        monkeypatch.setattr(EverythingDialog, "exec", accept_with_decoder)
        assert not window.everything.run()  # the fake segmenter has no model: no job
        assert saved_everything_method() == str(path)
        assert saved_everything()[1] == "detection"
        assert window.everything.method() == str(path)
    finally:
        window.close()


# -- Tools > Train automatic segmentation ---------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, sample_slide: Path, heads_dir: Path) -> Path:
    """The demo project (QuPath 0.6) on the sample slide, with a ``Region*`` annotation saved
    the way the app saves without QuPath (the image's sidecar) around three "circles"."""
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    opened = qupath_bridge.open_project(folder)
    qupath_bridge.relink_images(opened, {"1": sample_slide})
    region = qupath_bridge.Annotation(
        geometry=shapely_box(370, 440, 735, 800),
        path_class=qupath_bridge.PathClass.from_name("Region*"),
    )
    opened = qupath_bridge.open_project(folder)
    opened.write_sidecar(opened.images[0], [region])
    return folder


def _note(record: list[str], text: str, answer: bool) -> bool:
    record.append(text)
    return answer


def _project_window(qtbot: Any, project: Path, tmp_path: Path) -> Any:
    window = make_window(qtbot)
    assert window.open_path(project), window.prompter.errors
    wait_ready(qtbot, window)
    window.train_instances.feature_cache = tmp_path / "features"
    return window


def test_train_from_project_then_use_the_new_decoder(
    qtbot: Any, project: Path, tmp_path: Path
) -> None:
    window = _project_window(qtbot, project, tmp_path)
    try:
        controller = window.train_instances
        offered: list[str] = []
        asked: list[tuple[str, str]] = []

        def ask_train(classes: Any, name: str) -> InstancesRequest:
            asked.append((name, ",".join(sorted(classes))))
            return InstancesRequest(classes=["circles"], name="circles", epochs=1, variants=1)

        controller.ask_train = ask_train
        controller.ask_resume = lambda name: pytest.fail("nothing to resume")
        controller.ask_use = lambda name, summary: _note(offered, summary, True)
        with qtbot.waitSignal(controller.trainingFinished, timeout=300_000) as finished:
            assert controller.train_from_project()
        path, summary = finished.args
        out = project_heads_dir(project) / "circles.pt"
        assert path == str(out), (summary, window.prompter.errors)
        assert asked[0][0] == "automatic" and "Region*" in asked[0][1]
        assert "circles" in asked[0][1]
        assert controller.last_progress.get("stage") == "done"
        assert out.with_suffix(".md").is_file() and controller.process is None
        entry = build_catalogue(project=project).find_decoder("circles")
        assert entry is not None and entry.place == "project" and entry.kind == "instances"
        assert entry.metadata["classes"] == ["circles"]
        # offered, accepted: the method of Segment everything, listed with the grid
        assert offered and "instance decoder" in offered[0]
        assert saved_everything_method() == str(out)
        assert window.everything.method() == str(out)
        entries = _automatic_menu(window)
        assert entries["circles (20x, project)"].isChecked()
        assert "trained on" in entries["circles (20x, project)"].toolTip()
    finally:
        window.close()


def test_cancel_leaves_no_decoder_and_training_again_resumes(
    qtbot: Any, project: Path, tmp_path: Path
) -> None:
    window = _project_window(qtbot, project, tmp_path)
    try:
        controller = window.train_instances
        controller.ask_train = lambda classes, name: InstancesRequest(
            classes=["circles"], name="long", epochs=6, variants=1
        )
        controller.ask_use = lambda name, summary: False
        assert controller.train_from_project()
        qtbot.waitUntil(lambda: controller.last_progress.get("stage") == "epoch", timeout=300_000)
        with qtbot.waitSignal(controller.trainingFinished, timeout=60_000) as finished:
            controller.cancel()
        assert finished.args[0] == "" and "cancelled" in finished.args[1]
        folder = project_heads_dir(project)
        out = folder / "long.pt"
        assert not out.exists() and state_file(out).is_file()
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert build_catalogue(project=project).find_decoder("long") is None
        assert not window.prompter.errors

        # the next time, the interrupted run is the default name and Resume is offered
        resumed: list[str] = []
        defaults: list[str] = []

        def ask_train(classes: Any, name: str) -> InstancesRequest:
            defaults.append(name)
            return InstancesRequest(classes=["circles"], name=name, epochs=10, variants=1)

        controller.ask_train = ask_train
        controller.ask_resume = lambda name: _note(resumed, name, True)
        with qtbot.waitSignal(controller.trainingFinished, timeout=300_000) as finished:
            assert controller.train_from_project()
        assert defaults == ["long"] and resumed == ["long"]
        assert finished.args[0] == str(out), (finished.args, window.prompter.errors)
        log = read_decoder(out).metadata["log"]  # epochs before the cancel, then the rest
        assert [record["epoch"] for record in log] == [1, 2, 3, 4, 5, 6]  # its 6, not 10
        assert saved_everything_method() == GRID  # not accepted: the method stays
    finally:
        window.close()


def test_training_errors_are_one_message(qtbot: Any, project: Path, tmp_path: Path) -> None:
    window = _project_window(qtbot, project, tmp_path)
    try:
        controller = window.train_instances
        controller.ask_train = lambda classes, name: InstancesRequest(
            classes=["circles"], name="x", region_class="Tumor", epochs=1, variants=1
        )
        assert not controller.train_from_project()  # no such region annotation: not started
        [(_title, text)] = window.prompter.errors
        assert "'Tumor'" in text and controller.process is None
        window.prompter.errors.clear()
        # the command's own error (here: no object of the class) is its last line on stderr
        controller.ask_train = lambda classes, name: InstancesRequest(
            classes=["nothing"], name="x", epochs=1, variants=1
        )
        with qtbot.waitSignal(controller.trainingFinished, timeout=300_000) as finished:
            assert controller.train_from_project()
        [(title, text)] = window.prompter.errors
        assert title == "Training failed" and "\n" not in text and "no objects" in text
        assert list(finished.args) == ["", text]
        assert not (project_heads_dir(project) / "x.pt").exists()
    finally:
        window.close()
