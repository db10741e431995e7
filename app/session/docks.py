# ruff: noqa: N815  (Qt names signals in camelCase)
"""Dock widgets of the main window: annotation list, classes, QuPath project images."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.session.annotations import AnnotationStore
from app.session.classes import ClassEntry, ClassList
from app.session.overlay import class_color

ID_ROLE = Qt.ItemDataRole.UserRole


def color_icon(color: QColor, size: int = 12) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(color)
    return QIcon(pixmap)


def describe_area(geometry: Any, mpp: tuple[float, float] | None) -> str:
    if geometry is None:
        return ""
    area = float(geometry.area)
    if mpp:
        um2 = area * mpp[0] * mpp[1]
        return f"{um2 / 1e6:.3f} mm²" if um2 >= 1e5 else f"{um2:,.0f} µm²"
    return f"{area:,.0f} px²"


class AnnotationDock(QDockWidget):
    """The annotations of the slide: select to highlight and centre, rename in place, delete and
    reclassify from the context menu (the window turns these requests into undoable commands)."""

    selectionChangedIds = Signal(list)
    deleteRequested = Signal(list)
    setClassRequested = Signal(list, object)  # ids, ClassEntry | None
    renameRequested = Signal(str, str)

    def __init__(self, store: AnnotationStore, classes: ClassList, parent: QWidget | None = None):
        super().__init__("Annotations", parent)
        self.setObjectName("annotationDock")
        self._store = store
        self._classes = classes
        self.mpp: tuple[float, float] | None = None
        self.tree = QTreeWidget()
        self.tree.setObjectName("annotationList")
        self.tree.setColumnCount(3)
        self.tree.setHeaderLabels(["Name", "Class", "Area"])
        self.tree.setRootIsDecorated(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.itemSelectionChanged.connect(self._on_selection)
        self.tree.itemChanged.connect(self._on_item_changed)
        self.setWidget(self.tree)
        store.reset.connect(self.rebuild)
        store.added.connect(self._on_added)
        store.removed.connect(self._on_removed)
        store.changed.connect(self._on_changed)
        classes.changed.connect(self.rebuild)

    def count(self) -> int:
        return self.tree.topLevelItemCount()

    def item_for(self, annotation_id: str) -> QTreeWidgetItem | None:
        for row in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(row)
            if item is not None and item.data(0, ID_ROLE) == annotation_id:
                return item
        return None

    def row_texts(self, row: int) -> tuple[str, str, str]:
        item = self.tree.topLevelItem(row)
        assert item is not None
        return item.text(0), item.text(1), item.text(2)

    def selected_ids(self) -> list[str]:
        return [str(item.data(0, ID_ROLE)) for item in self.tree.selectedItems()]

    def select_ids(self, annotation_ids: list[str]) -> None:
        wanted = set(annotation_ids)
        with QSignalBlocker(self.tree):
            self.tree.clearSelection()
            for row in range(self.tree.topLevelItemCount()):
                item = self.tree.topLevelItem(row)
                if item is not None and item.data(0, ID_ROLE) in wanted:
                    item.setSelected(True)
                    self.tree.scrollToItem(item)
        self._on_selection()

    def rebuild(self) -> None:
        with QSignalBlocker(self.tree):
            self.tree.clear()
            for row, annotation_id in enumerate(self._store.ids()):
                self.tree.insertTopLevelItem(row, self._make_item(annotation_id))
        self._on_selection()

    def _make_item(self, annotation_id: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem()
        item.setData(0, ID_ROLE, annotation_id)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        self._fill(item)
        return item

    def _fill(self, item: QTreeWidgetItem) -> None:
        annotation = self._store.get(str(item.data(0, ID_ROLE)))
        with QSignalBlocker(self.tree):
            item.setText(0, annotation.name or "")
            item.setText(1, annotation.path_class.name if annotation.path_class else "Unclassified")
            item.setIcon(1, color_icon(class_color(self._classes, annotation)))
            item.setText(2, describe_area(annotation.geometry, self.mpp))
            item.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def _on_added(self, annotation_id: str, row: int) -> None:
        with QSignalBlocker(self.tree):
            self.tree.insertTopLevelItem(row, self._make_item(annotation_id))

    def _on_removed(self, annotation_id: str, _row: int) -> None:
        item = self.item_for(annotation_id)
        if item is not None:
            with QSignalBlocker(self.tree):
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
            self._on_selection()

    def _on_changed(self, annotation_id: str) -> None:
        item = self.item_for(annotation_id)
        if item is not None:
            self._fill(item)

    def _on_selection(self) -> None:
        self.selectionChangedIds.emit(self.selected_ids())

    def _on_item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if column != 0:
            return
        annotation_id = str(item.data(0, ID_ROLE))
        name = item.text(0).strip()
        if (self._store.get(annotation_id).name or "") != name:
            self.renameRequested.emit(annotation_id, name)

    def _context_menu(self, pos: Any) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        menu = QMenu(self)
        rename = menu.addAction("Rename…")
        rename.setEnabled(len(ids) == 1)
        rename.triggered.connect(lambda: self._start_rename(ids[0]))
        classes = menu.addMenu("Set class")
        for entry in [None, *self._classes.classes()]:
            action = QAction(entry.name if entry else "Unclassified", classes)
            if entry is not None:
                action.setIcon(color_icon(QColor(*entry.color)))
            action.triggered.connect(
                lambda _checked=False, e=entry: self.setClassRequested.emit(ids, e)
            )
            classes.addAction(action)
        menu.addSeparator()
        delete = menu.addAction(f"Delete ({len(ids)})")
        delete.triggered.connect(lambda: self.deleteRequested.emit(ids))
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    def _start_rename(self, annotation_id: str) -> None:
        item = self.item_for(annotation_id)
        if item is not None:
            self.tree.editItem(item, 0)


class ClassDock(QDockWidget):
    """The class list: click to choose the class of the next accepted annotation (or press 1-9);
    add, rename, recolour, remove; apply the chosen class to the selected annotations."""

    addRequested = Signal()
    renameRequested = Signal(int)
    recolorRequested = Signal(int)
    removeRequested = Signal(int)
    applyRequested = Signal(object)  # ClassEntry | None

    def __init__(self, classes: ClassList, parent: QWidget | None = None):
        super().__init__("Classes", parent)
        self.setObjectName("classDock")
        self._classes = classes
        self.list = QListWidget()
        self.list.setObjectName("classList")
        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemDoubleClicked.connect(
            lambda item: self.recolorRequested.emit(self.list.row(item) - 1)
        )
        buttons = QHBoxLayout()
        for text, slot, tip in (
            ("Add", self.addRequested.emit, "Add a class"),
            ("Rename", lambda: self._emit_row(self.renameRequested), "Rename the class"),
            ("Colour", lambda: self._emit_row(self.recolorRequested), "Change its colour"),
            ("Remove", lambda: self._emit_row(self.removeRequested), "Remove it from the list"),
            (
                "Apply",
                lambda: self.applyRequested.emit(self._classes.current()),
                "Give the selected annotations this class",
            ),
        ):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        self.setWidget(body)
        classes.changed.connect(self.rebuild)
        classes.currentChanged.connect(self._show_current)
        self.rebuild()

    def rebuild(self) -> None:
        with QSignalBlocker(self.list):
            self.list.clear()
            unclassified = QListWidgetItem("Unclassified")
            unclassified.setIcon(color_icon(QColor(*self._classes.color_for(None))))
            self.list.addItem(unclassified)
            for index, entry in enumerate(self._classes.classes()):
                key = f"  ({index + 1})" if index < 9 else ""
                item = QListWidgetItem(f"{entry.name}{key}")
                item.setIcon(color_icon(QColor(*entry.color)))
                self.list.addItem(item)
        self._show_current(self._classes.current())

    def _show_current(self, entry: ClassEntry | None) -> None:
        names = self._classes.names()
        row = names.index(entry.name) + 1 if entry is not None and entry.name in names else 0
        with QSignalBlocker(self.list):
            self.list.setCurrentRow(row)

    def _on_row(self, row: int) -> None:
        if row <= 0:
            self._classes.set_current(None)
        else:
            self._classes.set_current_index(row - 1)

    def _emit_row(self, signal: Any) -> None:
        row = self.list.currentRow() - 1
        if row >= 0:
            signal.emit(row)


class ProjectDock(QDockWidget):
    """The images of the open QuPath project; missing ones are shown as such."""

    imageActivated = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Project", parent)
        self.setObjectName("projectDock")
        self.list = QListWidget()
        self.list.setObjectName("projectImages")
        self.list.itemActivated.connect(lambda item: self.imageActivated.emit(self.list.row(item)))
        self.list.itemDoubleClicked.connect(
            lambda item: self.imageActivated.emit(self.list.row(item))
        )
        self.setWidget(self.list)

    def set_images(self, images: list[Any]) -> None:
        self.list.clear()
        for image in images:
            exists = bool(getattr(image, "exists", True))
            text = image.name if exists else f"{image.name}  (missing)"
            item = QListWidgetItem(text)
            where = getattr(image, "path", None) or getattr(image, "uri", "")
            item.setToolTip(str(where) if exists else f"Image file not found: {where}")
            if not exists:
                item.setForeground(QColor(150, 150, 150))
            self.list.addItem(item)

    def set_current(self, index: int) -> None:
        with QSignalBlocker(self.list):
            self.list.setCurrentRow(index)
