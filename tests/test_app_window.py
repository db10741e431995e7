"""The main window on the real sample slide with a fake segmenter (fast): viewer, prompt tools,
preview, accept, classes, undo/redo, list, export, errors, project dock, drag and drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from test_app_support import (  # noqa: F401 (data_dir is a fixture)
    SAMPLE_SIZE,
    FakeSegmenter,
    click,
    data_dir,
    drag_box,
    make_window,
    wait_ready,
    wait_tiles,
)

import qupath_bridge


@pytest.fixture
def window(qtbot, data_dir, sample_slide):  # noqa: F811
    win = make_window(qtbot)
    assert win.open_path(sample_slide), win.prompter.errors
    wait_ready(qtbot, win)
    wait_tiles(qtbot, win)
    yield win
    win.close()


def test_opens_real_slide_and_zoom_changes_level(qtbot, window) -> None:
    view = window.view
    assert window.slide.dimensions == SAMPLE_SIZE
    fit_level = view.current_level()
    assert fit_level > 0  # the whole slide is shown from a reduced level
    tiles: list[int] = []
    view.tilesLoaded.connect(tiles.append)
    view.set_downsample(1.0, QPointF(1100, 1500))
    qtbot.waitUntil(lambda: sum(tiles) > 0 and view.pending_tiles() == 0, timeout=10_000)
    assert view.current_level() == 0
    before = view.visible_rect_level0()
    view.centre_on_level0(400, 400)
    qtbot.waitUntil(lambda: view.pending_tiles() == 0, timeout=10_000)
    assert view.visible_rect_level0().center() != before.center()
    window._on_cursor(12.0, 34.0)
    assert "12" in window.position_label.text() and "34" in window.position_label.text()
    assert "level 0" in window.zoom_label.text()


def test_box_preview_accept_class_undo_redo_export(qtbot, window, tmp_path) -> None:
    qtbot.keyClick(window, Qt.Key.Key_B)
    qtbot.keyClick(window, Qt.Key.Key_1)  # Tumor, QuPath's first default class
    assert window.classes.current().name == "Tumor"
    drag_box(qtbot, window, 600, 800, 1400, 1600)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    drawn_box = window.prompts.prompt().box  # level-0 px, whatever the zoom
    assert max(abs(a - b) for a, b in zip(drawn_box, (600, 800, 1400, 1600), strict=True)) < 10
    qtbot.keyClick(window, Qt.Key.Key_Return)
    assert window.annotation_dock.count() == 1
    assert window.annotation_dock.row_texts(0)[1] == "Tumor"
    annotation = window.store.annotations()[0]
    assert annotation.class_name == "Tumor"
    assert len(window.overlay.items()) == 1
    assert window.prompts.prompt().is_empty() and not window.prompts.has_preview()
    assert window.has_unsaved_changes() and window.windowTitle().endswith("*")

    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.annotation_dock.count() == 0 and not window.overlay.items()
    qtbot.keyClick(
        window,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    assert window.annotation_dock.count() == 1

    out = tmp_path / "export.geojson"
    window.prompter.save_path = str(out)
    window.act_export.trigger()
    back = qupath_bridge.read_geojson(out)
    assert len(back) == 1 and back[0].class_name == "Tumor" and back[0].id == annotation.id
    drawn = qupath_bridge.Annotation(geometry=__import__("shapely").box(600, 800, 1400, 1600))
    overlap = back[0].geometry.intersection(drawn.geometry).area / back[0].geometry.area
    assert overlap > 0.95  # level-0 px: the polygon lies in the drawn box
    assert not window.journal.path.exists()  # exported: nothing left to restore
    assert not window.has_unsaved_changes()


def test_points_refine_and_multimask_cycles(qtbot, window) -> None:
    window.view.set_downsample(1.0, QPointF(1000, 1000))
    qtbot.keyClick(window, Qt.Key.Key_P)
    click(qtbot, window, 1000, 1000)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    assert window.prompts.candidate_count() == 3
    first = window.prompts.preview_geometry().area
    qtbot.keyClick(window, Qt.Key.Key_M)
    assert window.prompts.candidate_index() == 1
    assert window.prompts.preview_geometry().area > first
    click(qtbot, window, 1100, 1000, Qt.MouseButton.RightButton)  # negative point
    click(qtbot, window, 1000, 1050, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier)
    qtbot.waitUntil(
        lambda: window.prompts.has_preview() and not window.prompts.is_waiting(), timeout=5000
    )
    assert window.prompts.prompt().labels == [1, 0, 0]
    assert window.segmenter.calls[-1]["labels"].tolist() == [1, 0, 0]
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert window.prompts.prompt().is_empty() and not window.prompts.has_preview()
    assert len(window.store) == 0


def test_mode_switch_reaches_engine(qtbot, window) -> None:
    window.set_mode("sam")
    window.prompts.set_box(100, 100, 500, 500)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    assert window.segmenter.calls[-1]["mode"] == "sam"


def test_list_delete_reclassify_rename_with_undo(qtbot, window) -> None:
    for x in (100, 700):
        window.prompts.set_box(x, 100, x + 400, 500)
        qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
        assert window.prompts.accept()
    ids = window.store.ids()
    dock = window.annotation_dock
    dock.select_ids([ids[1]])
    assert window.overlay.item(ids[1]).pen().widthF() > window.overlay.item(ids[0]).pen().widthF()
    stroma = window.classes.find("Stroma")
    window.set_annotation_class([ids[1]], stroma)
    assert dock.row_texts(1)[1] == "Stroma"
    dock.select_ids([])
    assert window.overlay.item(ids[1]).pen().color().getRgb()[:3] == stroma.color
    item = dock.item_for(ids[0])
    item.setText(0, "gland A")  # rename in place
    assert window.store.get(ids[0]).name == "gland A"
    dock.select_ids([ids[0]])
    qtbot.keyClick(window, Qt.Key.Key_Delete)
    assert window.store.ids() == [ids[1]]
    for _ in range(3):
        window.undo_stack.undo()
    assert window.store.ids() == ids
    assert window.store.get(ids[0]).name is None and window.store.get(ids[1]).path_class is None


def test_bad_slide_is_explained_not_raised(qtbot, window, test_data) -> None:
    assert not window.open_path(test_data / "slides" / "unreadable.svs")
    assert not window.open_path("/no/such/slide.svs")
    assert len(window.prompter.errors) == 2
    assert all(title == "Cannot open slide" for title, _ in window.prompter.errors)
    assert "not found" in window.prompter.errors[1][1].lower()
    assert window.slide is not None  # the open slide stays


def test_off_slide_prompt_reports_in_words(qtbot, window) -> None:
    messages: list[str] = []
    window.prompts.message.connect(messages.append)
    window.prompts.set_box(2000, 2800, 2600, 3400)
    qtbot.waitUntil(lambda: any("not inside" in m for m in messages), timeout=5000)
    assert not window.prompts.has_preview()


def test_class_editing(qtbot, window) -> None:
    window.prompter.texts = ["Gland"]
    window.prompter.colors = [(10, 20, 30)]
    window.class_dock.addRequested.emit()
    assert window.classes.find("Gland").color == (10, 20, 30)
    window.prompts.set_box(100, 100, 500, 500)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    window.classes.set_current("Tumor")
    window.prompts.accept()
    window.prompter.texts = ["Carcinoma"]
    window.class_dock.renameRequested.emit(0)
    assert window.store.annotations()[0].class_name == "Carcinoma"  # annotations follow
    assert window.class_combo.findText("Carcinoma") >= 0


def test_project_dock_opens_images_and_marks_missing(qtbot, window, tmp_path, sample_slide):
    project = tmp_path / "proj"
    project.mkdir()

    def entry(n: int, path: str) -> dict:
        return {
            "serverBuilder": {
                "builderType": "uri",
                "uri": QUrl.fromLocalFile(path).toString(),
                "providerClassName": "qupath.lib.images.servers.openslide.OpenslideServerBuilder",
                "args": [],
            },
            "entryID": n,
            "randomizedName": f"r{n}",
            "imageName": Path(path).name,
        }

    qpproj = {
        "version": "0.5.1",
        "images": [entry(1, str(sample_slide)), entry(2, str(tmp_path / "gone.svs"))],
    }
    (project / "project.qpproj").write_text(json.dumps(qpproj))
    assert window.open_path(project)
    assert window.project_dock.isVisible()
    texts = [window.project_dock.list.item(i).text() for i in range(2)]
    assert texts[0] == sample_slide.name and "missing" in texts[1]
    assert window.project_image.entry_id == "1"
    assert not window.open_project_image(1)  # missing: says so and offers Locate...
    assert "not on this computer" in window.prompter.asked[-1]

    # saving without QuPath keeps the annotations in the project's sidecar
    window.prompts.set_box(100, 100, 500, 500)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    window.prompts.accept()
    assert window.save()
    assert any("geojson instead" in q for q in window.prompter.asked)
    reopened = qupath_bridge.open_project(project)
    assert [a.id for a in reopened.read_annotations(reopened.images[0])] == window.store.ids()


def test_drop_opens_a_slide(qtbot, window, test_data) -> None:
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(test_data / "slides" / "small.svs"))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    qtbot.waitUntil(
        lambda: window.slide_path is not None and "small.svs" in window.slide_path, timeout=5000
    )


def test_unsaved_changes_asked_before_switching(qtbot, window, test_data) -> None:
    window.prompts.set_box(100, 100, 500, 500)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    window.prompts.accept()
    window.prompter.unsaved_answer = "cancel"
    assert not window.open_path(test_data / "slides" / "small.svs")
    assert len(window.store) == 1
    window.prompter.unsaved_answer = "discard"
    assert window.open_path(test_data / "slides" / "small.svs")
    assert len(window.store) == 0


def test_accept_pressed_before_the_answer_accepts_when_it_arrives(qtbot, data_dir, sample_slide):  # noqa: F811
    import threading

    segmenter = FakeSegmenter()
    segmenter.gate = threading.Event()
    win = make_window(qtbot, segmenter)
    win.open_path(sample_slide)
    wait_ready(qtbot, win)
    win.prompts.set_box(100, 100, 500, 500)
    qtbot.waitUntil(lambda: len(segmenter.calls) == 1, timeout=5000)
    qtbot.keyClick(win, Qt.Key.Key_Return)
    assert len(win.store) == 0
    segmenter.gate.set()
    qtbot.waitUntil(lambda: len(win.store) == 1, timeout=5000)
    win.close()
