"""QuPath projects: the JSON-only reader on real project files, the no-QuPath behaviour, the
sidecar, read-only folders, and the write path (backup, replace, restore) with a stand-in for
QuPath. The real QuPath tests are in test_qupath_paquo.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

import pytest
import shapely

import qupath_bridge
import qupath_bridge.files
import qupath_bridge.qupath
from qupath_bridge import (
    DEFAULT_PATH_CLASSES,
    Annotation,
    PathClass,
    Project,
    ProjectError,
    ProjectImage,
    QuPathNotFoundError,
    QuPathStatus,
    create_project,
    open_project,
    path_from_uri,
    qupath_status,
    read_geojson,
)
from qupath_bridge.model import packed_from_rgb

DATA = Path(__file__).parent / "data" / "qupath"
PROJECTS = {
    "0.3.2": DATA / "nedaghohabi__Histopathology-Image-Tiling",
    "0.4.3": DATA / "CosciaLab__Qupath_to_LMD" / "5_test_qupath_project",
    "0.6.0": DATA / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project",
    "0.6.0-rc3": DATA / "sbalci__metadata-qupath",
}
NO_QUPATH = QuPathStatus(False, None, None, "No QuPath installation was found (test).")
HAS_QUPATH = QuPathStatus(True, "0.5.1", Path("/opt/QuPath"), "QuPath 0.5.1 found (test).")


def set_status(monkeypatch: pytest.MonkeyPatch, status: QuPathStatus) -> None:
    monkeypatch.setattr(qupath_bridge.qupath, "_detect", lambda: status)
    qupath_status(refresh=True)


@pytest.fixture(autouse=True)
def no_qupath(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests describe the behaviour without QuPath, whatever this machine has."""
    set_status(monkeypatch, NO_QUPATH)
    yield
    monkeypatch.undo()
    qupath_status(refresh=True)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_project(folder: Path, images: list[dict[str, Any]], uri: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    project = {"version": "0.5.1", "images": images, "lastID": len(images)}
    if uri is not None:
        project["uri"] = uri
    (folder / "project.qpproj").write_text(json.dumps(project), encoding="utf-8")
    return folder


def uri_entry(entry_id: int, uri: str, name: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "serverBuilder": {"builderType": "uri", "providerClassName": "x", "uri": uri, "args": []},
        "entryID": entry_id,
        "randomizedName": f"00000000-0000-0000-0000-{entry_id:012d}",
    }
    if name is not None:
        entry["imageName"] = name
    return entry


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A writable copy of the real QuPath 0.6.0 project, with image 1's real data.qpdata."""
    folder = tmp_path / "demo"
    shutil.copytree(PROJECTS["0.6.0"], folder)
    assert (folder / "data" / "1" / "data.qpdata").is_file()
    return folder


# ------------------------------------------------------------------ JSON-only reader, real files


@pytest.mark.parametrize("version", sorted(PROJECTS))
def test_real_project_files(version: str) -> None:
    folder = PROJECTS[version]
    raw = json.loads((folder / "project.qpproj").read_text(encoding="utf-8"))
    project = open_project(folder)
    assert project.qupath_version == version
    assert project.read_only
    assert project.path == folder.absolute()
    assert len(project.images) == len(raw["images"])
    for image, entry in zip(project.images, raw["images"], strict=True):
        assert image.entry_id == str(entry["entryID"])
        assert image.name == entry["imageName"]
        assert image.uri == entry["serverBuilder"]["uri"]
        assert not image.exists  # the slides are on the authors' drives
    classes_file = folder / "classifiers" / "classes.json"
    if classes_file.exists():
        raw_classes = json.loads(classes_file.read_text(encoding="utf-8"))["pathClasses"]
        assert [c.name for c in project.path_classes] == [c["name"] for c in raw_classes]
        first = project.path_classes[0]
        assert first.color is not None
        assert packed_from_rgb(first.color) == raw_classes[0]["color"]
    else:
        assert project.path_classes == DEFAULT_PATH_CLASSES


def test_same_project_from_folder_or_file() -> None:
    folder = PROJECTS["0.6.0-rc3"]
    by_folder, by_file = open_project(folder), open_project(folder / "project.qpproj")
    assert by_folder.images == by_file.images
    assert by_folder.path == by_file.path


def test_image_details_from_real_projects() -> None:
    image = open_project(PROJECTS["0.6.0-rc3"]).images[-1]
    assert image.entry_id == "107"
    assert (image.width, image.height) == (114183, 75006)
    # percent-encoded Windows path (Turkish Ş): decoded, but not a path on this machine
    decoded = path_from_uri(image.uri or "")
    assert decoded == PureWindowsPath(
        "E:/KONTROLHE_2025/ŞUBAT18.02.25_HE_0/kontrol18.02.2025_10_30_SS45328_041116.svs"
    )
    if os.name != "nt":
        assert image.path is None
    mac = open_project(PROJECTS["0.6.0"]).images[0]
    assert mac.width == 1000
    if os.name != "nt":
        assert mac.path == Path(
            "/Volumes/RD_Coscia/Jose/__TestDatasets/TD_01_verysmall_mIF.ome.tif"
        )
    scenes = open_project(PROJECTS["0.4.3"]).images
    assert [i.name for i in scenes] == [
        "2023_02_08__167_030_4_Glass.czi - Scene #1",
        "2023_02_08__167_030_4_Glass.czi - Scene #2",
    ]


def test_default_classes_are_qupaths() -> None:
    # sbalci's classes.json starts with QuPath's defaults as QuPath wrote them.
    real = open_project(PROJECTS["0.6.0-rc3"]).path_classes[: len(DEFAULT_PATH_CLASSES)]
    assert real == DEFAULT_PATH_CLASSES


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/C:/Users/me/slide%201.svs", PureWindowsPath("C:/Users/me/slide 1.svs")),
        ("file:///D:/a/b.ndpi", PureWindowsPath("D:/a/b.ndpi")),
        ("file:/Volumes/Lab/x.svs", PurePosixPath("/Volumes/Lab/x.svs")),
        ("file:///home/me/x.tif", PurePosixPath("/home/me/x.tif")),
        ("file://server/share/x.svs", PureWindowsPath("//server/share/x.svs")),
        ("file:////server/share/x.svs", PureWindowsPath("//server/share/x.svs")),
        ("https://example.org/x.svs", None),
        ("omero://host/image/1", None),
    ],
)
def test_uri_decoding(uri: str, expected: object) -> None:
    assert path_from_uri(uri) == expected


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths")
def test_local_image_exists(tmp_path: Path) -> None:
    slide = tmp_path / "slides" / "my slide Ş.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"x")
    folder = make_project(
        tmp_path / "p", [uri_entry(1, slide.as_uri()), uri_entry(2, "file:/gone.svs")]
    )
    first, second = open_project(folder).images
    assert first.path == slide and first.exists
    assert first.name == "00000000-0000-0000-0000-000000000001"  # no imageName: QuPath's name
    assert second.path == Path("/gone.svs") and not second.exists


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths")
def test_moved_project_finds_slides_beside_it(tmp_path: Path) -> None:
    """A project copied with its slides to another disk: QuPath looks relative to the project."""
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.svs").write_bytes(b"x")
    folder = make_project(
        tmp_path / "proj",
        [uri_entry(1, "file:/old/disk/slides/a.svs", "a.svs")],
        uri="file:/old/disk/proj/project.qpproj",
    )
    (image,) = open_project(folder).images
    assert image.uri == "file:/old/disk/slides/a.svs"
    assert image.path == tmp_path / "slides" / "a.svs"
    assert image.exists


