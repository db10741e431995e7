# ruff: noqa: N815  (Qt names signals in camelCase)
"""Tools > Train automatic segmentation: an instance decoder trained from the open QuPath project.

The dialog asks for the classes of the objects to find (from the project's annotations and
detections), the class of the annotations that mark completely annotated areas (``Region*`` by
default), a name and the epochs. ``wsi-sam train-instances --project P ... --progress-json`` then
runs in a separate process (``QProcess``) with a progress dialog and Cancel. Cancel terminates
it (SIGTERM): the decoder is written only whole, at the end, and the state after the last
finished epoch stays in ``NAME.state.pt``; training the same name again offers to resume from
it. The decoder, its cards and its log land in the project's ``wsi-sam/heads/``; the app then
offers to use it, which makes it the method of Segment everything.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QSpinBox,
)

from app.commands.train_instances import REGION_CLASS
from app.controllers.heads import _same_file, safe_name, wsi_sam_program
from app.controllers.training_process import (
    TrainingHost,
    TrainingProcess,
    add_ok_cancel,
    checked_names,
    free_path,
)

TITLE = "Train automatic segmentation"
UNCLASSIFIED = "(unclassified)"  # how HeadsController.project_classes counts unclassified objects


@dataclass
class InstancesRequest:
    """What the dialog asks of ``wsi-sam train-instances``."""

    classes: list[str]
    name: str
    region_class: str = REGION_CLASS
    epochs: int = 10
    variants: int = 8  # symmetries of each field (the command's default)


def state_file(out: Path) -> Path:
    """Where ``wsi-sam train-instances --out OUT`` keeps its resumable state."""
    return out.with_name(out.stem + ".state.pt")


def train_instances_command(
    project: str, request: InstancesRequest, out: Path, cache: Path, resume: bool = False
) -> list[str]:
    """The ``wsi-sam train-instances`` arguments (without the program) for ``request``."""
    args = [
        "train-instances",
        "--project",
        project,
        "--region-class",
        request.region_class,
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--epochs",
        str(request.epochs),
        "--variants",
        str(request.variants),
        "--progress-json",
        "--quiet",
    ]
    if request.classes:
        args += ["--classes", ",".join(request.classes)]
    if resume:
        args.append("--resume")
    return args


class TrainInstancesController(TrainingHost, QObject):
    """Tools > Train automatic segmentation.

    Uses the window's ``heads`` (the project and its classes), ``everything`` (to use the new
    decoder) and ``prompter``. ``ask_train``, ``ask_resume`` and ``ask_use`` are the questions;
    tests replace them.
    """

    #: the training process ended: (decoder path or "", message)
    trainingFinished = Signal(str, str)

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._run: TrainingProcess | None = None
        self._out: Path | None = None
        self._epochs = 0
        self._epoch = 1
        self.last_progress: dict[str, Any] = {}
        #: where training keeps the encoded fields (None: the user's cache folder)
        self.feature_cache: Path | None = None
        self.act_train = QAction("Train &automatic segmentation…", window)
        self.act_train.setStatusTip(
            "Train a decoder that finds every object of your classes, from the project's "
            f"completely annotated areas ({REGION_CLASS} annotations)"
        )
        self.act_train.triggered.connect(lambda _checked=False: self.train_from_project())
        for action in window.menuBar().actions():
            if action.text().replace("&", "") == "Tools" and action.menu() is not None:
                action.menu().addAction(self.act_train)
                break

    # -- questions (tests replace them) -------------------------------------------------------
    def ask_train(self, classes: Counter[str], default_name: str) -> InstancesRequest | None:
        dialog = TrainInstancesDialog(classes, default_name, self._window)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return None
        return dialog.request()

    def ask_resume(self, name: str) -> bool | None:
        """True: resume the interrupted training of ``name``; False: start afresh; None: stop."""
        box = QMessageBox(
            QMessageBox.Icon.Question,
            TITLE,
            f"The training of {name} was interrupted. Resume it from its last finished epoch "
            "(with the settings it started with), or start afresh?",
            QMessageBox.StandardButton.Cancel,
            self._window,
        )
        resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
        afresh = box.addButton("Start afresh", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(resume)
        box.exec()
        clicked = box.clickedButton()
        return True if clicked is resume else False if clicked is afresh else None

    def ask_use(self, name: str, summary: str) -> bool:
        answer = QMessageBox.question(
            self._window,
            "Automatic segmentation trained",
            f"The decoder {name} is ready.\n\n{summary}\n\nUse it for Segment everything now?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- starting ---------------------------------------------------------------------------
    def train_from_project(self) -> bool:
        """Ask for classes, region class, name and epochs, then start training in the
        background; False when it did not start."""
        from engine.heads_catalogue import project_heads_dir

        window = self._window
        project = window.heads.project_path()
        if project is None:
            window.prompter.error(
                TITLE, "Open a QuPath project first: the decoder learns from its annotations."
            )
            return False
        if self.process is not None or window.heads.process is not None:
            window.prompter.error(TITLE, "A training run is in progress.")
            return False
        classes = window.heads.project_classes()
        if not classes:
            window.prompter.error(TITLE, "The project has no objects to learn from yet.")
            return False
        folder = project_heads_dir(project)
        interrupted = sorted(
            p for p in folder.glob("*.state.pt") if not p.with_name(_decoder_name(p)).is_file()
        )
        default = interrupted[0].name.removesuffix(".state.pt") if interrupted else "automatic"
        request = self.ask_train(classes, default)
        if request is None:
            return False
        if not request.classes:
            window.prompter.error(TITLE, "Choose the classes of the objects to find.")
            return False
        if request.region_class not in classes:
            window.prompter.error(
                TITLE,
                f"No saved annotation of class {request.region_class!r} marks an area where "
                "every object is annotated. Draw one around such an area and save the project, "
                "or choose the class that marks them.",
            )
            return False
        folder.mkdir(parents=True, exist_ok=True)
        out = free_path(folder, safe_name(request.name))  # never overwrite one
        resume = False
        if state_file(out).is_file():
            answer = self.ask_resume(out.stem)
            if answer is None:
                return False
            resume = answer
        if resume:  # the state resumes only with the settings it was written with
            before = interrupted_settings(state_file(out))
            request = dataclasses.replace(
                request,
                epochs=before.get("epochs", request.epochs),
                variants=before.get("variants", request.variants),
            )
        return self.start_training(project, request, out, resume)

    def start_training(
        self, project: str, request: InstancesRequest, out: Path, resume: bool = False
    ) -> bool:
        cache = self.feature_cache
        if cache is None:
            from engine.backends.openvino_backend import cache_root

            cache = cache_root() / "train-instance-features"
        program, prefix = wsi_sam_program()
        self._out, self._epochs, self._epoch, self.last_progress = out, request.epochs, 1, {}
        self._run = TrainingProcess(self._window, TITLE, self._show_progress, self._on_finished)
        label = "Resuming training…" if resume else "Starting training…"
        args = train_instances_command(project, request, out, cache, resume)
        self._run.start(program, [*prefix, *args], label)
        return True

    # -- the running process ----------------------------------------------------------------
    def _show_progress(self, record: dict[str, Any]) -> None:
        self.last_progress = record
        dialog = self.progress
        stage = record.get("stage")
        if dialog is None or stage not in ("encode", "step", "epoch", "done"):
            return
        if stage == "done":
            dialog.setRange(0, 0)
            dialog.setLabelText("Writing the decoder…")
            return
        done, total = int(record["done"]), max(1, int(record["total"]))
        if stage == "encode":
            dialog.setRange(0, total)
            dialog.setValue(done)
            dialog.setLabelText(f"Encoding fields: {done} / {total}")
        elif stage == "step":
            epochs = max(1, self._epochs)
            dialog.setRange(0, epochs * total)
            dialog.setValue(min(epochs, self._epoch - 1) * total + done)
            dialog.setLabelText(f"Epoch {self._epoch} / {epochs}: step {done} / {total}")
        else:  # an epoch finished
            self._epochs, self._epoch = total, done + 1
            if done >= total:
                dialog.setRange(0, 0)
                dialog.setLabelText("Validating and writing the decoder…")

    def _on_finished(self, exit_code: int, cancelled: bool, stderr: str) -> None:
        out = self._out
        self._run = None
        window = self._window
        written = exit_code == 0 and out is not None and out.is_file()
        if cancelled and not written:
            message = (
                "Training cancelled; no decoder was written. The last finished epoch is kept: "
                "train again with the same name to resume."
            )
            window.statusBar().showMessage(message, 10000)
            self.trainingFinished.emit("", message)
            return
        if not written or out is None:
            lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"wsi-sam train-instances: exit status {exit_code}"
            window.prompter.error("Training failed", detail)
            self.trainingFinished.emit("", detail)
            return
        entry = next(
            (e for e in window.heads.catalogue().decoders if _same_file(out, e.path)), None
        )
        summary = entry.describe() if entry is not None else str(out)
        window.statusBar().showMessage(f"Automatic segmentation {out.stem} trained", 10000)
        self.trainingFinished.emit(str(out), summary)
        if self.ask_use(out.stem, summary):
            window.everything.choose_method(str(out))


def interrupted_settings(state: Path) -> dict[str, int]:
    """The epochs and symmetries an interrupted run's state was written with ({} when it
    cannot be read: the command then says what is wrong)."""
    try:
        import torch

        payload = torch.load(state, map_location="cpu", weights_only=True)
        config = json.loads(payload["config"])
        return {"epochs": int(config["epochs"]), "variants": len(config["variants"])}
    except Exception:
        return {}


def _decoder_name(state: Path) -> str:
    """``NAME.pt`` for ``NAME.state.pt``."""
    return state.name.removesuffix(".state.pt") + ".pt"


class TrainInstancesDialog(QDialog):
    """Classes (checked, with their counts), the region class, a name and the epochs."""

    def __init__(self, classes: Counter[str], default_name: str, parent: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(TITLE)
        layout = QFormLayout(self)
        note = QLabel(
            "Learns from the saved project: inside each annotation of the region class, every "
            "object of the chosen classes must be annotated (the rest is taught as background)."
        )
        note.setWordWrap(True)
        layout.addRow(note)
        self.classes = QListWidget()
        for name, count in classes.most_common():
            item = QListWidgetItem(f"{name} ({count})")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            region_like = name == REGION_CLASS or name.lower().startswith("region")
            unchecked = region_like or name == UNCLASSIFIED
            item.setCheckState(Qt.CheckState.Unchecked if unchecked else Qt.CheckState.Checked)
            self.classes.addItem(item)
        layout.addRow("Objects to find", self.classes)
        self.region_class = QComboBox()
        self.region_class.setEditable(True)
        self.region_class.addItems([n for n in classes if n != UNCLASSIFIED])
        self.region_class.setCurrentText(REGION_CLASS)
        self.region_class.setToolTip("Annotations of this class mark completely annotated areas")
        layout.addRow("Completely annotated areas", self.region_class)
        self.name = QLineEdit(default_name)
        layout.addRow("Name", self.name)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(10)
        layout.addRow("Epochs", self.epochs)
        add_ok_cancel(self, layout)

    def request(self) -> InstancesRequest:
        chosen = checked_names(self.classes)
        region = self.region_class.currentText().strip() or REGION_CLASS
        return InstancesRequest(
            classes=[c for c in chosen if c not in (UNCLASSIFIED, region)],
            name=self.name.text().strip() or "automatic",
            region_class=region,
            epochs=self.epochs.value(),
        )
