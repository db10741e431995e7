# ruff: noqa: N815  (Qt names signals in camelCase)
"""Annotation classes: names and colours, as QuPath has them, editable by the user."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

RGB = tuple[int, int, int]

# Colour for a class that has none (QuPath draws unclassified objects red).
UNCLASSIFIED_COLOR: RGB = (255, 0, 0)


@dataclass(frozen=True)
class ClassEntry:
    """One annotation class: its QuPath name (``"Tumor"``, ``"Tumor: Grade 2"``) and colour."""

    name: str
    color: RGB

    def to_path_class(self):  # -> qupath_bridge.PathClass
        import qupath_bridge

        return qupath_bridge.PathClass.from_name(self.name, self.color)

    @classmethod
    def from_path_class(cls, path_class) -> ClassEntry:
        color = path_class.color
        return cls(path_class.name, tuple(color) if color is not None else UNCLASSIFIED_COLOR)


def default_classes() -> list[ClassEntry]:
    """QuPath's default classes with their colours (``qupath_bridge.DEFAULT_PATH_CLASSES``)."""
    import qupath_bridge

    return [ClassEntry.from_path_class(pc) for pc in qupath_bridge.DEFAULT_PATH_CLASSES]


class ClassList(QObject):
    """The ordered, user-editable list of classes; index 0..8 are the number-key shortcuts 1-9.

    ``current`` is the class given to the next accepted annotation (``None``: unclassified).
    """

    changed = Signal()  # the list itself changed (added, renamed, recoloured, replaced)
    currentChanged = Signal(object)  # ClassEntry | None

    def __init__(self, classes: Iterable[ClassEntry] = (), parent: QObject | None = None):
        super().__init__(parent)
        self._classes: list[ClassEntry] = []
        self._current: ClassEntry | None = None
        self.set_classes(classes)

    def classes(self) -> list[ClassEntry]:
        return list(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __getitem__(self, index: int) -> ClassEntry:
        return self._classes[index]

    def names(self) -> list[str]:
        return [c.name for c in self._classes]

    def find(self, name: str) -> ClassEntry | None:
        for entry in self._classes:
            if entry.name == name:
                return entry
        return None

    def color_for(self, name: str | None) -> RGB:
        entry = self.find(name) if name else None
        return entry.color if entry else UNCLASSIFIED_COLOR

    def set_classes(self, classes: Iterable[ClassEntry]) -> None:
        entries: list[ClassEntry] = []
        seen: set[str] = set()
        for entry in classes:
            if entry.name not in seen:
                seen.add(entry.name)
                entries.append(entry)
        self._classes = entries
        if self._current is not None:
            self._current = self.find(self._current.name)
        self.changed.emit()
        self.currentChanged.emit(self._current)

    def merge(self, classes: Iterable[ClassEntry]) -> None:
        """Add the classes not in the list yet (e.g. those of an opened project or annotations)."""
        extra = [c for c in classes if self.find(c.name) is None]
        if extra:
            self.set_classes([*self._classes, *extra])

    def add(self, name: str, color: RGB) -> ClassEntry:
        name = _clean_name(name)
        if self.find(name) is not None:
            raise ValueError(f"a class named {name!r} exists already")
        entry = ClassEntry(name, _clean_color(color))
        self._classes.append(entry)
        self.changed.emit()
        return entry

    def rename(self, index: int, name: str) -> ClassEntry:
        name = _clean_name(name)
        old = self._classes[index]
        if name != old.name and self.find(name) is not None:
            raise ValueError(f"a class named {name!r} exists already")
        return self._replace(index, ClassEntry(name, old.color))

    def recolor(self, index: int, color: RGB) -> ClassEntry:
        old = self._classes[index]
        return self._replace(index, ClassEntry(old.name, _clean_color(color)))

    def remove(self, index: int) -> None:
        removed = self._classes.pop(index)
        self.changed.emit()
        if self._current == removed:
            self.set_current(None)

    def current(self) -> ClassEntry | None:
        return self._current

    def set_current(self, entry: ClassEntry | str | None) -> None:
        if isinstance(entry, str):
            found = self.find(entry)
            if found is None:
                raise ValueError(f"no class named {entry!r}")
            entry = found
        self._current = entry
        self.currentChanged.emit(entry)

    def set_current_index(self, index: int) -> bool:
        """Select the class at ``index`` (the number keys); False when there is none."""
        if 0 <= index < len(self._classes):
            self.set_current(self._classes[index])
            return True
        return False

    def _replace(self, index: int, entry: ClassEntry) -> ClassEntry:
        old = self._classes[index]
        self._classes[index] = entry
        self.changed.emit()
        if self._current == old:
            self.set_current(entry)
        return entry


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("a class name cannot be empty")
    return name


def _clean_color(color: Iterable[int]) -> RGB:
    values = tuple(int(v) for v in color)
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"a colour is three values 0-255, got {values!r}")
    return values[0], values[1], values[2]
