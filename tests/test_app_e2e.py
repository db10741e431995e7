"""End to end: the real WSI-SAM engine behind the window, and recovery after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import shapely
from PySide6.QtCore import Qt
from test_app_support import (  # noqa: F401 (data_dir is a fixture)
    SAMPLE_SIZE,
    data_dir,
    drag_box,
    make_window,
    wait_ready,
    wait_tiles,
)

import qupath_bridge

TESTS = Path(__file__).parent
BOX = (700.0, 1300.0, 1300.0, 1900.0)  # level-0 px over tissue of the sample slide


@pytest.mark.slow
def test_real_engine_box_to_geojson(qtbot, data_dir, sample_slide, tmp_path) -> None:  # noqa: F811
    window = make_window(qtbot, segmenter="real")
    assert window.open_path(sample_slide)
    wait_ready(qtbot, window, timeout_ms=180_000)  # torch + weights on a CPU
    wait_tiles(qtbot, window)
    qtbot.keyClick(window, Qt.Key.Key_B)
    qtbot.keyClick(window, Qt.Key.Key_2)  # Stroma
    drag_box(qtbot, window, *BOX)
    qtbot.waitUntil(window.prompts.has_preview, timeout=180_000)  # one field encode on a CPU
    assert window.prompts.result().encoded
    qtbot.keyClick(window, Qt.Key.Key_Return)
    assert window.annotation_dock.count() == 1
    assert window.annotation_dock.row_texts(0)[1] == "Stroma"
    window.undo_stack.undo()
    assert window.annotation_dock.count() == 0
    window.undo_stack.redo()
    assert window.annotation_dock.count() == 1

    out = tmp_path / "real.geojson"
    assert window.export_geojson(out)
    (annotation,) = qupath_bridge.read_geojson(out)
    polygon = annotation.geometry
    drawn = shapely.box(*BOX)
    assert annotation.class_name == "Stroma"
    assert polygon.is_valid and polygon.area > 0.02 * drawn.area
    assert polygon.intersection(drawn).area > 0.5 * polygon.area  # level-0 px, in the box
    minx, miny, maxx, maxy = polygon.bounds
    assert minx >= 0 and miny >= 0 and maxx <= SAMPLE_SIZE[0] and maxy <= SAMPLE_SIZE[1]
    window.close()


CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from PySide6.QtWidgets import QApplication
    from test_app_support import FakeSegmenter, ScriptedPrompter
    from app.main_window import MainWindow

    app = QApplication([])
    window = MainWindow(predictor_factory=lambda progress: FakeSegmenter(),
                        prompter=ScriptedPrompter())
    window.show()
    assert window.open_path({slide!r})
    classes = window.classes
    classes.set_current("Tumor")
    window.prompts.set_box(300, 400, 900, 1000)
    deadline = time.time() + 60
    while not window.prompts.has_preview() and time.time() < deadline:
        app.processEvents()
    assert window.prompts.accept()
    window.rename_annotation(window.store.ids()[0], "before the crash")
    print("ACCEPTED", window.store.ids()[0], flush=True)
    app.exec()  # wait to be killed
    """
)


def test_kill_and_restore_recovers_the_journal(qtbot, data_dir, sample_slide) -> None:  # noqa: F811
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", WSI_SAM_DATA_DIR=str(data_dir))
    code = CHILD.format(tests=str(TESTS), slide=str(sample_slide))
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = ""
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ACCEPTED"):
                break
        assert line.startswith("ACCEPTED"), "the child app did not accept an annotation"
        annotation_id = line.split()[1]
        child.send_signal(signal.SIGKILL)  # no chance to save anything
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    window = make_window(qtbot)
    assert window.open_path(sample_slide)
    assert window.prompter.asked == [f"restore 2 {sample_slide.name}"]  # accept + rename
    assert window.store.ids() == [annotation_id]
    restored = window.store.get(annotation_id)
    assert restored.name == "before the crash" and restored.class_name == "Tumor"
    assert restored.geometry.within(shapely.box(300, 400, 900, 1000))
    assert window.annotation_dock.count() == 1 and len(window.overlay.items()) == 1
    assert window.has_unsaved_changes()

    # declining keeps the edits aside instead of deleting them, and they are not offered again
    window.close()
    second = make_window(qtbot)
    second.prompter.restore_answer = False
    second.open_path(sample_slide)
    assert len(second.store) == 0
    assert list((data_dir / "journal").glob("*.declined-*.jsonl"))
    third = make_window(qtbot)
    third.open_path(sample_slide)
    assert third.prompter.asked == []
