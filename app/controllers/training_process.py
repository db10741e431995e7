"""A ``wsi-sam`` training command in a process of its own, with a progress dialog and Cancel.

Shared by Tools > Train heads (:mod:`app.controllers.heads`) and Tools > Train automatic
segmentation (:mod:`app.controllers.train_instances`): both run the command line with
``--progress-json`` in a ``QProcess`` (a crash or a long run never freezes the window), read
its JSON lines from stdout as progress, keep the tail of stderr for the error message, and stop
it with SIGTERM on Cancel (the commands then unwind, keeping their last finished epoch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QListWidget,
    QProgressDialog,
    QWidget,
)

STDERR_TAIL = 20000  # characters of stderr kept for the error message

#: called with each JSON object the command prints on stdout
RecordHandler = Callable[[dict[str, Any]], None]
#: called once at the end: (exit code, cancelled by the user, stderr's tail)
FinishHandler = Callable[[int, bool, str], None]


class TrainingProcess(QObject):
    """One training run: ``start`` it once; ``on_finished`` is called once, at the end."""

    def __init__(
        self,
        window: QWidget,
        title: str,
        on_record: RecordHandler,
        on_finished: FinishHandler,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._title = title
        self._on_record = on_record
        self._on_finished_callback = on_finished
        self.process: QProcess | None = None
        self.progress: QProgressDialog | None = None
        self.cancelled = False
        self.stderr = ""
        self._stdout_buffer = ""

    @property
    def running(self) -> bool:
        return self.process is not None

    def start(self, program: str, args: list[str], label: str) -> None:
        """Start ``program args`` with a progress dialog showing ``label``."""
        process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        process.setProcessEnvironment(env)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._error)
        self.process = process
        progress = QProgressDialog(label, "Cancel", 0, 0, self._window)
        progress.setWindowTitle(self._title)
        progress.setMinimumDuration(0)
        progress.setAutoClose(False)
        progress.setAutoReset(False)
        progress.canceled.connect(self.cancel)
        progress.show()
        self.progress = progress
        process.start(program, args)

    def cancel(self) -> None:
        """Stop the process (SIGTERM: the command unwinds and keeps its last finished epoch)."""
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.cancelled = True
            self.process.terminate()

    def _read_stdout(self) -> None:
        assert self.process is not None
        self._stdout_buffer += bytes(self.process.readAllStandardOutput().data()).decode(
            "utf-8", "replace"
        )
        *lines, self._stdout_buffer = self._stdout_buffer.split("\n")
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._on_record(record)

    def _read_stderr(self) -> None:
        assert self.process is not None
        text = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace")
        self.stderr = (self.stderr + text)[-STDERR_TAIL:]

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.canceled.disconnect(self.cancel)
            self.progress.close()
            self.progress.deleteLater()
            self.progress = None
        self.process = None

    def _finished(self, exit_code: int, _status: Any) -> None:
        self._close()
        self._on_finished_callback(exit_code, self.cancelled, self.stderr)

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:  # no finished() follows
            program = self.process.program() if self.process is not None else "wsi-sam"
            self._close()
            self._on_finished_callback(-1, False, f"{program} could not be started.")


class TrainingHost:
    """What a controller that runs a :class:`TrainingProcess` in ``self._run`` shows of it."""

    _run: TrainingProcess | None

    @property
    def process(self) -> QProcess | None:
        """The running training process, None when none runs."""
        return self._run.process if self._run is not None else None

    @property
    def progress(self) -> QProgressDialog | None:
        return self._run.progress if self._run is not None else None

    def cancel(self) -> None:
        """Stop the training (SIGTERM: the command keeps its last finished epoch)."""
        if self._run is not None:
            self._run.cancel()


def free_path(folder: Path, stem: str) -> Path:
    """``folder/stem.pt``, or ``stem-2.pt``, ``stem-3.pt``... : never an existing file."""
    out = folder / f"{stem}.pt"
    n = 2
    while out.is_file():
        out = folder / f"{stem}-{n}.pt"
        n += 1
    return out


def add_ok_cancel(dialog: QDialog, layout: QFormLayout) -> None:
    """OK and Cancel as the training dialogs' last row."""
    buttons = QDialogButtonBox(
        QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
    )
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout.addRow(buttons)


def checked_names(classes: QListWidget) -> list[str]:
    """The class names (item data) of the checked items of a class list."""
    return [
        str(classes.item(i).data(Qt.ItemDataRole.UserRole))
        for i in range(classes.count())
        if classes.item(i).checkState() == Qt.CheckState.Checked
    ]
