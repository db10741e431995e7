"""The app on a real QuPath project without QuPath: the objects of its data.qpdata are shown
(annotations in the list, cells in a layer that can be hidden), and Locate... relinks a moved
image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import shapely
from test_app_support import data_dir, make_window, wait_ready  # noqa: F401 (fixture)

import qupath_bridge
from app.controllers.project_objects import MAX_OUTLINES, DetectionLayer
from qupath_bridge.project_file import read_project_info

DEMO = (
    Path(__file__).parent / "data" / "qupath" / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
)
IMAGE_NAME = "TD_01_verysmall_mIF.ome.tif"

pytestmark = pytest.mark.usefixtures("data_dir")  # settings and journals in a temporary folder


def _without_uris(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: ("URI" if k == "uri" else _without_uris(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_uris(item) for item in node]
    return node


@pytest.fixture
def demo_project(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    return folder


def _render(qtbot: Any, window: Any) -> None:
    window.view.viewport().repaint()
    qtbot.wait(50)


def test_project_objects_from_data_qpdata(qtbot, demo_project, sample_slide, tmp_path) -> None:
    # The real demo project (QuPath 0.6.0, made on a Mac), its image pointed at a real slide.
    qupath_bridge.relink_images(qupath_bridge.open_project(demo_project), {"1": sample_slide})
    window = make_window(qtbot)
    try:
        assert window.open_path(demo_project), window.prompter.errors
        wait_ready(qtbot, window)
        assert window.project_image.entry_id == "1"
        assert not window.prompter.errors
        # The 10 annotations are in the list and drawn; the 121 cells are in the layer.
        assert window.annotation_dock.count() == 10
        assert len(window.overlay.items()) == 10
        names = {a.class_name for a in window.store.annotations()}
        assert {"class_1", "circles", "two_circles"} <= names
        layer = window.project_objects.layer()
        assert isinstance(layer, DetectionLayer) and len(layer) == 121
        assert {o.object_type for o in window.project_objects.objects()} == {"cell"}
        _render(qtbot, window)
        assert layer.last_paint["outlines"] + layer.last_paint["dots"] == 121
        # The layer can be hidden (View > Show detections, D).
        window.act_toggle_detections.trigger()
        assert not layer.isVisible()
        window.act_toggle_detections.trigger()
        assert layer.isVisible()
        # Export writes the project's objects, cells included.
        out = tmp_path / "export.geojson"
        assert window.export_geojson(out)
        assert len(qupath_bridge.read_geojson(out)) == 131
    finally:
        window.close()


def test_locate_relinks_a_moved_image(qtbot, demo_project, sample_slide, tmp_path):
    moved = tmp_path / "elsewhere" / "deep" / IMAGE_NAME
    moved.parent.mkdir(parents=True)
    shutil.copy(sample_slide, moved)
    project_file = demo_project / "project.qpproj"
    original = project_file.read_bytes()
    window = make_window(qtbot)
    window.prompter.locate_answer = True
    window.prompter.search_folder = str(tmp_path / "elsewhere")
    try:
        assert window.open_path(demo_project), window.prompter.errors
        # The image is missing: the app said so and offered Locate..., which found it.
        assert any("not on this computer" in q for q in window.prompter.asked)
        assert "choose 1 files" in window.prompter.asked
        assert window.project_image is not None and window.project_image.path == moved
        assert window.annotation_dock.count() == 10
        # project.qpproj still opens in the JSON reader, with every other field kept.
        info = read_project_info(project_file)
        assert info.images[0].exists and info.images[0].path == moved
        assert _without_uris(json.loads(project_file.read_bytes())) == _without_uris(
            json.loads(original)
        )
        backups = list((demo_project / "wsi-sam" / "backups").iterdir())
        assert [(b / "project.qpproj").read_bytes() for b in backups] == [original]
    finally:
        window.close()


def test_declined_locate_changes_nothing(qtbot, demo_project) -> None:
    original = (demo_project / "project.qpproj").read_bytes()
    window = make_window(qtbot)
    try:
        assert window.open_path(demo_project)
        assert window.project_image is None
        assert any("not on this computer" in q for q in window.prompter.asked)
        assert (demo_project / "project.qpproj").read_bytes() == original
    finally:
        window.close()


def test_many_detections_are_drawn_as_dots_when_zoomed_out(qtbot, sample_slide) -> None:
    """Tens of thousands of cells: one item, dots at overview zoom, capped outlines zoomed in."""
    window = make_window(qtbot)
    try:
        assert window.open_path(sample_slide)
        wait_ready(qtbot, window)
        cells = [
            qupath_bridge.Annotation(
                shapely.Point(x * 11.0 + 5, y * 14.5 + 5).buffer(4, quad_segs=4),
                object_type="cell",
            )
            for x in range(200)
            for y in range(200)
        ]
        window.project_objects.set_objects(cells)
        layer = window.project_objects.layer()
        assert layer is not None and len(layer) == 40_000
        window.view.fit_to_window()
        _render(qtbot, window)
        assert layer.last_paint["outlines"] == 0 and layer.last_paint["dots"] > 10_000
        print(f"40,000 cells at fit: {layer.last_paint['ms']:.0f} ms per paint")
        window.view.set_downsample(1.0)
        _render(qtbot, window)
        assert 0 < layer.last_paint["outlines"] <= MAX_OUTLINES
        print(f"zoomed in: {layer.last_paint}")
        assert window.annotation_dock.count() == 0  # the list is not flooded
    finally:
        window.close()


def test_locate_dialog_shows_the_matches(qtbot, tmp_path) -> None:
    from app.dialogs.locate_images import LocateImagesDialog

    project = qupath_bridge.open_project(DEMO)
    image = project.images[0]
    gone = qupath_bridge.ProjectImage("gone.svs", "2", "file:/x/gone.svs", None, False)
    first, second = tmp_path / "a" / IMAGE_NAME, tmp_path / "b" / IMAGE_NAME
    dialog = LocateImagesDialog([image, gone], {"1": [first, second], "2": []})
    qtbot.addWidget(dialog)
    assert dialog.table.rowCount() == 2
    assert dialog.table.item(0, 1).text().endswith(IMAGE_NAME)
    assert dialog.chosen() == {"1": first}
    combo = dialog.table.cellWidget(0, 2)
    combo.setCurrentIndex(1)
    assert dialog.chosen() == {"1": second}
    combo.setCurrentIndex(2)  # leave as it is
    assert dialog.chosen() == {}
    assert not dialog.table.cellWidget(1, 2).isEnabled()
