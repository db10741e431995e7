"""The engine's part of the window: which backend and precision run the model, and what it does.

The Model menu chooses the image encoder's backend (Auto / PyTorch / OpenVINO) and precision (Auto /
f32 / bf16 / fp16). A choice is applied by loading the model again in the engine thread and is
remembered in the settings once it has loaded; a choice this computer cannot run is reported in
one line and the model already loaded stays in use. A saved choice that stops working (OpenVINO
uninstalled, another CPU) falls back to Auto at start-up, after saying so.

The status bar shows what runs the encoder ("OpenVINO CPU bf16") and what the engine is doing:
"Encoding field…", "Pre-encoding view…", "Decoding…", "Ready".
"""

from __future__ import annotations

import functools
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QLabel

from app.engine_worker import EngineOptions
from app.session.settings import engine_preference, save_engine_preference

#: (value for engine.load_wsi_sam, menu text)
BACKEND_ITEMS: tuple[tuple[str, str], ...] = (
    ("auto", "&Auto (GPU: PyTorch, CPU: OpenVINO)"),
    ("torch", "&PyTorch"),
    ("openvino", "&OpenVINO (CPU)"),
)
PRECISION_ITEMS: tuple[tuple[str, str], ...] = (
    ("auto", "&Auto (bf16 where the hardware has it)"),
    ("f32", "&f32 (exact)"),
    ("bf16", "&bf16"),
    ("fp16", "fp&16 (GPU)"),
)
READY = "Ready"


def saved_options() -> EngineOptions:
    """The saved preference; Auto for values this version does not know."""
    backend, precision = engine_preference()
    if backend not in dict(BACKEND_ITEMS):
        backend = "auto"
    if precision not in dict(PRECISION_ITEMS):
        precision = "auto"
    return EngineOptions(backend, precision)


class EngineController(QObject):
    """Model menu (backend, precision) and the engine's texts in the status bar.

    Uses the window's ``engine``, ``prompter``, ``engine_label`` and ``engine_progress``; adds
    ``backend_label`` to the status bar and the Model menu to the menu bar. Build it before the
    engine starts, so the first load uses the saved preference.
    """

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._engine = window.engine
        self._engine.reload(saved_options())  # not started yet: only remembered

        self.backend_label = QLabel("")
        self.backend_label.setObjectName("backendLabel")
        self.backend_label.setToolTip("What runs the image encoder (Model menu to change)")
        window.statusBar().insertPermanentWidget(0, self.backend_label)

        menu = window.menuBar().addMenu("&Model")
        self.backend_actions = self._add_choices(
            menu.addMenu("Encoder &backend"), BACKEND_ITEMS, "backend"
        )
        self.precision_actions = self._add_choices(
            menu.addMenu("&Precision"), PRECISION_ITEMS, "precision"
        )
        self._show_choice(self._engine.options())

        engine = self._engine
        engine.loadProgress.connect(self._on_load_progress)
        engine.loaded.connect(self._on_loaded)
        engine.loadFailed.connect(self._on_load_failed)
        engine.reloadFailed.connect(self._on_reload_failed)
        engine.busy.connect(self._on_busy)
        engine.idle.connect(self._on_idle)

    # -- the preference --------------------------------------------------------------------
    def choose(self, backend: str | None = None, precision: str | None = None) -> None:
        """Run the model with another backend and/or precision (reloads it in the background)."""
        current = self._engine.options()
        wanted = EngineOptions(backend or current.backend, precision or current.precision)
        self._show_choice(wanted)
        if wanted == current and self._engine.state() != "failed":
            return
        self._engine.reload(wanted)
        if self._engine.state() == "not started":
            save_engine_preference(wanted.backend, wanted.precision)

    def _add_choices(
        self, menu: Any, items: tuple[tuple[str, str], ...], which: str
    ) -> dict[str, QAction]:
        group = QActionGroup(self._window)
        actions: dict[str, QAction] = {}
        for value, text in items:
            action = QAction(text, self._window)
            action.setCheckable(True)
            action.setData(value)
            action.triggered.connect(
                functools.partial(lambda v, _checked=False: self.choose(**{which: v}), value)
            )
            group.addAction(action)
            menu.addAction(action)
            actions[value] = action
        return actions

    def _show_choice(self, options: EngineOptions) -> None:
        self.backend_actions[options.backend].setChecked(True)
        self.precision_actions[options.precision].setChecked(True)

    # -- engine signals --------------------------------------------------------------------
    def _on_load_progress(self, what: str, step: int, steps: int) -> None:
        window = self._window
        window.engine_label.setText(f"{what}…" if step < steps else what)
        window.engine_progress.setRange(0, max(1, steps))
        window.engine_progress.setValue(step)
        window.engine_progress.show()

    def _on_loaded(self) -> None:
        loaded = self._engine.loaded_options()
        if loaded is not None:
            save_engine_preference(loaded.backend, loaded.precision)
        self._show_choice(self._engine.options())  # the latest choice (it may still be loading)
        self.backend_label.setText(self._engine.backend_label())
        if self._engine.is_ready():
            self._window.engine_label.setText(READY)
            self._window.engine_progress.hide()

    def _on_load_failed(self, message: str) -> None:
        window = self._window
        window.engine_progress.hide()
        options = self._engine.options()
        if options != EngineOptions():
            # the saved choice no longer runs here: say so, and carry on with Auto
            window.prompter.error(
                "The chosen backend cannot be used", f"{message}\n\nUsing Auto instead."
            )
            self._show_choice(EngineOptions())
            self._engine.reload(EngineOptions())
            return
        window.engine_label.setText("Engine: unavailable")
        self.backend_label.setText("")
        window.prompter.error("The segmentation model could not be loaded", message)

    def _on_reload_failed(self, message: str) -> None:
        self._show_choice(self._engine.options())  # the options of the model kept
        if self._engine.is_ready():
            self._window.engine_progress.hide()
            self._window.engine_label.setText(READY)
        self._window.prompter.error("The chosen backend cannot be used", message)

    def _on_busy(self, _request_id: int, what: str) -> None:
        window = self._window
        window.engine_label.setText(f"{what}…")
        window.engine_progress.setRange(0, 0)  # indeterminate: a busy indicator
        window.engine_progress.show()

    def _on_idle(self) -> None:
        if self._engine.is_ready():
            self._window.engine_label.setText(READY)
            self._window.engine_progress.hide()
