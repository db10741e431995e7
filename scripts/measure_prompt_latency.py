"""Time from releasing a box to its mask preview drawn, in the real app on the bundled sample slide.

Two cases, each repeated ``--reps`` times with the encoded fields forgotten before every
repetition:

- settled: the box tool is active, the view is moved to a new place and left still until the
  background pre-encode of the view centre has finished (both patches in WSI-SAM mode); then a box
  is released around the view centre. Only the decoders should run (``encoded`` False).
- cold: the same with background pre-encoding turned off, so the prompt encodes its own field.
- added point: after each settled box, ``--points`` clicks with the point tool inside the box
  (positive, a few HR pixels apart), each timed from the click to its preview drawn: the
  re-prompt a user feels when refining a mask point by point.

The clock starts just before the simulated mouse release and stops once the preview has been
painted into the viewer (a synchronous repaint after the answer arrived). The first prompt after
start-up (warm-up of the runtimes) is reported on its own line and not counted. Figures depend on
the machine and on whatever else runs on it: they belong in reports, not in tests.

    scripts/measure_prompt_latency.sh [--reps 5] [--backend auto] [--precision auto] [--mode sam]
    .venv/bin/python scripts/measure_prompt_latency.py --offscreen   # without Xvfb
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: level-0 view centres of the repetitions (tissue of the sample slide, 2220 x 2967 px)
CENTRES = [(1000, 1500), (1150, 1700), (900, 1300), (1100, 1100), (1000, 1900), (1200, 1400)]
VIEW_DOWNSAMPLE = 2.0  # the 10x display of a 20x slide
BOX_FRACTION = 0.8  # box side as a fraction of the pre-encode's expected object size
TIMEOUT_S = 300.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each case")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"))
    parser.add_argument("--precision", default="auto", choices=("auto", "f32", "bf16", "fp16"))
    parser.add_argument("--mode", default="wsi-sam", choices=("wsi-sam", "sam"))
    parser.add_argument(
        "--points", type=int, default=3, help="points added after each settled box (timed)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--xvfb", action="store_true", help="start a private Xvfb display")
    where.add_argument("--offscreen", action="store_true", help="Qt's offscreen platform")
    return parser.parse_args()


def start_xvfb() -> subprocess.Popen[bytes]:
    """An Xvfb server on a free display number, with DISPLAY and the xcb platform set for Qt."""
    for number in range(99, 160):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    else:
        raise SystemExit("no free X display number")
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit("Xvfb did not start")
        time.sleep(0.1)
    os.environ["DISPLAY"] = f":{number}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    return server


def wait_for(
    app: Any, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S
) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.002)


class Session:
    """The app's window on the sample slide, driven as a user would."""

    def __init__(self, app: Any, args: argparse.Namespace) -> None:
        from app import sample_slide_path
        from app.dialogs import Prompter
        from app.main_window import MainWindow

        class ReportingPrompter(Prompter):
            """Errors are printed, not shown in a dialog nobody would close."""

            def error(self, title: str, text: str) -> None:
                print(f"ERROR {title}: {text}", file=sys.stderr, flush=True)

        self.app = app
        self.window = window = MainWindow()
        window.prompter = ReportingPrompter(window)
        window.resize(1400, 900)
        window.show()
        if not window.open_path(sample_slide_path()):
            raise SystemExit("the sample slide did not open")
        window.set_mode(args.mode)
        window.set_tool("box")
        started = time.perf_counter()
        wait_for(app, lambda: window.engine.state() in ("ready", "failed"), "the model")
        if not window.engine.is_ready():
            raise SystemExit("the model did not load")
        print(
            f"model loaded in {time.perf_counter() - started:.1f} s: "
            f"{window.engine.backend_label()} ({args.mode} mode)",
            flush=True,
        )

    def move_to(self, x: float, y: float) -> None:
        view = self.window.view
        from PySide6.QtCore import QPointF

        view.set_downsample(VIEW_DOWNSAMPLE, QPointF(x, y))
        view.centre_on_level0(x, y)
        wait_for(self.app, lambda: view.pending_tiles() == 0, "the tiles")

    def wait_preencoded(self, asked_before: Any) -> None:
        """Until the view settled after ``asked_before`` was sent and its pre-encode has run."""
        preencode = self.window.preencode
        engine = self.window.engine

        def done() -> bool:
            # asked for this view, and nothing of it is left to run
            request = preencode.last_request()
            return (
                request is not None
                and request is not asked_before
                and not preencode.is_settling()
                and engine.preencode_request() is None
                and not engine.is_busy()
            )

        wait_for(self.app, done, "the background pre-encode")

    def box_at_view_centre(self) -> tuple[float, float, float, float]:
        from app.controllers.preencode import view_target

        window = self.window
        target = view_target(window.view.visible_rect_level0(), tuple(window.slide.dimensions))
        assert target is not None
        x, y, extent = target
        half = extent * BOX_FRACTION / 2
        return x - half, y - half, x + half, y + half

    def add_point(self, x: float, y: float) -> tuple[float, Any]:
        """Click a positive point with the point tool; seconds from the click to the preview."""
        from PySide6.QtCore import QPointF, Qt
        from PySide6.QtTest import QTest

        window = self.window
        viewport = window.view.viewport()
        window.set_tool("point")
        prompts = window.prompts
        before = prompts.result()
        self.app.processEvents()
        where = window.view.mapFromScene(QPointF(x, y))
        t0 = time.perf_counter()
        QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, where)
        wait_for(
            self.app,
            lambda: not prompts.is_waiting() and prompts.result() is not before,
            "the preview of the added point",
        )
        viewport.repaint()
        elapsed = time.perf_counter() - t0
        result = prompts.result()
        if result is None:
            raise SystemExit("the point prompt failed (see the message above)")
        return elapsed, result

    def release_box(
        self, box: tuple[float, float, float, float], keep: bool = False
    ) -> tuple[float, Any]:
        """Drag ``box`` with mouse events; seconds from the release to the preview painted."""
        from PySide6.QtCore import QPointF, Qt
        from PySide6.QtTest import QTest

        window = self.window
        viewport = window.view.viewport()
        start = window.view.mapFromScene(QPointF(box[0], box[1]))
        end = window.view.mapFromScene(QPointF(box[2], box[3]))
        no_mod = Qt.KeyboardModifier.NoModifier
        QTest.mousePress(viewport, Qt.MouseButton.LeftButton, no_mod, start)
        for t in (0.25, 0.5, 0.75, 1.0):
            QTest.mouseMove(viewport, start + (end - start) * t)
        self.app.processEvents()
        t0 = time.perf_counter()
        QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, no_mod, end)
        prompts = window.prompts
        wait_for(
            self.app,
            lambda: prompts.result() is not None or not prompts.is_waiting(),
            "the preview",
        )
        viewport.repaint()  # synchronous: the preview is on screen when this returns
        elapsed = time.perf_counter() - t0
        result = prompts.result()
        if result is None:
            raise SystemExit("the prompt failed (see the message above)")
        if not keep:
            prompts.discard()
        return elapsed, result

    def measure(
        self, x: float, y: float, preencode: bool, points: int = 0
    ) -> tuple[float, Any, list[tuple[float, Any]]]:
        """The box's latency and result, then each added point's (settled only)."""
        window = self.window
        window.set_tool("box")
        window.preencode.set_enabled(preencode)
        window.engine.clear_cache()
        asked_before = window.preencode.last_request()
        self.move_to(x, y)
        if preencode:
            self.wait_preencoded(asked_before)
        else:
            wait_for(self.app, lambda: not window.engine.is_busy(), "the engine")
        box = self.box_at_view_centre()
        seconds, result = self.release_box(box, keep=points > 0)
        added = []
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        step = (box[2] - box[0]) / 10
        for i in range(points):
            added.append(self.add_point(cx + step * (i - 1), cy + step * ((i % 2) - 0.5)))
        if points > 0:
            window.prompts.discard()
            window.set_tool("box")
        return seconds, result, added


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:8s} median {statistics.median(ms):6.0f} ms   min {min(ms):6.0f} ms   "
        f"max {max(ms):6.0f} ms   (n={len(ms)})"
    )