def test_nested_server_builders(tmp_path: Path) -> None:
    rotated = {
        "builderType": "rotated",
        "rotation": "ROTATE_180",
        "builder": {
            "builderType": "uri",
            "uri": "file:/a.svs",
            "metadata": {"width": 7, "height": 5},
        },
    }
    channels = {
        "builderType": "channels",
        "builders": [
            {"builderType": "uri", "uri": "file:/c1.tif"},
            {"builderType": "uri", "uri": "file:/c2.tif"},
        ],
    }
    sparse = {
        "builderType": "sparse",
        "regions": [{"region": {}, "builder": {"uri": "file:/s.tif"}}],
    }
    legacy = {"path": "/old/qupath01.svs", "imageName": "old", "entryID": 4}
    entries = [
        {"serverBuilder": rotated, "entryID": 1},
        {"serverBuilder": channels, "entryID": 2},
        {"serverBuilder": sparse, "entryID": 3},
        legacy,
    ]
    images = open_project(make_project(tmp_path / "p", entries)).images
    assert images[0].uri == "file:/a.svs" and (images[0].width, images[0].height) == (7, 5)
    assert images[1].uris == ("file:/c1.tif", "file:/c2.tif")
    assert images[2].uri == "file:/s.tif"
    assert images[3].uri == "/old/qupath01.svs"


