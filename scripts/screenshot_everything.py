"""Screenshot of Segment everything on the bundled sample slide, under Xvfb.

    .venv/bin/python scripts/screenshot_everything.py OUT.png [--region x0,y0,x1,y1]
        [--points-per-side 12] [--mode wsi-sam] [--accept]

Starts Xvfb on a free display, opens the app's window on the sample slide with the real engine,
segments everything in the region (previewed; ``--accept`` adds the objects as annotations),
and saves the window.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


def inner(args: argparse.Namespace) -> int:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app import sample_slide_path
    from app.main_window import MainWindow
    from engine.everything import EverythingSettings

    app = QApplication.instance() or QApplication([])
    window = MainWindow()
    window.resize(1500, 950)
    window.show()

    def wait(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.time() + seconds
        while time.time() < deadline:
            if condition():
                return True
            loop = QEventLoop()
            QTimer.singleShot(100, loop.quit)
            loop.exec()
        return False

    if not window.open_path(sample_slide_path()):
        return 1
    if not wait(lambda: window.engine.is_ready(), 300):
        print("the engine did not load", file=sys.stderr)
        return 1
    x0, y0, x1, y1 = args.region
    window.mode_combo.setCurrentIndex(window.mode_combo.findData(args.mode))
    window.prompts.set_box(x0, y0, x1, y1)  # the region, drawn as a box
    window.engine.cancel_pending()
    window.view.fit_to_window()
    settings = EverythingSettings(points_per_side=args.points_per_side, min_area=200.0)
    window.jobs.show_dialog = False
    started = time.perf_counter()
    if not window.everything.run(settings, "annotation"):
        return 1
    if not wait(window.pending.is_active, 900):
        print("no result", file=sys.stderr)
        return 1
    print(f"{len(window.pending.objects)} objects in {time.perf_counter() - started:.0f} s")
    if args.accept:
        window.accept_prompt()
    wait(lambda: window.view.pending_tiles() == 0, 30)
    wait(lambda: False, 1.0)
    window.grab().save(str(args.out))
    window.close()
    app.quit()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--region",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[300.0, 700.0, 2000.0, 2300.0],
    )
    parser.add_argument("--points-per-side", type=int, default=12)
    parser.add_argument("--mode", default="wsi-sam")
    parser.add_argument("--accept", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.inner:
        return inner(args)
    from screenshot_app import free_display

    display = free_display()
    xvfb = subprocess.Popen(
        ["Xvfb", f":{display}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while not Path(f"/tmp/.X11-unix/X{display}").exists():
            if xvfb.poll() is not None or time.time() > deadline:
                raise SystemExit("Xvfb did not start")
            time.sleep(0.1)
        env = dict(os.environ, DISPLAY=f":{display}", QT_QPA_PLATFORM="xcb")
        env.setdefault("WSI_SAM_DATA_DIR", tempfile.mkdtemp(prefix="wsi-sam-shot-"))
        command = [sys.executable, __file__, "--inner", *sys.argv[1:]]
        result = subprocess.run(command, env=env, cwd=ROOT, timeout=1200)
        if result.returncode == 0 and args.out.is_file():
            print(f"saved {args.out}")
        return result.returncode
    finally:
        xvfb.terminate()
        xvfb.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
