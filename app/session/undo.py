"""Undoable edits of an ``AnnotationStore`` (for a ``QUndoStack``): accept, delete, reclassify,
rename."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtGui import QUndoCommand

from app.session.annotations import AnnotationStore


class AddAnnotationCommand(QUndoCommand):
    """Accept a new annotation (appended to the list)."""

    def __init__(self, store: AnnotationStore, annotation: Any):
        label = annotation.path_class.name if annotation.path_class is not None else "annotation"
        super().__init__(f"Accept {label}")
        self._store = store
        self._annotation = annotation

    def redo(self) -> None:
        self._store.add(self._annotation)

    def undo(self) -> None:
        self._store.remove(self._annotation.id)


class DeleteAnnotationsCommand(QUndoCommand):
    """Delete annotations; undo puts each back at the row it had."""

    def __init__(self, store: AnnotationStore, annotation_ids: Sequence[str]):
        count = len(annotation_ids)
        super().__init__(f"Delete {count} annotation{'s' if count != 1 else ''}")
        self._store = store
        self._ids = list(annotation_ids)
        self._removed: list[tuple[Any, int]] = []

    def redo(self) -> None:
        self._removed = [self._store.remove(i) for i in self._ids if i in self._store]

    def undo(self) -> None:
        # rows were recorded as each one was removed, so put them back in reverse order
        for annotation, row in reversed(self._removed):
            self._store.add(annotation, row)
        self._removed = []


class SetClassCommand(QUndoCommand):
    """Give annotations a class (``path_class`` is a ``qupath_bridge.PathClass`` or None)."""

    def __init__(self, store: AnnotationStore, annotation_ids: Sequence[str], path_class: Any):
        name = path_class.name if path_class is not None else "Unclassified"
        super().__init__(f"Set class {name}")
        self._store = store
        self._ids = list(annotation_ids)
        self._new = path_class
        self._old: dict[str, Any] = {i: store.get(i).path_class for i in self._ids}

    def redo(self) -> None:
        for annotation_id in self._ids:
            self._store.update(annotation_id, path_class=self._new)

    def undo(self) -> None:
        for annotation_id in self._ids:
            self._store.update(annotation_id, path_class=self._old[annotation_id])


class RenameCommand(QUndoCommand):
    """Set an annotation's name (``None`` or "" clears it)."""

    def __init__(self, store: AnnotationStore, annotation_id: str, name: str | None):
        super().__init__("Rename annotation")
        self._store = store
        self._id = annotation_id
        self._new = name or None
        self._old = store.get(annotation_id).name

    def redo(self) -> None:
        self._store.update(self._id, name=self._new)

    def undo(self) -> None:
        self._store.update(self._id, name=self._old)
