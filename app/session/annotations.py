"""The annotations of the open slide, in order, with change signals for the views and the journal.

Items are ``qupath_bridge.Annotation`` objects (geometry in level-0 pixels) so that whatever a
QuPath project or GeoJSON file carried (measurements, metadata, locks) survives a round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QObject, Signal


class AnnotationStore(QObject):
    """Ordered annotations keyed by id.

    Signals carry ids; ``reset`` means "everything changed" (a slide was opened or restored) and
    is not a user edit, so the journal does not record it.
    """

    added = Signal(str, int)  # id, row
    removed = Signal(str, int)  # id, row it had
    changed = Signal(str)  # id (class or name changed)
    reset = Signal()
    edited = Signal()  # after any user edit (added / removed / changed)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._items: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, annotation_id: object) -> bool:
        return annotation_id in self._items

    def __iter__(self):
        return iter(list(self._items.values()))

    def annotations(self) -> list[Any]:
        return list(self._items.values())

    def ids(self) -> list[str]:
        return list(self._items)

    def get(self, annotation_id: str) -> Any:
        try:
            return self._items[annotation_id]
        except KeyError:
            raise KeyError(f"no annotation with id {annotation_id!r}") from None

    def row_of(self, annotation_id: str) -> int:
        return self.ids().index(annotation_id)

    def set_all(self, annotations: Iterable[Any]) -> None:
        """Replace the whole content (opening or restoring); emits ``reset`` only."""
        self._items = {a.id: a for a in annotations}
        self.reset.emit()

    def add(self, annotation: Any, row: int | None = None) -> None:
        if annotation.id in self._items:
            raise ValueError(f"annotation {annotation.id!r} is in the list already")
        items = list(self._items.items())
        row = len(items) if row is None else max(0, min(row, len(items)))
        items.insert(row, (annotation.id, annotation))
        self._items = dict(items)
        self.added.emit(annotation.id, row)
        self.edited.emit()

    def remove(self, annotation_id: str) -> tuple[Any, int]:
        """Remove and return ``(annotation, row it had)``."""
        row = self.row_of(annotation_id)
        annotation = self._items.pop(annotation_id)
        self.removed.emit(annotation_id, row)
        self.edited.emit()
        return annotation, row

    def update(self, annotation_id: str, **changes: Any) -> Any:
        """Replace fields of one annotation (``path_class=``, ``name=``); returns the old one."""
        old = self.get(annotation_id)
        self._items[annotation_id] = dataclasses.replace(old, **changes)
        self.changed.emit(annotation_id)
        self.edited.emit()
        return old
