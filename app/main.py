"""Start-up of the desktop application."""

from __future__ import annotations

import sys
from pathlib import Path

from app import sample_slide_path


def run_gui(path: str | None, open_sample: bool = True) -> int:
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    target = Path(path) if path else (sample_slide_path() if open_sample else None)
    window = QMainWindow()
    window.setWindowTitle("WSI-SAM Studio")
    window.setCentralWidget(QLabel(f"WSI-SAM Studio\n{target or ''}"))
    window.resize(1200, 800)
    window.show()
    return int(app.exec())
