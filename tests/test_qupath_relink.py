"""Relinking a moved project's images: find the files, update the URIs, keep everything else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from qupath_bridge import (
    ProjectError,
    file_uri,
    find_images,
    missing_images,
    open_project,
    relink_images,
)
from qupath_bridge.project_file import path_from_uri, read_project_info

DEMO = (
    Path(__file__).parent / "data" / "qupath" / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
)
OLD_URI = "file:/Volumes/RD_Coscia/Jose/__TestDatasets/TD_01_verysmall_mIF.ome.tif"


@pytest.fixture
def moved(tmp_path: Path) -> tuple[Path, Path]:
    """The real 0.6.0 demo project (made on a Mac) and its image, found elsewhere here."""
    project = tmp_path / "project"
    shutil.copytree(DEMO, project)
    slide = tmp_path / "slides" / "deep" / "TD_01_verysmall_mIF.ome.tif"
    slide.parent.mkdir(parents=True)
    slide.write_bytes(b"not really a slide")
    (tmp_path / "slides" / "other.tif").write_bytes(b"x")
    return project, slide


def _without_uris(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: ("URI" if k == "uri" else _without_uris(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_uris(item) for item in node]
    return node


def test_file_uri_is_what_qupath_writes(tmp_path: Path) -> None:
    uri = file_uri(tmp_path / "a b.svs")
    assert uri.startswith("file:/") and not uri.startswith("file://")
    assert "a%20b.svs" in uri
    assert path_from_uri(uri) == tmp_path / "a b.svs"


def test_find_and_relink_a_moved_image(moved: tuple[Path, Path]) -> None:
    folder, slide = moved
    project = open_project(folder)
    (missing,) = missing_images(project.images)
    assert missing.uri == OLD_URI
    matches = find_images([missing], slide.parents[1])
    assert matches == {missing.entry_id: [slide]}

    original = (folder / "project.qpproj").read_bytes()
    before = json.loads(original)
    backup = relink_images(project, {missing.entry_id: slide})
    assert backup is not None and backup.parent == folder / "wsi-sam" / "backups"
    assert (backup / "project.qpproj").read_bytes() == original
    # The project still opens in the JSON reader; the image is found; nothing else changed.
    assert project.images[0].exists and project.images[0].path == slide
    info = read_project_info(folder / "project.qpproj")
    assert info.images[0].exists and info.images[0].uri == file_uri(slide)
    after = json.loads((folder / "project.qpproj").read_text())
    assert _without_uris(after) == _without_uris(before)
    assert len(project.read_annotations(0)) == 131  # the objects are still there


def test_relink_changes_nothing_when_the_target_is_missing(moved: tuple[Path, Path]) -> None:
    folder, slide = moved
    project = open_project(folder)
    original = (folder / "project.qpproj").read_bytes()
    with pytest.raises(ProjectError, match="no such file"):
        relink_images(project, {"1": slide.with_name("nope.tif")})
    with pytest.raises(ProjectError, match="no image with entry id 7"):
        relink_images(project, {"7": slide})
    assert (folder / "project.qpproj").read_bytes() == original
    assert not (folder / "wsi-sam").exists()


def test_relink_updates_server_json_too(moved: tuple[Path, Path]) -> None:
    folder, slide = moved
    server = folder / "data" / "1" / "server.json"
    server.write_text(json.dumps({"builderType": "uri", "uri": OLD_URI, "args": []}))
    backup = relink_images(open_project(folder), {"1": slide})
    assert backup is not None
    assert json.loads(server.read_text())["uri"] == file_uri(slide)
    assert json.loads((backup / "data" / "1" / "server.json").read_text())["uri"] == OLD_URI


def test_find_images_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not a folder"):
        find_images([], tmp_path / "missing")
