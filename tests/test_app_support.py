"""Shared pieces of the app tests (no tests here): a fast fake segmenter with the engine's
``segment`` signature, a prompter that answers dialogs programmatically, window fixtures."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point, Polygon, box

SAMPLE_SIZE = (2220, 2967)  # level-0 size of the bundled sample slide


class PromptError(ValueError):
    """Named like ``engine.PromptError`` (the worker words errors by their class name)."""


@dataclass
class FakeResult:
    geometry: Any
    score: float
    candidates: list[tuple[Any, float]] = field(default_factory=list)
    encoded: bool = True
    mode: str = "wsi-sam"


class FakeSegmenter:
    """Answers like ``engine.WsiSamPredictor.segment``: a box gives the box shrunk by 10 % with a
    square hole in its middle; points give a disc around the mean positive point whose radius
    grows with the number of points; a single point gives three candidates (radii 20, 40, 80)."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None  # tests can hold the engine on a prompt

    def segment(self, slide, box=None, points=None, labels=None, mode="wsi-sam", multimask=None):
        self.calls.append({"box": box, "points": points, "labels": labels, "mode": mode})
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        w, h = slide.dimensions
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise PromptError(f"the box {box} is not inside the slide")
            dx, dy = (x1 - x0) * 0.1, (y1 - y0) * 0.1
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hole = [(cx - dx, cy - dy), (cx + dx, cy - dy), (cx + dx, cy + dy), (cx - dx, cy + dy)]
            outer = box_coords(x0 + dx, y0 + dy, x1 - dx, y1 - dy)
            return FakeResult(Polygon(outer, [hole]), 0.9, mode=mode)
        positives = [p for p, lab in zip(points, labels, strict=True) if lab == 1]
        x = sum(float(p[0]) for p in positives) / max(1, len(positives))
        y = sum(float(p[1]) for p in positives) / max(1, len(positives))
        if len(points) == 1 and multimask is not False:
            candidates = [(Point(x, y).buffer(r), s) for r, s in ((20, 0.9), (40, 0.8), (80, 0.7))]
            return FakeResult(candidates[0][0], 0.9, candidates, mode=mode)
        return FakeResult(Point(x, y).buffer(20.0 * len(points)), 0.85, mode=mode)


def box_coords(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return list(box(x0, y0, x1, y1).exterior.coords)


class ScriptedPrompter:
    """Answers the main window's dialogs without showing them and records what was asked."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.asked: list[str] = []
        self.restore_answer = True
        self.unsaved_answer = "discard"
        self.geojson_instead_answer = False
        self.save_path: str | None = None
        self.open_path: str | None = None
        self.texts: list[str] = []
        self.colors: list[tuple[int, int, int]] = []
        self.locate_answer = False
        self.search_folder: str | None = None
        self.image_choice: Any = "first"  # "first": the first match of each; or a dict; None

    def error(self, title: str, text: str) -> None:
        self.errors.append((title, text))

    def ask_restore(self, count: int, slide_name: str) -> bool:
        self.asked.append(f"restore {count} {slide_name}")
        return self.restore_answer

    def ask_unsaved(self, slide_name: str) -> str:
        self.asked.append(f"unsaved {slide_name}")
        return self.unsaved_answer

    def offer_geojson_instead(self, message: str) -> bool:
        self.asked.append(f"geojson instead: {message}")
        return self.geojson_instead_answer

    def ask_open_slide(self, start_dir: str) -> str | None:
        return self.open_path

    def ask_open_project(self, start_dir: str) -> str | None:
        return self.open_path

    def ask_geojson_save_path(self, default_path: str) -> str | None:
        self.asked.append(f"save path {default_path}")
        return self.save_path

    def ask_geojson_open_path(self, start_dir: str) -> str | None:
        return self.open_path

    def ask_locate(self, title: str, text: str) -> bool:
        self.asked.append(f"locate: {text}")
        return self.locate_answer

    def ask_search_folder(self, start_dir: str) -> str | None:
        return self.search_folder

    def choose_image_files(self, missing: list[Any], matches: dict[str, list[Path]]) -> Any:
        self.asked.append(f"choose {sum(len(paths) for paths in matches.values())} files")
        if self.image_choice == "first":
            return {entry_id: paths[0] for entry_id, paths in matches.items() if paths}
        return self.image_choice

    def ask_text(self, title: str, label: str, default: str = "") -> str | None:
        return self.texts.pop(0) if self.texts else None

    def ask_color(self, initial: tuple[int, int, int]) -> tuple[int, int, int] | None:
        return self.colors.pop(0) if self.colors else None


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private per-user data dir (journal, settings) for one test."""
    folder = tmp_path / "userdata"
    monkeypatch.setenv("WSI_SAM_DATA_DIR", str(folder))
    return folder


def make_window(qtbot: Any, segmenter: Any = None, prompter: Any = None, **kwargs: Any) -> Any:
    from app.main_window import MainWindow

    segmenter = segmenter if segmenter is not None else FakeSegmenter()
    window = MainWindow(
        predictor_factory=(lambda progress: segmenter) if segmenter != "real" else None,
        prompter=prompter if prompter is not None else ScriptedPrompter(),
        **kwargs,
    )
    window.segmenter = segmenter
    qtbot.addWidget(window)
    window.resize(1200, 800)
    window.show()
    qtbot.waitExposed(window)
    return window


def wait_ready(qtbot: Any, window: Any, timeout_ms: int = 10_000) -> None:
    qtbot.waitUntil(lambda: window.engine.state() in ("ready", "failed"), timeout=timeout_ms)
    assert window.engine.is_ready(), window.prompter.errors


def wait_tiles(qtbot: Any, window: Any, timeout_ms: int = 10_000) -> None:
    qtbot.waitUntil(lambda: window.view.pending_tiles() == 0, timeout=timeout_ms)


def view_point(window: Any, x: float, y: float) -> Any:
    """Viewport position of level-0 point (x, y)."""
    from PySide6.QtCore import QPointF

    return window.view.mapFromScene(QPointF(x, y))


def drag_box(qtbot: Any, window: Any, x0: float, y0: float, x1: float, y1: float) -> None:
    """Draw a box with simulated mouse events on the viewer (level-0 corners)."""
    from PySide6.QtCore import Qt

    viewport = window.view.viewport()
    start, end = view_point(window, x0, y0), view_point(window, x1, y1)
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for t in (0.25, 0.5, 0.75, 1.0):
        step = start + (end - start) * t
        qtbot.mouseMove(viewport, step)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def click(qtbot: Any, window: Any, x: float, y: float, button: Any = None, modifier: Any = None):
    from PySide6.QtCore import Qt

    qtbot.mouseClick(
        window.view.viewport(),
        button or Qt.MouseButton.LeftButton,
        modifier or Qt.KeyboardModifier.NoModifier,
        view_point(window, x, y),
    )
