"""Start-up of the desktop application.

``WSI_SAM_SCREENSHOT=out/app.png`` makes the app save a picture of its window once the slide is
drawn (all visible tiles loaded, model loaded or failed) and quit: the screenshot script uses it.
``WSI_SAM_SCREENSHOT_BOX="x0,y0,x1,y1"`` (level-0 px) also runs that box prompt first and waits
for its mask preview, so the picture shows the engine at work.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from app import sample_slide_path

SCREENSHOT_TIMEOUT_S = 180.0


def run_gui(path: str | None, open_sample: bool = True) -> int:
    """Show the main window on ``path`` (a slide or QuPath project), or the sample slide."""
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.session.settings import APPLICATION, ORGANIZATION

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APPLICATION)
    app.setOrganizationName(ORGANIZATION)
    window = MainWindow()
    _install_excepthook(window)
    window.show()
    target = Path(path) if path else (sample_slide_path() if open_sample else None)
    if target is not None:
        window.open_path(target)
    shot = os.environ.get("WSI_SAM_SCREENSHOT")
    if shot:
        # kept on the window: a collected helper would silently disconnect its timer
        window.screenshot_helper = _ScreenshotWhenReady(  # type: ignore[attr-defined]
            window, Path(shot), os.environ.get("WSI_SAM_SCREENSHOT_BOX")
        )
    return int(app.exec())


def _install_excepthook(window: Any) -> None:
    """An unexpected error in a slot is reported to the user instead of ending the app."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        traceback.print_exception(kind, value, tb)
        if isinstance(value, KeyboardInterrupt):
            previous(kind, value, tb)
            return
        try:
            window.prompter.error(
                "Unexpected error",
                f"{kind.__name__}: {value}\n\nYour annotations are safe in the journal. "
                "Please report this with the details printed in the terminal.",
            )
        except Exception:
            previous(kind, value, tb)

    sys.excepthook = hook


class _ScreenshotWhenReady:
    """Polls until the window shows the slide, grabs it to ``path`` and quits the app."""

    def __init__(self, window: Any, path: Path, box: str | None):
        from PySide6.QtCore import QTimer

        self.window = window
        self.path = path
        self.box = [float(v) for v in box.split(",")] if box else None
        self.box_sent = False
        self.started = time.monotonic()
        self.ready_since: float | None = None
        self.timer = QTimer(window)
        self.timer.setInterval(250)
        self.timer.timeout.connect(self._poll)
        self.timer.start()

    def _poll(self) -> None:
        window = self.window
        timed_out = time.monotonic() - self.started > SCREENSHOT_TIMEOUT_S
        engine_settled = window.engine.state() in ("ready", "failed")
        ready = window.slide is not None and window.view.pending_tiles() == 0 and engine_settled
        if ready and self.box is not None:
            if not self.box_sent and window.engine.is_ready():
                window.set_tool("box")
                window.prompts.set_box(*self.box)
                self.box_sent = True
            ready = not window.engine.is_ready() or window.prompts.has_preview()
        if not ready and not timed_out:
            self.ready_since = None
            return
        # let the last tiles and status texts paint
        if self.ready_since is None and not timed_out:
            self.ready_since = time.monotonic()
            return
        if not timed_out and time.monotonic() - (self.ready_since or 0) < 1.0:
            return
        self.timer.stop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ok = window.grab().save(str(self.path))
        print(
            f"screenshot {'saved to' if ok else 'FAILED:'} {self.path}"
            f"{' (timed out waiting)' if timed_out else ''}",
            flush=True,
        )
        window.close()
        from PySide6.QtWidgets import QApplication

        QApplication.exit(0 if ok and not timed_out else 1)