def test_missing_and_damaged_class_list(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "p", [])
    assert open_project(folder).path_classes == DEFAULT_PATH_CLASSES
    (folder / "classifiers").mkdir()
    (folder / "classifiers" / "classes.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"classes.json is not a valid QuPath class list"):
        project = open_project(folder)
    assert project.path_classes == DEFAULT_PATH_CLASSES


def test_image_lookup() -> None:
    project = open_project(PROJECTS["0.3.2"])
    first = project.images[0]
    assert project.image(0) == project.image(first.entry_id) == project.image(first.name) == first
    assert project.image(-1).entry_id == "459"
    assert project.image(first) == first
    with pytest.raises(ProjectError, match="image index 4 is out of range: the project has 4"):
        project.image(4)
    with pytest.raises(ProjectError, match=r"no image 'x.svs' in the project .*\(images: 'TCGA"):
        project.image("x.svs")
    stranger = ProjectImage("s", "999", None, None, False)
    with pytest.raises(ProjectError, match=r"the image 's' \(entry 999\) is not in"):
        project.image(stranger)
    with pytest.raises(ProjectError, match=r"not 2\.5"):
        project.image(2.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ not a project


def test_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=r"no QuPath project at .*nowhere: the folder does not"):
        open_project(tmp_path / "nowhere")
    with pytest.raises(ProjectError, match=r"no QuPath project at .*x.qpproj: the file does not"):
        open_project(tmp_path / "x.qpproj")
    with pytest.raises(ProjectError, match=r"is not a QuPath project: it has no project.qpproj"):
        open_project(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(
        ProjectError, match=r"notes.txt is not a QuPath project: expected a project"
    ):
        open_project(text)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "project.qpproj").write_text('{"images": [')
    with pytest.raises(ProjectError, match=r"project.qpproj is not a valid QuPath project file: "):
        open_project(bad)
    (bad / "project.qpproj").write_text('{"images": {}}')
    with pytest.raises(ProjectError, match="'images' is not a list"):
        open_project(bad)
    (bad / "project.qpproj").write_text("[]")
    with pytest.raises(ProjectError, match="expected a JSON object"):
        open_project(bad)
    with pytest.raises(ProjectError, match="unknown mode 'w'"):
        open_project(PROJECTS["0.6.0"], mode="w")  # type: ignore[arg-type]


# ------------------------------------------------------------------ without QuPath


def test_no_qupath_message_says_what_to_do(demo: Path) -> None:
    before = digest(demo)
    project = open_project(demo)
    assert len(project.read_annotations(0)) == 131  # read from data.qpdata without Java
    box = Annotation(shapely.box(0, 0, 10, 10))
    for call in (
        lambda: project.write_annotations(0, [box]),
        lambda: project.add_path_classes([PathClass(("Brand new",))]),
        lambda: project.add_image(__file__),
        lambda: open_project(demo, mode="r+"),
        lambda: create_project(demo.parent / "new"),
    ):
        with pytest.raises(QuPathNotFoundError) as error:
            call()
        text = str(error.value)
        assert "needs QuPath" in text and "PAQUO_QUPATH_DIR" in text
        assert "export the annotations as QuPath GeoJSON" in text
        assert text.count(". ") == 0  # one sentence
    assert digest(demo) == before
    assert not (demo.parent / "new").exists()


def test_image_without_data_has_no_objects(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "p", [uri_entry(1, "file:/a.svs", "a")])
    assert open_project(folder).read_annotations("a") == []


def test_known_classes_need_no_writing(demo: Path) -> None:
    project = open_project(demo)
    project.add_path_classes([project.path_classes[0]])  # nothing new: fine without QuPath


def test_sidecar_keeps_annotations_without_qupath(demo: Path) -> None:
    before = digest(demo)
    project = open_project(demo)
    tumour = PathClass(("Tumor",), (200, 0, 0))
    a = Annotation(shapely.box(0, 0, 10, 10), path_class=tumour, name="a")
    b = Annotation(shapely.box(20, 20, 30, 30), name="b")
    qupath_objects = project.read_annotations(0)
    path = project.write_sidecar(0, [a, b])
    assert path == demo / "wsi-sam" / "1.geojson"
    assert [x.name for x in project.read_annotations(0)[-2:]] == ["a", "b"]
    # replace a, remove b, add c
    a2 = Annotation(shapely.box(0, 0, 12, 12), path_class=tumour, name="a2", id=a.id)
    c = Annotation(shapely.Point(5, 5), name="c")
    project.write_sidecar(0, [a2, c], replace_ids=[b.id])
    again = open_project(demo).read_annotations(0)
    assert [(x.id, x.name) for x in again[-2:]] == [(a.id, "a2"), (c.id, "c")]
    assert again[-2].geometry.equals(shapely.box(0, 0, 12, 12))
    # QuPath's objects come first; an edited one replaces it in place, a deleted one stays gone
    assert [x.id for x in again[:-2]] == [x.id for x in qupath_objects]
    cell = qupath_objects[1]
    moved = Annotation(shapely.box(1, 1, 3, 3), object_type="cell", id=cell.id, name="edited")
    project.write_sidecar(0, [moved], replace_ids=[qupath_objects[2].id])
    edited = open_project(demo).read_annotations(0)
    assert edited[1].name == "edited" and edited[1].parent_id == cell.parent_id
    assert qupath_objects[2].id not in {x.id for x in edited}
    assert len(edited) == len(again) - 1
    # QuPath's own files are untouched; the sidecar is plain QuPath GeoJSON
    after = digest(demo)
    assert {k: v for k, v in after.items() if not k.startswith("wsi-sam")} == before
    assert len(read_geojson(path)) == 3


# ------------------------------------------------------------------ read-only folders


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make chosen folders look read-only. Tests may run as root, for whom chmod does not make
    a folder read-only, so os.access is patched as a read-only mount would answer."""
    folders: set[Path] = set()
    real_access = os.access

    def access(path: Any, mode: int) -> bool:
        if Path(path).absolute() in folders and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(qupath_bridge.files.os, "access", access)
    return folders


def test_read_only_project_folder(demo: Path, read_only: set[Path]) -> None:
    read_only.add(demo.absolute())
    project = open_project(demo)  # reading is fine
    assert len(project.images) == 1
    with pytest.raises(
        ProjectError, match=r"cannot open .*demo for writing: the folder is read-only"
    ):
        open_project(demo, mode="r+")
    with pytest.raises(
        ProjectError, match=r"cannot save annotations in the project folder .*read-only"
    ):
        project.write_sidecar(0, [Annotation(shapely.box(0, 0, 1, 1))])
    assert not (demo / "wsi-sam").exists()
    empty = demo.parent / "empty"
    empty.mkdir()
    read_only.add(empty.absolute())
    with pytest.raises(ProjectError, match=r"cannot create a project in .*empty: .* is read-only"):
        create_project(empty)


def test_write_probe_catches_what_os_access_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert qupath_bridge.files.is_writable_dir(tmp_path)
    assert not qupath_bridge.files.is_writable_dir(tmp_path / "missing")

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(qupath_bridge.files.tempfile, "mkstemp", refuse)
    assert not qupath_bridge.files.is_writable_dir(tmp_path)


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="chmod does not stop root")
def test_chmod_read_only_folder(demo: Path) -> None:
    demo.chmod(0o555)
    try:
        with pytest.raises(ProjectError, match="read-only"):
            open_project(demo, mode="r+")
    finally:
        demo.chmod(0o755)


# ------------------------------------------------------------------ QuPath detection


def test_status_without_qupath_is_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real detection on this machine, cached once
    status = qupath_status(refresh=True)
    assert qupath_status() is status
    if not status.available:
        assert status.version is None and status.path is None
        assert "PAQUO_QUPATH_DIR" in status.message


@pytest.mark.skipif(os.name == "nt" or os.uname().sysname != "Linux", reason="Linux layout")
def test_status_reads_version_from_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import paquo.jpype_backend as backend

    install = tmp_path / "QuPath-v0.5.1"
    (install / "lib" / "app").mkdir(parents=True)
    (install / "lib" / "app" / "qupath-core-0.5.1.jar").write_bytes(b"")
    (install / "lib" / "runtime" / "lib" / "server").mkdir(parents=True)
    (install / "lib" / "runtime" / "lib" / "server" / "libjvm.so").write_bytes(b"")
    monkeypatch.undo()  # the real detection, with paquo's finder pointed at the fake install
    monkeypatch.setattr(
        backend,
        "find_qupath",
        lambda **_: backend.qupath_jvm_info_from_qupath_dir(install, []),
    )
    status = qupath_status(refresh=True)
    assert status == QuPathStatus(True, "0.5.1", install, f"QuPath 0.5.1 found at {install}.")


# ------------------------------------------------------------------ the write path, QuPath faked


class FakeQuPath:
    """Stands in for the paquo backend: objects kept as GeoJSON in data/<id>/data.qpdata."""

    fail_after_writing = False
    opened: ClassVar[list[str]] = []

    def __init__(self, project_file: Path, mode: str) -> None:
        self.folder = project_file.parent
        FakeQuPath.opened.append(mode)

    def _data(self, entry_id: str) -> Path:
        return self.folder / "data" / entry_id / "data.qpdata"

    def read_objects(self, entry_id: str) -> list[Any]:
        return list(json.loads(self._data(entry_id).read_text()))

    def write_objects(self, entry_id: str, features: list[Any], remove_ids: set[str]) -> None:
        path = self._data(entry_id)
        kept = [f for f in self.read_objects(entry_id) if f["id"] not in remove_ids]
        path.write_text(json.dumps(kept + list(features)))
        if FakeQuPath.fail_after_writing:
            (self.folder / "project.qpproj").write_text("half-written")
            raise RuntimeError("Java said no")

    def add_path_classes(self, classes: list[PathClass]) -> None:
        path = self.folder / "classifiers" / "classes.json"
        data = json.loads(path.read_text())
        for c in classes:
            data["pathClasses"].append(
                {"name": c.name, "color": packed_from_rgb(c.color or (0, 0, 0))}
            )
        path.write_text(json.dumps(data))

    def add_image(self, slide: Path) -> str:
        path = self.folder / "project.qpproj"
        data = json.loads(path.read_text())
        data["images"].append(uri_entry(len(data["images"]) + 1, slide.as_uri(), slide.name))
        path.write_text(json.dumps(data))
        return str(len(data["images"]))


QUPATH_OBJECT = {
    "type": "Feature",
    "id": "aaaaaaaa-0000-4000-8000-000000000001",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]]},
    "properties": {"objectType": "detection", "classification": {"name": "Stroma"}},
}


@pytest.fixture
def faked(demo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import qupath_bridge._paquo_backend as backend

    set_status(monkeypatch, HAS_QUPATH)
    monkeypatch.setattr(backend, "PaquoProject", FakeQuPath)
    FakeQuPath.fail_after_writing = False
    FakeQuPath.opened = []
    (demo / "data" / "1" / "data.qpdata").write_text(json.dumps([QUPATH_OBJECT]))
    return demo


def test_write_adds_replaces_removes_and_keeps_the_rest(faked: Path) -> None:
    project = open_project(faked, mode="r+")
    assert isinstance(project, Project) and not project.read_only
    new_class = PathClass(("Lesion", "Grade 2"), (10, 200, 30))
    a = Annotation(shapely.box(10, 10, 20, 20), path_class=new_class, name="a")
    b = Annotation(shapely.box(30, 30, 40, 40), name="b")
    project.write_annotations(0, [a, b])
    objects = project.read_annotations(0)
    assert [o.id for o in objects] == [QUPATH_OBJECT["id"], a.id, b.id]
    assert objects[0].object_type == "detection"  # QuPath's own object untouched
    assert "Lesion: Grade 2" in [c.name for c in project.path_classes]
    assert project.path_classes[-1].color == (10, 200, 30)

    a2 = Annotation(shapely.box(10, 10, 25, 25), name="a again", id=a.id)
    project.write_annotations(project.images[0], [a2], replace_ids=[b.id])
    objects = project.read_annotations("1")
    assert [(o.id, o.name) for o in objects] == [(QUPATH_OBJECT["id"], None), (a.id, "a again")]
    backups = sorted((faked / "wsi-sam" / "backups").iterdir())
    assert len(backups) == 2
    saved = json.loads((backups[1] / "data" / "1" / "data.qpdata").read_text())
    assert [f["id"] for f in saved] == [QUPATH_OBJECT["id"], a.id, b.id]
    assert (backups[1] / "project.qpproj").read_bytes() == (faked / "project.qpproj").read_bytes()


def test_failed_write_restores_the_project(faked: Path) -> None:
    before = digest(faked)
    project = open_project(faked, mode="r+")
    FakeQuPath.fail_after_writing = True
    with pytest.raises(ProjectError, match=r"Java said no.*restored from the backup .*backups"):
        project.write_annotations(0, [Annotation(shapely.box(1, 1, 2, 2))])
    after = digest(faked)
    assert {k: v for k, v in after.items() if not k.startswith("wsi-sam")} == before


def test_bad_annotation_changes_nothing(faked: Path) -> None:
    before = digest(faked)
    project = open_project(faked, mode="r+")
    with pytest.raises(qupath_bridge.GeoJSONError, match="unknown object_type"):
        project.write_annotations(0, [Annotation(shapely.box(1, 1, 2, 2), object_type="blob")])
    assert digest(faked) == before


def test_sidecar_is_merged_into_qupath(faked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_status(monkeypatch, NO_QUPATH)
    offline = open_project(faked)
    kept = Annotation(shapely.box(50, 50, 60, 60), name="made offline")
    dropped = Annotation(shapely.box(70, 70, 80, 80), name="deleted later")
    offline.write_sidecar(0, [kept, dropped])

    set_status(monkeypatch, HAS_QUPATH)
    project = open_project(faked, mode="r+")
    pending = project.read_annotations(0)
    assert [o.name for o in pending] == [None, "made offline", "deleted later"]
    new = Annotation(shapely.box(1, 1, 3, 3), name="new")
    project.write_annotations(0, [new], replace_ids=[dropped.id])
    assert not (faked / "wsi-sam" / "1.geojson").exists()
    (backup,) = (faked / "wsi-sam" / "backups").iterdir()
    assert (backup / "1.geojson").is_file()  # the sidecar is kept with the backup
    names = [o.name for o in project.read_annotations(0)]
    assert names == [None, "new", "made offline"]


def test_read_only_mode_refuses_writes_with_qupath(faked: Path) -> None:
    project = open_project(faked)
    assert len(project.read_annotations(0)) == 1
    assert FakeQuPath.opened == ["r"]
    with pytest.raises(ProjectError, match=r"opened read-only; open it with mode='r\+'"):
        project.write_annotations(0, [Annotation(shapely.box(1, 1, 2, 2))])


def test_add_image_and_classes_with_qupath(faked: Path, tmp_path: Path) -> None:
    project = open_project(faked, mode="r+")
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"x")
    image = project.add_image(slide)
    assert image.name == "slide.svs" and image.exists and image.path == slide
    assert project.images[-1] == image
    with pytest.raises(ProjectError, match="no such file"):
        project.add_image(tmp_path / "missing.svs")
    count = len(project.path_classes)
    existing = project.path_classes[0]
    project.add_path_classes([existing.with_color((1, 2, 3)), PathClass(("Mitosis",), (9, 9, 9))])
    assert len(project.path_classes) == count + 1
    assert project.path_classes[0] == existing  # already there: QuPath's colour is kept
    assert project.path_classes[-1] == PathClass(("Mitosis",), (9, 9, 9))


def test_backups_are_pruned(faked: Path) -> None:
    project = open_project(faked, mode="r+")
    for i in range(12):
        project.write_annotations(0, [Annotation(shapely.box(i, i, i + 1, i + 1))])
    assert len(list((faked / "wsi-sam" / "backups").iterdir())) == 10


def test_replace_ids_must_be_a_collection(faked: Path) -> None:
    project = open_project(faked, mode="r+")
    with pytest.raises(
        ProjectError, match="replace_ids must be a collection of ids, not the string"
    ):
        project.write_annotations(0, [], replace_ids="aaaaaaaa-0000-4000-8000-000000000001")


def test_bridge_imports_no_qt_torch_or_java() -> None:
    import subprocess
    import sys

    code = (
        "import sys, qupath_bridge; qupath_bridge.qupath_status(); "
        "bad = [m for m in ('torch', 'PySide6', 'paquo.projects', 'paquo.java') "
        "if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_objects_deleted_without_qupath_are_removed_on_the_next_write(faked: Path) -> None:
    project = open_project(faked, mode="r+")
    project.write_sidecar(0, [], replace_ids=[QUPATH_OBJECT["id"]])
    removed_file = faked / "wsi-sam" / "1.removed.json"
    assert json.loads(removed_file.read_text())["removed"] == [QUPATH_OBJECT["id"]]
    new = Annotation(shapely.box(1, 1, 2, 2), name="new")
    project.write_annotations(0, [new])
    assert [o.id for o in project.read_annotations(0)] == [new.id]
    assert not removed_file.exists()
    backup = sorted((faked / "wsi-sam" / "backups").iterdir())[-1]
    assert (backup / "1.removed.json").is_file()
