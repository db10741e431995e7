# ruff: noqa: N802, N815  (Qt names its virtual methods and signals in camelCase)
"""The main window: slide viewer, prompt tools, annotation list, classes, project images, saving.

Everything the user does to annotations goes through the undo stack; every change is written to
the slide's crash journal before the next event is handled (see ``app.session.journal``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
    QUndoStack,
)
from PySide6.QtWidgets import (
    QComboBox,
    QLabel,
    QMainWindow,
    QProgressBar,
    QToolBar,
)

from app.controllers.documents import DocumentController
from app.controllers.engine_status import EngineController
from app.controllers.preencode import PreencodeController
from app.controllers.project_objects import ProjectObjectsController
from app.controllers.saving import SaveController
from app.dialogs import Prompter
from app.engine_worker import EngineClient, OptionsFactory, ProgressFn, Segmenter
from app.errors import plain_error
from app.session.annotations import AnnotationStore
from app.session.classes import ClassEntry, ClassList, default_classes
from app.session.docks import AnnotationDock, ClassDock, ProjectDock, color_icon
from app.session.journal import Journal, JournalRecorder
from app.session.overlay import AnnotationOverlay
from app.session.settings import recent_files, save_classes, saved_classes
from app.session.slide_scale import (
    parse_scale,
    save_scale,
    scaled_slide_opener,
)
from app.session.undo import (
    AddAnnotationCommand,
    DeleteAnnotationsCommand,
    RenameCommand,
    SetClassCommand,
)
from app.tools.prompt import PromptController

APP_TITLE = "WSI-SAM Studio"
CLICK_SLOP_PX = 4  # a press and release closer than this is a click (select), not a drag


# What the engine takes for level 0 when a file does not record its scale (WsiSamPredictor's
# default_magnification).
ASSUMED_MAGNIFICATION = 40.0


class MainWindow(QMainWindow):
    """WSI-SAM Studio's window.

    Args:
        predictor_factory: builds the segmenter in the engine thread (default: the real WSI-SAM);
            tests pass a fast fake with the same ``segment`` signature.
        prompter: the dialogs; tests pass an object that answers programmatically.
        start_engine: load the model at once (in the background).
        options_factory: like ``predictor_factory``, and also given the engine options (backend,
            precision) chosen in the Model menu.
    """

    slideOpened = Signal(str)
    annotationAccepted = Signal(str)  # id
    saved = Signal(str)  # where

    def __init__(
        self,
        predictor_factory: Callable[[ProgressFn], Segmenter] | None = None,
        prompter: Any = None,
        start_engine: bool = True,
        slide_opener: Callable[[str], Any] | None = None,
        options_factory: OptionsFactory | None = None,
    ):
        super().__init__()
        from app.viewer.slide_view import SlideView

        self.setWindowTitle(APP_TITLE)
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.prompter = prompter if prompter is not None else Prompter(self)
        self._slide_opener = slide_opener

        # -- state ---------------------------------------------------------------------------
        self.slide: Any = None
        self.slide_path: str | None = None
        self.project: Any = None
        self.project_image: Any = None
        self.project_images: list[Any] = []
        self.journal: Journal | None = None
        self._recorder: JournalRecorder | None = None
        self._unsaved = False
        self._loaded_ids: list[str] = []  # ids read from the project (for replace_ids on save)
        self._press_pos: Any = None

        self.store = AnnotationStore(self)
        self.classes = ClassList(saved_classes() or default_classes(), self)
        self.undo_stack = QUndoStack(self)
        self.store.edited.connect(self._on_edited)
        self.classes.changed.connect(lambda: save_classes(self.classes.classes()))

        # -- viewer, engine, prompt tools --------------------------------------------------
        self.view = SlideView(self)
        self.view.setObjectName("slideView")
        self.setCentralWidget(self.view)
        self.engine = EngineClient(
            predictor_factory,
            parent=self,
            options_factory=options_factory,
            slide_opener=scaled_slide_opener,  # with the pixel size the user set for the file
        )
        self.prompts = PromptController(self.view, self.engine, self)
        self.overlay = AnnotationOverlay(self.view, self.store, self.classes)
        self.project_objects = ProjectObjectsController(self)  # detection layer, Locate...
        self.saving = SaveController(self)  # save into the project, GeoJSON out and in
        self.documents = DocumentController(self)  # open and close slides and projects

        self.annotation_dock = AnnotationDock(self.store, self.classes, self)
        self.class_dock = ClassDock(self.classes, self)
        self.project_dock = ProjectDock(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.annotation_dock)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.class_dock)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.project_dock)
        self.project_dock.hide()

        self._build_status_bar()
        self._build_actions()
        self._build_menus_and_toolbar()
        self._connect()
        self.engine_status = EngineController(self)  # Model menu, engine texts in the status bar
        self.preencode = PreencodeController(self)  # encodes the view centre before a prompt
        from app.controllers.heads import HeadsController

        self.heads = HeadsController(self)  # Model > Heads, Tools > Train heads from this project
        self._build_many_object_tools()  # refine, segment everything, cleanup, provenance
        self.set_tool("box")
        self._update_title()
        self._update_zoom_label()
        if start_engine:
            self.engine.start()

    # ======================================================================================
    # construction
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.position_label = QLabel("")
        self.zoom_label = QLabel("")
        self.engine_label = QLabel("Engine: not started")
        self.engine_progress = QProgressBar()
        self.engine_progress.setMaximumWidth(140)
        self.engine_progress.setTextVisible(False)
        self.engine_progress.hide()
        for widget in (self.position_label, self.zoom_label):
            widget.setMinimumWidth(150)
            bar.addPermanentWidget(widget)
        bar.addPermanentWidget(self.engine_label)
        bar.addPermanentWidget(self.engine_progress)

    def _action(
        self,
        text: str,
        slot: Callable[[], Any],
        shortcuts: list[str] | QKeySequence.StandardKey | None = None,
        tip: str = "",
    ) -> QAction:
        action = QAction(text, self)
        if isinstance(shortcuts, QKeySequence.StandardKey):
            action.setShortcut(QKeySequence(shortcuts))
        elif shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(f"{text.replace('&', '')} — {tip}")
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        a = self._action
        self.act_open = a("&Open slide…", self.ask_open_slide, QKeySequence.StandardKey.Open)
        self.act_open_project = a("Open &QuPath project…", self.ask_open_project, ["Ctrl+Shift+O"])
        self.act_save = a(
            "&Save",
            self.save,
            QKeySequence.StandardKey.Save,
            "Save into the QuPath project, or export GeoJSON for a plain slide",
        )
        self.act_export = a("&Export GeoJSON…", self.ask_export_geojson, ["Ctrl+E"])
        self.act_import = a("&Import GeoJSON…", self.ask_import_geojson, ["Ctrl+I"])
        self.act_scale = a(
            "Set pixel si&ze…",
            self.ask_slide_scale,
            tip="Set the slide's pixel size or magnification, when the file does not say it",
        )
        self.act_quit = a("&Quit", self.close, QKeySequence.StandardKey.Quit)

        self.act_undo = self.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setShortcuts([QKeySequence("Ctrl+Z")])
        self.act_redo = self.undo_stack.createRedoAction(self, "&Redo")
        self.act_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.addAction(self.act_undo)
        self.addAction(self.act_redo)

        self.act_accept = a(
            "&Accept mask", self.accept_prompt, ["Return", "Enter"], "Keep the previewed mask"
        )
        self.act_discard = a("&Discard prompt", self.discard_prompt, ["Esc"])
        self.act_candidate = a(
            "Next &candidate",
            self.prompts.cycle_candidate,
            ["M", "Tab"],
            "Cycle the candidate masks of a single-point prompt",
        )
        self.act_undo_point = a("Remove last point", self.prompts.undo_point, ["Backspace"])
        self.act_delete = a("&Delete annotation", self.delete_selected, ["Del"])
        # the viewer itself zooms with + / - / wheel and fits with 0 / Home
        self.act_fit = a("&Fit slide to window", self.view.fit_to_window, ["F"])
        self.act_toggle_outlines = a("Show &outlines", self._toggle_outlines, ["H"])
        self.act_toggle_outlines.setCheckable(True)
        self.act_toggle_outlines.setChecked(True)
        self.act_toggle_detections = a(
            "Show &detections",
            lambda: self.project_objects.set_visible(self.act_toggle_detections.isChecked()),
            ["D"],
            "Show the project's detections and cells",
        )
        self.act_toggle_detections.setCheckable(True)
        self.act_toggle_detections.setChecked(True)
        self.act_locate = a(
            "&Locate missing images…",
            lambda: self.project_objects.locate(),
            tip="Search a folder for the project's missing images and update the project",
        )

        self.tool_group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for tool, text, key, tip in (
            ("pan", "Pan / select", "S", "Drag to pan, click an outline to select it"),
            ("box", "Box", "B", "Drag a box around the object"),
            ("point", "Point", "P", "Click: object; right or Alt+click: not object"),
        ):
            action = a(text, functools.partial(self.set_tool, tool), [key], tip)
            action.setCheckable(True)
            self.tool_group.addAction(action)
            self.tool_actions[tool] = action

        self.class_key_actions = []
        for number in range(1, 10):
            action = a(
                f"Class {number}", functools.partial(self.select_class_key, number), [str(number)]
            )
            self.class_key_actions.append(action)

    def _build_menus_and_toolbar(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.act_open)
        file_menu.addAction(self.act_open_project)
        file_menu.addAction(self.act_locate)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.act_save)
        file_menu.addAction(self.act_export)
        file_menu.addAction(self.act_import)
        file_menu.addAction(self.act_scale)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)

        edit_menu = self.edit_menu = menu.addMenu("&Edit")
        for action in (self.act_undo, self.act_redo):
            edit_menu.addAction(action)
        edit_menu.addSeparator()
        for action in (
            self.act_accept,
            self.act_discard,
            self.act_candidate,
            self.act_undo_point,
            self.act_delete,
        ):
            edit_menu.addAction(action)

        view_menu = menu.addMenu("&View")
        for action in (self.act_fit, self.act_toggle_outlines, self.act_toggle_detections):
            view_menu.addAction(action)
        view_menu.addSeparator()
        for dock in (self.annotation_dock, self.class_dock, self.project_dock):
            view_menu.addAction(dock.toggleViewAction())

        tools_menu = menu.addMenu("&Tools")
        for action in self.tool_actions.values():
            tools_menu.addAction(action)

        toolbar = QToolBar("Tools", self)
        toolbar.setObjectName("toolsToolbar")
        self.addToolBar(toolbar)
        toolbar.addAction(self.act_open)
        toolbar.addSeparator()
        for action in self.tool_actions.values():
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addWidget(QLabel(" Model: "))
        self.mode_combo = QComboBox()
        self.mode_combo.setObjectName("modeCombo")
        self.mode_combo.addItem("WSI-SAM", "wsi-sam")
        self.mode_combo.addItem("SAM", "sam")
        self.mode_combo.setToolTip(
            "WSI-SAM uses the 10x patch and its 5x context; SAM the 10x only"
        )
        toolbar.addWidget(self.mode_combo)
        toolbar.addWidget(QLabel("  Class: "))
        self.class_combo = QComboBox()
        self.class_combo.setObjectName("classCombo")
        self.class_combo.setToolTip("Class of the next accepted annotation (keys 1-9)")
        toolbar.addWidget(self.class_combo)
        toolbar.addSeparator()
        toolbar.addAction(self.act_accept)
        toolbar.addAction(self.act_discard)
        toolbar.addSeparator()
        toolbar.addAction(self.act_undo)
        toolbar.addAction(self.act_redo)
        self._fill_class_combo()

    def _connect(self) -> None:
        view = self.view
        view.cursorMoved.connect(self._on_cursor)
        view.viewChanged.connect(self._update_zoom_label)
        view.toolPressed.connect(self.prompts.handle_press)
        view.toolMoved.connect(self.prompts.handle_move)
        view.toolReleased.connect(self.prompts.handle_release)
        view.viewport().installEventFilter(self)
        view.viewport().setAcceptDrops(True)

        self.prompts.accepted.connect(self._on_mask_accepted)
        self.prompts.message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.mode_combo.currentIndexChanged.connect(
            lambda _i: self.prompts.set_mode(self.mode_combo.currentData())
        )

        dock = self.annotation_dock
        dock.selectionChangedIds.connect(self._on_annotation_selection)
        dock.deleteRequested.connect(self.delete_annotations)
        dock.setClassRequested.connect(self.set_annotation_class)
        dock.renameRequested.connect(self.rename_annotation)
        classes = self.class_dock
        classes.addRequested.connect(self._add_class)
        classes.renameRequested.connect(self._rename_class)
        classes.recolorRequested.connect(self._recolor_class)
        classes.removeRequested.connect(self.classes.remove)
        classes.applyRequested.connect(
            lambda entry: self.set_annotation_class(self.annotation_dock.selected_ids(), entry)
        )
        self.classes.changed.connect(self._fill_class_combo)
        self.classes.currentChanged.connect(self._show_current_class)
        self.class_combo.currentIndexChanged.connect(self._on_class_combo)
        self.project_dock.imageActivated.connect(self.open_project_image)

    def _build_many_object_tools(self) -> None:
        from app.controllers.engine_jobs import EngineJobs, PendingResults
        from app.controllers.everything import EverythingController
        from app.controllers.provenance import AcceptedMaskProvenance
        from app.controllers.refine import RefineController
        from app.controllers.train_instances import TrainInstancesController
        from app.dialogs.cleanup_settings import CleanupDialog, save_cleanup, saved_cleanup

        self.jobs, self.pending = EngineJobs(self), PendingResults(self)
        self.refiner, self.everything = RefineController(self), EverythingController(self)
        self.mask_provenance = AcceptedMaskProvenance(self)
        self.train_instances = TrainInstancesController(self)  # Tools > Train automatic segm.
        from app.controllers.objects_by_example import ObjectsByExampleController

        self.objects_by_example = ObjectsByExampleController(self)  # Classify > Objects by ex.

        def cleanup_dialog() -> None:
            def applied(settings: Any) -> None:
                save_cleanup(settings)
                self.pending.refresh()

            has_mpp = getattr(self.slide, "mpp", None) is not None
            dialog = CleanupDialog(saved_cleanup(), has_mpp, applied, self)
            if dialog.exec():
                applied(dialog.settings())

        self.edit_menu.addSeparator()
        self.act_refine = self._action("&Refine with WSI-SAM", self.refiner.refine_selected, ["R"])
        self.act_everything = self._action(
            "Segment &everything in region…", self.everything.run, ["Ctrl+Shift+A"]
        )
        self.act_cleanup = self._action("Clean&up on accept…", cleanup_dialog)
        for action in (self.act_refine, self.act_everything, self.act_cleanup):
            self.edit_menu.addAction(action)

    # ======================================================================================
    # opening (app/controllers/documents.py)
    def ask_open_slide(self) -> None:
        self.documents.ask_open_slide()

    def ask_open_project(self) -> None:
        self.documents.ask_open_project()

    def open_path(self, path: str | os.PathLike[str]) -> bool:
        """Open a slide, or a QuPath project (``.qpproj`` or its folder)."""
        return self.documents.open_path(path)

    def open_slide(self, path: str | os.PathLike[str], _project_image: Any = None) -> bool:
        """Open a slide; False (after telling the user why) when it cannot be opened."""
        return self.documents.open_slide(path, _project_image)

    def open_project(self, path: str | os.PathLike[str]) -> bool:
        return self.documents.open_project(path)

    def open_project_image(self, index: int) -> bool:
        return self.documents.open_project_image(index)

    def _settle_unsaved(self) -> bool:
        return self.documents.settle_unsaved()

    # ======================================================================================
    # saving (app/controllers/saving.py)
    def save(self) -> bool:
        return self.saving.save()

    def ask_export_geojson(self) -> bool:
        return self.saving.ask_export_geojson()

    def export_geojson(self, path: str | os.PathLike[str]) -> bool:
        return self.saving.export_geojson(path)

    def save_to_project(self) -> bool:
        return self.saving.save_to_project()

    def ask_import_geojson(self) -> None:
        self.saving.ask_import_geojson()

    def import_geojson(self, path: str | os.PathLike[str]) -> int:
        return self.saving.import_geojson(path)

    # ======================================================================================
    # prompts and annotations
    def set_tool(self, tool: str) -> None:
        self.prompts.set_tool(tool)
        self.tool_actions[tool].setChecked(True)
        self.view.set_interaction_mode("pan" if tool == "pan" else "tool")
        cursor = Qt.CursorShape.OpenHandCursor if tool == "pan" else Qt.CursorShape.CrossCursor
        self.view.viewport().setCursor(cursor)

    def set_mode(self, mode: str) -> None:
        index = self.mode_combo.findData(mode)
        if index < 0:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode_combo.setCurrentIndex(index)

    def accept_prompt(self) -> None:
        if self.slide_path is None or self.pending.accept():
            return
        self.prompts.accept()

    def discard_prompt(self) -> None:
        if self.pending.discard():
            return
        if self.prompts.prompt().is_empty() and self.annotation_dock.selected_ids():
            self.annotation_dock.select_ids([])
            return
        self.prompts.discard()

    def _on_mask_accepted(self, geometry: Any, _score: float) -> None:
        import qupath_bridge

        entry = self.classes.current()
        annotation = qupath_bridge.Annotation(
            geometry=geometry, path_class=entry.to_path_class() if entry is not None else None
        )
        annotation = self.mask_provenance.finish(annotation, _score)  # cleanup, provenance
        self.undo_stack.push(AddAnnotationCommand(self.store, annotation))
        self.annotationAccepted.emit(annotation.id)

    def delete_selected(self) -> None:
        self.delete_annotations(self.annotation_dock.selected_ids())

    def delete_annotations(self, ids: list[str]) -> None:
        ids = [i for i in ids if i in self.store]
        if ids:
            self.undo_stack.push(DeleteAnnotationsCommand(self.store, ids))

    def set_annotation_class(self, ids: list[str], entry: ClassEntry | None) -> None:
        ids = [i for i in ids if i in self.store]
        if ids:
            path_class = entry.to_path_class() if entry is not None else None
            self.undo_stack.push(SetClassCommand(self.store, ids, path_class))

    def rename_annotation(self, annotation_id: str, name: str) -> None:
        if annotation_id in self.store and (self.store.get(annotation_id).name or "") != name:
            self.undo_stack.push(RenameCommand(self.store, annotation_id, name))

    def select_class_key(self, number: int) -> None:
        """Keys 1-9 choose the class of the next accepted annotation (0: unclassified)."""
        if number == 0:
            self.classes.set_current(None)
        elif not self.classes.set_current_index(number - 1):
            return
        current = self.classes.current()
        self.statusBar().showMessage(
            f"Next annotation: {current.name if current else 'Unclassified'}", 4000
        )

    def _on_annotation_selection(self, ids: list[str]) -> None:
        self.overlay.set_selected(set(ids))
        if len(ids) == 1 and ids[0] in self.store:
            rect = self.overlay.bounds(ids[0])
            if not rect.isEmpty():
                self.view.centre_on_level0(rect.center().x(), rect.center().y())

    def _on_edited(self) -> None:
        self._unsaved = True
        self._update_title()

    def has_unsaved_changes(self) -> bool:
        return self._unsaved

    def _toggle_outlines(self) -> None:
        self.overlay.set_visible(self.act_toggle_outlines.isChecked())

    def annotation_at(self, x: float, y: float) -> str | None:
        """The smallest annotation containing level-0 point (x, y)."""
        from shapely.geometry import Point

        point = Point(x, y)
        tolerance = 3.0 * self.view.downsample()
        hits = [
            (a.geometry.area, a.id)
            for a in self.store
            if a.geometry is not None and a.geometry.distance(point) <= tolerance
        ]
        return min(hits)[1] if hits else None

    # -- classes -----------------------------------------------------------------------------
    def _fill_class_combo(self) -> None:
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem(
            color_icon(QColor(*self.classes.color_for(None))), "Unclassified", None
        )
        for entry in self.classes.classes():
            self.class_combo.addItem(color_icon(QColor(*entry.color)), entry.name, entry.name)
        self.class_combo.blockSignals(False)
        self._show_current_class(self.classes.current())

    def _show_current_class(self, entry: ClassEntry | None) -> None:
        index = self.class_combo.findData(entry.name) if entry is not None else 0
        self.class_combo.blockSignals(True)
        self.class_combo.setCurrentIndex(max(0, index))
        self.class_combo.blockSignals(False)

    def _on_class_combo(self, index: int) -> None:
        name = self.class_combo.itemData(index)
        self.classes.set_current(name if name else None)

    def _add_class(self) -> None:
        name = self.prompter.ask_text("New class", "Name:")
        if not name:
            return
        color = self.prompter.ask_color((200, 200, 0))
        if color is None:
            return
        try:
            self.classes.add(name, color)
        except ValueError as exc:
            self.prompter.error("Cannot add class", str(exc))

    def _rename_class(self, index: int) -> None:
        if not 0 <= index < len(self.classes):
            return
        old = self.classes[index]
        name = self.prompter.ask_text("Rename class", "Name:", old.name)
        if not name or name == old.name:
            return
        try:
            self.classes.rename(index, name)
        except ValueError as exc:
            self.prompter.error("Cannot rename class", str(exc))
            return
        # annotations of the old class follow the rename (one undo step)
        ids = [
            a.id for a in self.store if a.path_class is not None and a.path_class.name == old.name
        ]
        self.set_annotation_class(ids, self.classes[index])

    def _recolor_class(self, index: int) -> None:
        if not 0 <= index < len(self.classes):
            return
        color = self.prompter.ask_color(self.classes[index].color)
        if color is not None:
            self.classes.recolor(index, color)

    # ======================================================================================
    # status bar
    def _on_cursor(self, x: float, y: float) -> None:
        self.position_label.setText(f"x {x:,.0f}  y {y:,.0f} px")

    def _update_zoom_label(self) -> None:
        if self.slide is None:
            self.zoom_label.setText("")
            return
        downsample = self.view.downsample()
        magnification = self.view.magnification()
        parts = []
        if magnification:
            parts.append(f"{magnification:.3g}x")
        parts.append(f"1:{downsample:.3g}" if downsample >= 1 else f"{1 / downsample:.3g}:1")
        parts.append(f"level {self.view.current_level()}")
        self.zoom_label.setText("  ".join(parts))

    def _describe_slide(self, slide: Any) -> str:
        w, h = slide.dimensions
        text = f"{Path(self.slide_path or '').name}: {w:,} x {h:,} px, {slide.level_count} levels"
        if getattr(slide, "magnification", None):
            text += f", {slide.magnification:g}x"
        if getattr(slide, "mpp", None):
            text += f", {slide.mpp[0]:.3f} µm/px"
        note = slide.scale_note(ASSUMED_MAGNIFICATION) if hasattr(slide, "scale_note") else None
        if note:
            text += f" — {note} (File > Set pixel size…)"
        elif getattr(slide, "scale_source", None) == "user":
            text += " (set by hand)"
        return text

    def ask_slide_scale(self) -> None:
        """Set the open slide's pixel size or magnification, remembered for the file."""
        if self.slide is None or self.slide_path is None:
            self.prompter.error("No slide", "Open a slide first.")
            return
        current = ""
        if getattr(self.slide, "mpp", None):
            current = f"{self.slide.mpp[0]:g}"
        elif getattr(self.slide, "magnification", None):
            current = f"{self.slide.magnification:g}x"
        text = self.prompter.ask_text(
            "Set pixel size",
            "Level-0 pixel size in µm (e.g. 0.25) or magnification (e.g. 40x):",
            current,
        )
        if text is None:
            return
        try:
            kind, value = parse_scale(text)
            if kind == "mpp":
                self.slide.set_scale(mpp=value)
            else:
                self.slide.set_scale(magnification=value)
        except (ValueError, AttributeError) as exc:
            self.prompter.error("Set pixel size", plain_error(exc))
            return
        save_scale(self.slide_path, kind, value)
        self.engine.forget_slide(self.slide_path)  # the engine reopens it with the new scale
        self._update_zoom_label()
        self.statusBar().showMessage(self._describe_slide(self.slide), 10000)

    def _update_title(self) -> None:
        parts = [APP_TITLE]
        if self.project is not None:
            parts.append(Path(str(self.project.path)).parent.name or str(self.project.path))
        if self.slide_path:
            parts.append(Path(self.slide_path).name + (" *" if self._unsaved else ""))
        self.setWindowTitle(" — ".join(parts))

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        items = recent_files()
        if not items:
            self.recent_menu.addAction("(none)").setEnabled(False)
        for path in items:
            action = self.recent_menu.addAction(path)
            action.triggered.connect(lambda _c=False, p=path: self.open_path(p))

    def _start_dir(self) -> str:
        if self.slide_path:
            return str(Path(self.slide_path).parent)
        items = recent_files()
        return str(Path(items[0]).parent) if items else str(Path.home())

    # ======================================================================================
    # events
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            return self._accept_drag(event)  # type: ignore[arg-type]
        if kind == QEvent.Type.Drop:
            self.dropEvent(event)  # type: ignore[arg-type]
            return True
        # pan/select tool: a click (not a drag) on an outline selects it
        if self.prompts.tool() == "pan":
            if kind == QEvent.Type.MouseButtonPress:
                self._press_pos = event.position()  # type: ignore[attr-defined]
            elif kind == QEvent.Type.MouseButtonRelease and self._press_pos is not None:
                pos = event.position()  # type: ignore[attr-defined]
                moved = (pos - self._press_pos).manhattanLength()
                self._press_pos = None
                if moved <= CLICK_SLOP_PX and self.slide is not None:
                    scene_pos = self.view.mapToScene(pos.toPoint())
                    hit = self.annotation_at(scene_pos.x(), scene_pos.y())
                    self.annotation_dock.select_ids([hit] if hit else [])
        return super().eventFilter(watched, event)

    def _accept_drag(self, event: QDragEnterEvent) -> bool:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
            return True
        event.ignore()
        return False

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self._accept_drag(event)

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        # open after the drop returns, so the drag source is not left waiting on dialogs
        QTimer.singleShot(0, lambda: self.open_path(paths[0]))

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._settle_unsaved():
            event.ignore()
            return
        self.prompts.discard()
        if self._recorder is not None:
            self._recorder.detach()
        self.jobs.shutdown()
        self.engine.shutdown()
        self.view.set_slide(None)
        if self.slide is not None and hasattr(self.slide, "close"):
            self.slide.close()
        super().closeEvent(event)
