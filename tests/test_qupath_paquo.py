"""Integration tests against a real QuPath through paquo.

They run where QuPath is installed (point paquo at it with PAQUO_QUPATH_DIR) and are skipped,
with the reason, where it is not (QuPath cannot be installed in this project's CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from qupath_bridge import (
    Annotation,
    PathClass,
    ProjectError,
    create_project,
    open_project,
    qupath_status,
)

pytestmark = [
    pytest.mark.qupath,
    pytest.mark.skipif(not qupath_status().available, reason=qupath_status().message),
]


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    """A small tiled RGB TIFF that QuPath opens."""
    import tifffile

    path = tmp_path / "slides" / "slide.tif"
    path.parent.mkdir()
    image = np.zeros((512, 512, 3), np.uint8)
    image[128:384, 128:384] = (200, 80, 160)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
    return path


@pytest.fixture
def project_dir(tmp_path: Path, slide: Path) -> Path:
    folder = tmp_path / "project"
    project = create_project(folder)
    project.add_image(slide)
    return folder


def app_annotations() -> list[Annotation]:
    tumour = PathClass(("Tumor",), (200, 0, 0))
    return [
        Annotation(
            shapely.Polygon(
                [(100, 100), (300, 100), (300, 300), (100, 300)],
                [[(150, 150), (200, 150), (200, 200), (150, 200)]],
            ),
            path_class=tumour,
            name="lesion with hole",
            locked=True,
            measurements={"WSI-SAM score": 0.93},
        ),
        Annotation(
            shapely.MultiPolygon([shapely.box(10, 10, 40, 40), shapely.box(60, 60, 90, 90)]),
            path_class=PathClass(("Tumor", "Positive"), (250, 62, 62)),
            name="two parts",
        ),
        Annotation(shapely.box(400, 400, 420, 420), object_type="detection"),
        Annotation(
            shapely.box(430, 430, 470, 470),
            object_type="cell",
            nucleus_geometry=shapely.box(440, 440, 460, 460),
            path_class=PathClass(("Ünïcode class ✓",), (1, 2, 3)),
        ),
    ]


def test_status_reports_version() -> None:
    status = qupath_status()
    assert status.available and status.path is not None
    assert status.version is None or status.version[0].isdigit()


def test_create_and_add_image(project_dir: Path, slide: Path) -> None:
    project = open_project(project_dir)
    assert project.qupath_version is not None
    (image,) = project.images
    assert image.path == slide and image.exists
    with pytest.raises(ProjectError, match="already in the project"):
        open_project(project_dir, mode="r+").add_image(slide)


def test_write_then_read_back(project_dir: Path) -> None:
    written = app_annotations()
    open_project(project_dir, mode="r+").write_annotations(0, written)
    read = {a.id: a for a in open_project(project_dir).read_annotations(0)}
    assert set(read) == {a.id for a in written}
    for a in written:
        b = read[a.id]
        assert b.object_type == a.object_type
        assert (b.path_class is None) == (a.path_class is None)
        if a.path_class is not None:
            assert b.path_class is not None and b.path_class.name == a.path_class.name
        assert b.name == a.name and b.locked == a.locked
        assert b.geometry.normalize().equals_exact(a.geometry.normalize(), 1e-6)
        for key, value in a.measurements.items():
            assert b.measurements[key] == pytest.approx(value)
        if a.nucleus_geometry is not None:
            assert b.nucleus_geometry is not None
            assert b.nucleus_geometry.equals(a.nucleus_geometry)
    classes = {c.name: c for c in open_project(project_dir).path_classes}
    assert classes["Ünïcode class ✓"].color == (1, 2, 3)
    assert "Tumor: Positive" in classes
    backups = list((project_dir / "wsi-sam" / "backups").iterdir())
    assert len(backups) >= 1 and (backups[0] / "project.qpproj").is_file()


def test_other_objects_are_left_untouched(project_dir: Path) -> None:
    project = open_project(project_dir, mode="r+")
    backend = project._get_backend()
    assert backend is not None
    entry = backend._project.images[0]
    native = entry.hierarchy.add_annotation(roi=shapely.box(5, 5, 50, 50))
    native.name = "drawn in QuPath"
    entry.java_object.saveImageData(entry._image_data)
    (before,) = open_project(project_dir).read_annotations(0)

    first, second, *_ = app_annotations()
    project.write_annotations(0, [first, second])
    replaced = Annotation(shapely.box(0, 0, 7, 7), name="replaced", id=first.id)
    project.write_annotations(0, [replaced], replace_ids=[second.id])

    objects = {a.id: a for a in open_project(project_dir).read_annotations(0)}
    assert set(objects) == {before.id, first.id}
    assert objects[first.id].name == "replaced"
    kept = objects[before.id]
    assert kept.name == "drawn in QuPath"
    assert kept.geometry.equals(before.geometry)
    assert json.dumps(kept.measurements, sort_keys=True) == json.dumps(
        before.measurements, sort_keys=True
    )


def test_sidecar_made_without_qupath_is_merged(project_dir: Path) -> None:
    project = open_project(project_dir)
    offline = Annotation(shapely.box(1, 1, 9, 9), name="offline")
    project.write_sidecar(0, [offline])
    writer = open_project(project_dir, mode="r+")
    assert [a.name for a in writer.read_annotations(0)] == ["offline"]
    writer.write_annotations(0, [])
    assert not (project_dir / "wsi-sam" / "1.geojson").exists()
    assert [a.id for a in open_project(project_dir).read_annotations(0)] == [offline.id]


def test_read_only_mode_refuses_writes(project_dir: Path) -> None:
    with pytest.raises(ProjectError, match="read-only"):
        open_project(project_dir).write_annotations(0, app_annotations())