def main() -> int:
    args = parse_args()
    server = start_xvfb() if args.xvfb else None
    if args.offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    # private settings and journal: no restore dialog, the user's preference untouched
    os.environ["WSI_SAM_DATA_DIR"] = tempfile.mkdtemp(prefix="wsi-sam-latency-")
    try:
        from PySide6.QtWidgets import QApplication

        from app.session.settings import save_engine_preference

        save_engine_preference(args.backend, args.precision)
        app = QApplication.instance() or QApplication(sys.argv[:1])
        session = Session(app, args)
        print(f"CPU cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)

        warm_s, _, _ = session.measure(*CENTRES[-1], preencode=False, points=1)
        print(f"warm-up  {warm_s * 1000:6.0f} ms (first prompt, not counted)", flush=True)
        settled: list[float] = []
        cold: list[float] = []
        points: list[float] = []
        engine_s: dict[str, list[float]] = {"decode": [], "polygon": [], "total": []}
        point_engine_s: dict[str, list[float]] = {"decode": [], "polygon": [], "total": []}
        for rep in range(args.reps):
            x, y = CENTRES[rep % len(CENTRES)]
            seconds, result, added = session.measure(x, y, preencode=True, points=args.points)
            settled.append(seconds)
            for stage, values in engine_s.items():
                values.append(result.timings.get(stage, float("nan")))
            note = "" if not result.encoded else "  (ENCODED: the pre-encoded field was not used)"
            print(f"settled  {seconds * 1000:6.0f} ms  at ({x}, {y}){note}", flush=True)
            for point_s, point_result in added:
                points.append(point_s)
                for stage, values in point_engine_s.items():
                    values.append(point_result.timings.get(stage, float("nan")))
                flag = "  (ENCODED)" if point_result.encoded else ""
                print(f"point    {point_s * 1000:6.0f} ms{flag}", flush=True)
            seconds, result, _ = session.measure(x, y, preencode=False)
            cold.append(seconds)
            print(
                f"cold     {seconds * 1000:6.0f} ms  at ({x}, {y}), encode "
                f"{result.timings.get('encode', 0) * 1000:.0f} ms",
                flush=True,
            )
        print(summary("settled", settled))
        print(summary("cold", cold))
        if points:
            print(summary("point", points))
        print(
            "engine time of the settled prompts, median: "
            + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in engine_s.items())
        )
        if points:
            print(
                "engine time of the added points, median: "
                + ", ".join(
                    f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in point_engine_s.items()
                )
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        session.window.close()
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
