# ruff: noqa: N815  (Qt names signals in camelCase)
"""Which WSI-SAM heads the model uses, and training new ones from the open QuPath project.

- Model > Heads lists plain SAM and every heads file of the catalogue
  (:mod:`engine.heads_catalogue`: shipped, the user's heads folder, the project's
  ``wsi-sam/heads/``), each with a tooltip (what it was trained on, its figures); files that are
  not usable heads are listed disabled, with the reason. The choice is remembered per project
  (``app.session.settings.heads_choice``) and applied again when the project opens or the model
  reloads (another backend brings the default heads back).
- Tools > Train heads from this project runs ``wsi-sam train --project P --classes ...
  --holdout F --progress-json`` in a separate process (``QProcess``): a progress dialog shows the
  epoch and the loss; Cancel terminates the process (the heads file is written only whole, at the
  end; the state after the last complete epoch stays, and training again with the same name
  resumes from it). The heads and their model card land in the project's ``wsi-sam/heads/``;
  the app then offers to switch to them.

Heads are loaded into the model already in the engine thread (``EngineClient.run_on_model``),
so the encoder and the encoded fields stay; the converted OpenVINO decoders are rebuilt for them.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QSpinBox,
)

from app.controllers.training_process import (
    TrainingHost,
    TrainingProcess,
    add_ok_cancel,
    checked_names,
    free_path,
)
from app.session.settings import heads_choice, save_heads_choice

PLAIN_SAM = "sam"


@dataclass
class TrainRequest:
    """What the Train dialog asks of ``wsi-sam train``."""

    classes: list[str]
    name: str
    epochs: int = 10
    holdout: float = 0.2
    augment_variants: int = 1
    image_magnification: float = 20.0


def train_command(project: str, request: TrainRequest, out: Path, cache: Path) -> list[str]:
    """The ``wsi-sam train`` arguments (without the program) for ``request``."""
    args = [
        "train",
        "--project",
        project,
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--epochs",
        str(request.epochs),
        "--augment-variants",
        str(request.augment_variants),
        "--holdout",
        str(request.holdout),
        "--image-magnification",
        str(request.image_magnification),
        "--progress-json",
        "--quiet",
    ]
    if request.classes:
        args += ["--classes", ",".join(request.classes)]
    if out.with_name(out.stem + ".state.pt").is_file() and not out.is_file():
        args.append("--resume")  # an interrupted run of the same heads: go on from its state
    return args


def wsi_sam_program() -> tuple[str, list[str]]:
    """How to start ``wsi-sam``: the frozen bundle itself, or this Python with ``-m app``."""
    if getattr(sys, "frozen", False):
        return sys.executable, []
    return sys.executable, ["-m", "app"]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "heads"


class HeadsController(TrainingHost, QObject):
    """Model > Heads and Tools > Train heads from this project.

    Uses the window's ``engine``, ``project``, ``prompter``, ``set_mode``, ``slideOpened``.
    ``ask_train`` and ``ask_switch`` are the two questions; tests replace them.
    """

    #: (heads path, error message or ""), emitted in the engine thread after loading heads
    headsApplied = Signal(str, str)
    #: the training process ended: (heads path or "", message)
    trainingFinished = Signal(str, str)

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self.current: str | None = None  # a heads path, PLAIN_SAM, or None (the default heads)
        self._project_seen: str | None = ""
        self._run: TrainingProcess | None = None
        self._out: Path | None = None
        self.last_progress: dict[str, Any] = {}
        #: where training keeps the encoded fields (None: the user's cache folder)
        self.feature_cache: Path | None = None

        model_menu = self._find_menu("Model") or window.menuBar().addMenu("&Model")
        self.menu = QMenu("&Heads", window)
        self.menu.setToolTipsVisible(True)
        self.menu.aboutToShow.connect(self.refresh)
        model_menu.addMenu(self.menu)
        self._group = QActionGroup(self)
        self.act_train = QAction("Train &heads from this project…", window)
        self.act_train.triggered.connect(self.train_from_project)
        tools = self._find_menu("Tools")
        if tools is not None:
            tools.addSeparator()
            tools.addAction(self.act_train)
        self.headsApplied.connect(self._on_heads_applied)
        window.slideOpened.connect(self._on_slide_opened)
        window.engine.loaded.connect(self._reapply)
        self.refresh()

    # -- the catalogue and the menu -----------------------------------------------------------
    def _find_menu(self, title: str) -> QMenu | None:
        for action in self._window.menuBar().actions():
            if action.text().replace("&", "") == title and action.menu() is not None:
                menu: QMenu = action.menu()
                return menu
        return None

    def project_path(self) -> str | None:
        project = getattr(self._window, "project", None)
        return str(project.path) if project is not None else None

    def catalogue(self) -> Any:
        from engine.heads_catalogue import build_catalogue

        return build_catalogue(project=self.project_path())

    def refresh(self) -> None:
        """Fill Model > Heads from the catalogue as it is now."""
        from engine.wsi_sam import default_heads_path

        self.menu.clear()
        for action in self._group.actions():
            self._group.removeAction(action)
        catalogue = self.catalogue()
        current = self.current or str(default_heads_path())
        sam = self._add(self.menu, "Plain &SAM (no heads)", PLAIN_SAM, "SAM alone")
        sam.setChecked(self._window.mode_combo.currentData() == "sam")
        self.menu.addSeparator()
        for entry in catalogue.entries:
            label = entry.name if entry.place == "shipped" else f"{entry.name} ({entry.place})"
            action = self._add(self.menu, label, str(entry.path), entry.describe())
            if not sam.isChecked() and _same_file(current, entry.path):
                action.setChecked(True)
        for skipped in catalogue.skipped:
            action = self.menu.addAction(f"{skipped.path.name} (not usable)")
            action.setEnabled(False)
            action.setToolTip(f"{skipped.path}: {skipped.reason}")
        self.entries = list(catalogue.entries)
        self.skipped = list(catalogue.skipped)

    def _add(self, menu: QMenu, text: str, value: str, tip: str) -> QAction:
        action = QAction(text, self._window)
        action.setCheckable(True)
        action.setData(value)
        action.setToolTip(tip)
        action.triggered.connect(functools.partial(lambda v, _c=False: self.choose(v), value))
        self._group.addAction(action)
        menu.addAction(action)
        return action

    # -- choosing ---------------------------------------------------------------------------
    def choose(self, choice: str, remember: bool = True) -> None:
        """Use plain SAM (``"sam"``) or the heads file ``choice``; remembered per project."""
        if remember:
            save_heads_choice(self.project_path(), choice)
        if choice == PLAIN_SAM:
            self._window.set_mode("sam")
            return
        self.current = choice
        self._window.set_mode("wsi-sam")
        self._window.engine.run_on_model(functools.partial(self._load_in_engine, choice))

    def _load_in_engine(self, path: str, predictor: Any) -> None:
        """In the engine thread: load heads into the model the predictor holds."""
        model = getattr(predictor, "model", None)
        if model is None or not hasattr(model, "load_heads"):
            self.headsApplied.emit(path, "")  # a stand-in predictor (tests): nothing to load
            return
        try:
            model.load_heads(path)
        except Exception as exc:
            self.headsApplied.emit(path, str(exc))
            return
        try:
            model.enable_fast_decoders()  # converted decoders are tied to the heads
        except Exception:
            model.decoder_backend = None  # torch decoders: slower, same masks
        self.headsApplied.emit(path, "")

    def _on_heads_applied(self, path: str, message: str) -> None:
        if message:
            self.current = None
            self._window.prompter.error("These heads cannot be used", message)
            return
        self._window.statusBar().showMessage(f"WSI-SAM heads: {Path(path).name}", 5000)

    def _on_slide_opened(self, _path: str) -> None:
        project = self.project_path()
        if project == self._project_seen:
            return
        self._project_seen = project
        saved = heads_choice(project)
        if saved is None or (saved != PLAIN_SAM and not Path(saved).is_file()):
            if self.current not in (None, PLAIN_SAM):
                self.current = None
                from engine.wsi_sam import default_heads_path

                self.choose(str(default_heads_path()), remember=False)
            return
        self.choose(saved, remember=False)

    def _reapply(self) -> None:
        # a reload (another backend) builds the model with the default heads again
        if self.current not in (None, PLAIN_SAM):
            assert self.current is not None
            self._window.engine.run_on_model(functools.partial(self._load_in_engine, self.current))

    # -- training -----------------------------------------------------------------------------
    def project_classes(self) -> Counter[str]:
        """Annotations per class over the project's images (the app's sidecars included)."""
        counts: Counter[str] = Counter()
        project = self._window.project
        for image in getattr(project, "images", []):
            if not getattr(image, "exists", True):
                continue
            try:
                annotations = project.read_annotations(image)
            except Exception:
                continue
            for annotation in annotations:
                pc = annotation.path_class
                counts[pc.name if pc is not None else "(unclassified)"] += 1
        return counts

    def ask_train(self, classes: Counter[str], default_name: str) -> TrainRequest | None:
        dialog = TrainDialog(classes, default_name, self._window)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return None
        return dialog.request()

    def ask_switch(self, name: str, summary: str) -> bool:
        answer = QMessageBox.question(
            self._window,
            "Heads trained",
            f"The heads {name} are ready.\n\n{summary}\n\nSwitch to them now?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    def train_from_project(self) -> bool:
        """Ask for the classes and settings, then start ``wsi-sam train`` in the background."""
        window = self._window
        project = self.project_path()
        if project is None:
            window.prompter.error(
                "Train heads", "Open a QuPath project first: heads learn from its annotations."
            )
            return False
        if self.process is not None:
            window.prompter.error("Train heads", "A training run is in progress.")
            return False
        classes = self.project_classes()
        if not classes:
            window.prompter.error(
                "Train heads", "The project has no annotations to learn from yet."
            )
            return False
        from engine.heads_catalogue import project_heads_dir

        request = self.ask_train(classes, "project-heads")
        if request is None:
            return False
        folder = project_heads_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        out = free_path(folder, safe_name(request.name))  # never overwrite one
        return self.start_training(project, request, out)

    def start_training(self, project: str, request: TrainRequest, out: Path) -> bool:
        cache = self.feature_cache
        if cache is None:
            from engine.backends.openvino_backend import cache_root

            cache = cache_root() / "train-features"
        program, prefix = wsi_sam_program()
        self._out, self.last_progress = out, {}
        self._run = TrainingProcess(
            self._window, "Training heads", self._show_progress, self._on_finished
        )
        args = train_command(project, request, out, cache)
        self._run.start(program, [*prefix, *args], "Starting training…")
        return True

    def _show_progress(self, record: dict[str, Any]) -> None:
        self.last_progress = record
        dialog = self.progress
        if dialog is None:
            return
        stage = record.get("stage")
        if stage == "encode":
            dialog.setRange(0, int(record["total"]))
            dialog.setValue(int(record["done"]))
            dialog.setLabelText(f"Encoding fields: {record['done']} / {record['total']}")
        elif stage == "step":
            total = int(record["epochs"]) * int(record["steps"])
            done = (int(record["epoch"]) - 1) * int(record["steps"]) + int(record["step"])
            dialog.setRange(0, total)
            dialog.setValue(done)
            dialog.setLabelText(
                f"Epoch {record['epoch']} / {record['epochs']}, loss {record['loss']:.4f}"
            )
        elif stage == "validate":
            dialog.setRange(0, 0)
            dialog.setLabelText(f"Validating on {record['objects']} held-out objects…")

    def _on_finished(self, exit_code: int, cancelled: bool, stderr: str) -> None:
        out = self._out
        self._run = None
        window = self._window
        if cancelled:
            message = (
                "Training cancelled. The state after the last complete epoch is kept: "
                "train again with the same name to resume."
            )
            window.statusBar().showMessage(message, 10000)
            self.trainingFinished.emit("", message)
            return
        if exit_code != 0 or out is None or not out.is_file():
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            detail = "\n".join(lines[-6:]) or f"exit status {exit_code}"
            window.prompter.error("Training failed", detail)
            self.trainingFinished.emit("", detail)
            return
        self.refresh()
        entry = next((e for e in self.entries if _same_file(str(out), e.path)), None)
        summary = entry.describe() if entry is not None else str(out)
        self.trainingFinished.emit(str(out), summary)
        if self.ask_switch(out.stem, summary):
            self.choose(str(out))


class TrainDialog(QDialog):
    """Classes (checked, with their annotation counts), a name, epochs, held-out fraction."""

    def __init__(self, classes: Counter[str], default_name: str, parent: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Train heads from this project")
        layout = QFormLayout(self)
        self.classes = QListWidget()
        for name, count in classes.most_common():
            item = QListWidgetItem(f"{name} ({count})")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.classes.addItem(item)
        layout.addRow("Classes to learn", self.classes)
        self.name = QLineEdit(default_name)
        layout.addRow("Heads name", self.name)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 200)
        self.epochs.setValue(10)
        layout.addRow("Epochs", self.epochs)
        self.holdout = QDoubleSpinBox()
        self.holdout.setRange(0.0, 0.5)
        self.holdout.setSingleStep(0.05)
        self.holdout.setValue(0.2)
        layout.addRow("Held out for validation", self.holdout)
        self.magnification = QDoubleSpinBox()
        self.magnification.setRange(1.0, 80.0)
        self.magnification.setValue(20.0)
        layout.addRow("Image magnification (when the slide does not say)", self.magnification)
        add_ok_cancel(self, layout)

    def request(self) -> TrainRequest:
        chosen = checked_names(self.classes)
        return TrainRequest(
            classes=[c for c in chosen if c != "(unclassified)"],
            name=self.name.text(),
            epochs=self.epochs.value(),
            holdout=self.holdout.value(),
            image_magnification=self.magnification.value(),
        )


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
