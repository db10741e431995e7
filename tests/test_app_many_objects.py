"""The app's Refine (R) and Segment everything with the real MobileSAM: in the background,
previewed, accepted as one undo step, undone; cancel changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide
from test_app_support import data_dir, make_window, wait_ready  # noqa: F401 (a fixture)

import qupath_bridge
from engine.everything import EverythingSettings
from engine.wsi_predictor import WsiSamPredictor

GLANDS: list[Gland] = [(300.0, 300.0, 110.0, 80.0), (650.0, 450.0, 80.0, 100.0)]


@pytest.fixture
def window(qtbot, data_dir, tmp_path: Path, fresh_wsi_sam):  # type: ignore[no-untyped-def]  # noqa: F811
    path = tmp_path / "glands.tif"
    write_gland_slide(path, 900, 700, GLANDS)
    win = make_window(qtbot, WsiSamPredictor(fresh_wsi_sam))
    assert win.open_path(path), win.prompter.errors
    wait_ready(qtbot, win)
    win.jobs.show_dialog = False
    win.mode_combo.setCurrentIndex(win.mode_combo.findData("sam"))
    yield win
    win.close()


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    return float(a.intersection(b).area / a.union(b).area)


def test_refine_selected_keeps_identity_and_undo_restores(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    truth = gland_polygon(GLANDS[0])
    original = qupath_bridge.Annotation(
        geometry=truth.buffer(35),
        path_class=qupath_bridge.PathClass.from_name("Tumor", (200, 0, 0)),
        name="gland A",
        parent_id="parent-1",
        measurements={"Hand score": 3.0},
        metadata={"drawn by": "pathologist"},
    )
    window.store.add(original)
    window.annotation_dock.select_ids([original.id])
    qtbot.keyClick(window, Qt.Key.Key_R)
    qtbot.waitUntil(window.pending.is_active, timeout=120_000)
    assert window.store.get(original.id).geometry.equals(original.geometry)  # only previewed
    qtbot.keyClick(window, Qt.Key.Key_Return)
    refined = window.store.get(original.id)
    assert (refined.id, refined.name, refined.parent_id) == (original.id, "gland A", "parent-1")
    assert refined.class_name == "Tumor" and refined.measurements["Hand score"] == 3.0
    assert refined.metadata["drawn by"] == "pathologist"
    assert refined.metadata["wsi-sam prompt kind"] == "refine"
    assert "WSI-SAM predicted IoU" in refined.measurements
    assert _iou(refined.geometry, truth) > _iou(original.geometry, truth) + 0.2
    window.undo_stack.undo()
    assert window.store.get(original.id).geometry.equals(original.geometry)
    assert "WSI-SAM predicted IoU" not in window.store.get(original.id).measurements


def test_segment_everything_in_an_annotation_is_one_undo_step(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    region = qupath_bridge.Annotation(geometry=shapely_box(150, 150, 800, 650), name="region")
    window.store.add(region)
    window.annotation_dock.select_ids([region.id])
    window.classes.set_current("Tumor")
    steps = window.undo_stack.count()
    settings = EverythingSettings(points_per_side=4, magnification=20.0, min_area=1500)
    assert window.everything.run(settings, "detection")
    qtbot.waitUntil(window.pending.is_active, timeout=120_000)
    assert len(window.store) == 1  # previewed, not added yet
    qtbot.keyClick(window, Qt.Key.Key_Return)
    assert window.undo_stack.count() == steps + 1
    found = [a for a in window.store if a.id != region.id]
    assert found and all(a.parent_id == region.id for a in found)
    assert all(a.object_type == "detection" and a.class_name == "Tumor" for a in found)
    for gland in GLANDS:
        assert max(_iou(a.geometry, gland_polygon(gland)) for a in found) > 0.85
    assert all(a.metadata["wsi-sam prompt kind"] == "everything" for a in found)
    window.undo_stack.undo()
    assert [a.id for a in window.store] == [region.id]


def test_cancelled_segment_everything_adds_nothing(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    cancelled: list[bool] = []
    window.jobs.cancelled.connect(lambda: cancelled.append(True))
    settings = EverythingSettings(points_per_side=8, magnification=20.0)
    assert window.everything.run(settings, "annotation")
    window.jobs.cancel()
    qtbot.waitUntil(lambda: bool(cancelled), timeout=120_000)
    assert not window.pending.is_active() and len(window.store) == 0
