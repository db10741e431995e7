# ruff: noqa: N815  (Qt names signals in camelCase)
"""Box and point prompts drawn on the slide, sent to the engine, with a live mask preview.

Box tool: drag a rectangle; a new box starts a new prompt. Point tool: left click adds a positive
point, right click or Alt+click a negative one; points refine the current prompt (a box drawn
before stays). Every change submits the whole prompt; only the newest answer is shown. With a
single point and no box the engine returns several candidate masks; ``cycle_candidate`` steps
through them. ``accept`` hands the previewed geometry over (at once, or as soon as the pending
answer arrives) and clears the prompt; ``discard`` clears it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPen
from PySide6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
)

from app.engine_worker import EngineClient, SegmentRequest
from app.session.overlay import Z_PREVIEW, Z_PROMPT, geometry_to_path

TOOLS = ("pan", "box", "point")
MODES = ("wsi-sam", "sam")

POSITIVE_COLOR = QColor(40, 220, 60)
NEGATIVE_COLOR = QColor(235, 40, 40)
PREVIEW_COLOR = QColor(255, 220, 0)
BOX_COLOR = QColor(0, 200, 255)
POINT_RADIUS_PX = 5.0
MIN_BOX_SCREEN_PX = 4.0  # a drag shorter than this is a click, not a box


@dataclass
class Prompt:
    """A prompt in level-0 pixels: an optional box plus points labelled 1 (object) / 0 (not)."""

    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def is_empty(self) -> bool:
        return self.box is None and not self.points

    def is_single_point(self) -> bool:
        return self.box is None and len(self.points) == 1


class PromptController(QObject):
    """The prompt state machine between the viewer's tool signals and the engine."""

    promptChanged = Signal()
    previewChanged = Signal()
    accepted = Signal(object, float)  # geometry (level-0 px), score
    message = Signal(str)  # one line for the status bar
    waitingChanged = Signal(bool)

    def __init__(self, scene_source: Any, engine: EngineClient, parent: QObject | None = None):
        """``scene_source`` is the SlideView (anything with ``scene()`` and ``downsample()``)."""
        super().__init__(parent)
        self._view = scene_source
        self._engine = engine
        self._tool = "box"
        self._mode = "wsi-sam"
        self._slide_path: str | None = None
        self._prompt = Prompt()
        self._drag_start: QPointF | None = None
        self._latest_id: int | None = None  # id of the request whose answer we want
        self._result: Any = None
        self._candidate = 0
        self._accept_when_ready = False
        self._box_item: QGraphicsRectItem | None = None
        self._point_items: list[QGraphicsEllipseItem] = []
        self._preview_item: QGraphicsPathItem | None = None
        engine.finished.connect(self._on_finished)
        engine.failed.connect(self._on_failed)

    # -- state -----------------------------------------------------------------------------
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}; expected one of {TOOLS}")
        self._tool = tool
        self._drag_start = None

    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode != self._mode:
            self._mode = mode
            if not self._prompt.is_empty():
                self._submit()

    def set_slide_path(self, path: str | None) -> None:
        self.discard()
        self._slide_path = path

    def prompt(self) -> Prompt:
        return self._prompt

    def is_waiting(self) -> bool:
        return self._latest_id is not None and self._result is None

    def has_preview(self) -> bool:
        return self.preview_geometry() is not None

    def result(self) -> Any:
        return self._result

    def candidate_count(self) -> int:
        return len(getattr(self._result, "candidates", None) or [])

    def candidate_index(self) -> int:
        return self._candidate

    def preview_geometry(self) -> Any:
        if self._result is None:
            return None
        candidates = getattr(self._result, "candidates", None) or []
        if candidates:
            return _candidate(candidates[self._candidate % len(candidates)])[0]
        return self._result.geometry

    def preview_score(self) -> float:
        candidates = getattr(self._result, "candidates", None) or []
        if candidates:
            return _candidate(candidates[self._candidate % len(candidates)])[1]
        return float(getattr(self._result, "score", 0.0) or 0.0)

    # -- mouse (level-0 positions from the viewer) -----------------------------------------
    def handle_press(self, pos: QPointF, button: Any, modifiers: Any) -> None:
        if self._slide_path is None:
            return
        if self._tool == "box" and button == Qt.MouseButton.LeftButton:
            self._drag_start = QPointF(pos)
            self._show_box(QRectF(pos, pos))
        elif self._tool == "point":
            negative = button == Qt.MouseButton.RightButton or bool(
                _flags(modifiers) & _flags(Qt.KeyboardModifier.AltModifier)
            )
            if button in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
                self.add_point(pos.x(), pos.y(), positive=not negative)

    def handle_move(self, pos: QPointF, _buttons: Any = None) -> None:
        if self._tool == "box" and self._drag_start is not None:
            self._show_box(QRectF(self._drag_start, pos).normalized())

    def handle_release(self, pos: QPointF, button: Any, _modifiers: Any = None) -> None:
        if self._tool != "box" or self._drag_start is None:
            return
        if button != Qt.MouseButton.LeftButton:
            return
        start, self._drag_start = self._drag_start, None
        rect = QRectF(start, pos).normalized()
        min_size = MIN_BOX_SCREEN_PX * self._downsample()
        if rect.width() < min_size or rect.height() < min_size:
            # a click, not a drag: keep whatever prompt there was
            self._redraw_prompt()
            return
        self.set_box(rect.left(), rect.top(), rect.right(), rect.bottom())

    # -- prompt edits (also used by scripts and tests) -------------------------------------
    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Start a new prompt from a box (level-0 px)."""
        self._clear_result()
        self._prompt = Prompt(box=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        self._redraw_prompt()
        self._submit()

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        self._prompt.points.append((float(x), float(y)))
        self._prompt.labels.append(1 if positive else 0)
        self._redraw_prompt()
        self._submit()

    def undo_point(self) -> bool:
        """Remove the last point (Backspace); False when there is none."""
        if not self._prompt.points:
            return False
        self._prompt.points.pop()
        self._prompt.labels.pop()
        self._redraw_prompt()
        if self._prompt.is_empty():
            self.discard()
        else:
            self._submit()
        return True

    def cycle_candidate(self) -> bool:
        count = self.candidate_count()
        if count < 2:
            return False
        self._candidate = (self._candidate + 1) % count
        self._redraw_preview()
        self.message.emit(
            f"Candidate {self._candidate + 1} of {count} (score {self.preview_score():.2f})"
        )
        return True

    def accept(self) -> bool:
        """Accept the preview; when its answer is still coming, accept as soon as it arrives."""
        if self._prompt.is_empty():
            return False
        if self.is_waiting():
            self._accept_when_ready = True
            self.message.emit("Will accept when the mask is ready")
            return True
        geometry = self.preview_geometry()
        if geometry is None or geometry.is_empty:
            self.message.emit("Nothing to accept: the engine found no object for this prompt")
            return False
        score = self.preview_score()
        self.discard()
        self.accepted.emit(geometry, score)
        return True

    def discard(self) -> None:
        self._engine.cancel_pending()
        self._prompt = Prompt()
        self._drag_start = None
        self._accept_when_ready = False
        self._clear_result()
        self._redraw_prompt()
        self.promptChanged.emit()

    # -- engine ----------------------------------------------------------------------------
    def _submit(self) -> None:
        if self._slide_path is None or self._prompt.is_empty():
            return
        request = SegmentRequest(
            request_id=self._engine.new_request_id(),
            slide_path=self._slide_path,
            box=self._prompt.box,
            points=tuple(self._prompt.points),
            labels=tuple(self._prompt.labels),
            mode=self._mode,
            multimask=True if self._prompt.is_single_point() else None,
        )
        self._latest_id = request.request_id
        self._result = None
        self._candidate = 0
        self._engine.submit(request)
        self.promptChanged.emit()
        self.waitingChanged.emit(True)
        if not self._engine.is_ready():
            self.message.emit("The model is still loading; the prompt will run when it is ready")

    def _on_finished(self, request_id: int, result: Any) -> None:
        if request_id != self._latest_id:
            return  # an answer to a prompt that has changed since
        self._result = result
        self._candidate = 0
        self._redraw_preview()
        self.waitingChanged.emit(False)
        self.previewChanged.emit()
        if self.preview_geometry() is None:
            self.message.emit("The engine found no object for this prompt")
        elif self.candidate_count() > 1:
            self.message.emit(
                f"Candidate 1 of {self.candidate_count()} (M or Tab for the next); Enter accepts"
            )
        else:
            self.message.emit(f"Mask score {self.preview_score():.2f}; Enter accepts, Esc discards")
        if self._accept_when_ready:
            self._accept_when_ready = False
            self.accept()

    def _on_failed(self, request_id: int, message: str) -> None:
        if request_id != self._latest_id:
            return
        self._latest_id = None
        self._accept_when_ready = False
        self._clear_result()
        self.waitingChanged.emit(False)
        self.message.emit(message)

    # -- drawing ---------------------------------------------------------------------------
    def _scene(self) -> QGraphicsScene | None:
        scene = self._view.scene()
        return scene if isinstance(scene, QGraphicsScene) else None

    def _downsample(self) -> float:
        return float(self._view.downsample())

    def _show_box(self, rect: QRectF) -> None:
        scene = self._scene()
        if scene is None:
            return
        if self._box_item is None or self._box_item.scene() is not scene:
            self._box_item = QGraphicsRectItem()
            pen = QPen(BOX_COLOR, 2.0, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            self._box_item.setPen(pen)
            self._box_item.setZValue(Z_PROMPT)
            scene.addItem(self._box_item)
        self._box_item.setRect(rect)
        self._box_item.setVisible(True)

    def _redraw_prompt(self) -> None:
        scene = self._scene()
        if self._prompt.box is not None:
            x0, y0, x1, y1 = self._prompt.box
            self._show_box(QRectF(QPointF(x0, y0), QPointF(x1, y1)))
        elif self._box_item is not None and self._drag_start is None:
            self._remove(self._box_item)
            self._box_item = None
        for item in self._point_items:
            self._remove(item)
        self._point_items = []
        if scene is None:
            return
        for (x, y), label in zip(self._prompt.points, self._prompt.labels, strict=True):
            r = POINT_RADIUS_PX
            item = QGraphicsEllipseItem(-r, -r, 2 * r, 2 * r)
            item.setPos(QPointF(x, y))
            # constant size on screen at every zoom
            item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
            item.setBrush(QBrush(POSITIVE_COLOR if label else NEGATIVE_COLOR))
            pen = QPen(QColor(255, 255, 255), 1.5)
            pen.setCosmetic(True)
            item.setPen(pen)
            item.setZValue(Z_PROMPT + 1)
            scene.addItem(item)
            self._point_items.append(item)

    def _redraw_preview(self) -> None:
        geometry = self.preview_geometry()
        if geometry is None:
            if self._preview_item is not None:
                self._remove(self._preview_item)
                self._preview_item = None
            return
        scene = self._scene()
        if scene is None:
            return
        if self._preview_item is None or self._preview_item.scene() is not scene:
            self._preview_item = QGraphicsPathItem()
            pen = QPen(PREVIEW_COLOR, 2.0)
            pen.setCosmetic(True)
            self._preview_item.setPen(pen)
            fill = QColor(PREVIEW_COLOR)
            fill.setAlpha(60)
            self._preview_item.setBrush(QBrush(fill))
            self._preview_item.setZValue(Z_PREVIEW)
            scene.addItem(self._preview_item)
        self._preview_item.setPath(geometry_to_path(geometry))

    def _clear_result(self) -> None:
        self._result = None
        self._candidate = 0
        self._latest_id = None
        if self._preview_item is not None:
            self._remove(self._preview_item)
            self._preview_item = None
        self.previewChanged.emit()

    def forget_scene_items(self) -> None:
        """Drop references to drawn items (the viewer is about to clear its scene)."""
        for item in [self._box_item, self._preview_item, *self._point_items]:
            if item is not None:
                self._remove(item)
        self._box_item = None
        self._preview_item = None
        self._point_items = []

    @staticmethod
    def _remove(item: QGraphicsItem) -> None:
        scene = item.scene()
        if scene is not None:
            scene.removeItem(item)


def _candidate(candidate: Any) -> tuple[Any, float]:
    """(geometry, score) of a candidate: an ``engine`` Candidate or a plain pair."""
    if hasattr(candidate, "geometry"):
        return candidate.geometry, float(candidate.score)
    return candidate[0], float(candidate[1])


def _flags(value: Any) -> int:
    try:
        return int(value)
    except TypeError:
        return int(getattr(value, "value", 0))
