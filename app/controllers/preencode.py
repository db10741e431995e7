"""Nothing waits: encode the field at the view centre while the user looks, before they prompt.

A new field costs one or two encoder passes, a prompt in an encoded field only the decoders. So
when a prompt tool (box or point) is active and the view has settled (no pan or zoom for
:data:`SETTLE_MS`), the engine is asked to encode the field a prompt at the view centre would use,
HR patch first, then LR (WSI-SAM mode), in its lower-priority pre-encode slot: a real prompt
always goes first. Any pan or zoom drops the request at once (the engine never starts a step of a
stale request) and the next settle asks again.

The field's magnification comes from the expected object size, guessed from the view: a third of
the shorter side of what the view shows of the slide (the size of box one draws at this zoom),
which :func:`engine.patches.choose_field` turns into a magnification as it would for that box.

After a pan, the fields next in the pan direction (:data:`NEIGHBOURS` of them) are encoded
after the view centre's, in the same low-priority slot: where the user is likely to prompt next.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QRectF, QTimer, Signal

from app.engine_worker import PreencodeRequest

#: The view counts as settled after this long without a pan or zoom.
SETTLE_MS = 300
#: Expected object size as a fraction of the shorter visible side (level-0 pixels).
EXTENT_FRACTION = 1.0 / 3.0
PROMPT_TOOLS = ("box", "point")
#: fields encoded ahead of the view centre in the pan direction, once the centre's is done
NEIGHBOURS = 1
#: a move between two settled views counts as a pan when it is this share of the view's size
MIN_PAN_FRACTION = 0.1


def pan_direction(
    before: tuple[float, float, float] | None, now: tuple[float, float, float]
) -> tuple[float, float] | None:
    """The pan between two settled views, (centre x, centre y, view size) each in level-0
    pixels: the direction moved, or None after a zoom or a move too small to be a pan."""
    if before is None:
        return None
    if abs(now[2] - before[2]) > 1e-6 * max(now[2], before[2]):
        return None  # a zoom
    dx, dy = now[0] - before[0], now[1] - before[1]
    if (dx * dx + dy * dy) ** 0.5 < MIN_PAN_FRACTION * now[2]:
        return None
    return dx, dy


def view_target(visible: QRectF, slide_size: tuple[int, int]) -> tuple[float, float, float] | None:
    """(x, y, extent) in level-0 pixels to pre-encode for a view showing ``visible``.

    The centre and size are those of the part of the slide on screen (a zoomed-out view shows
    background around the slide); None when no part of the slide is visible.
    """
    shown = visible.intersected(QRectF(0.0, 0.0, float(slide_size[0]), float(slide_size[1])))
    if shown.isEmpty():
        return None
    centre = shown.center()
    return centre.x(), centre.y(), min(shown.width(), shown.height()) * EXTENT_FRACTION


class PreencodeController(QObject):
    """Asks the engine to pre-encode the view centre once the view settles with a prompt tool.

    Uses the window's ``view``, ``engine``, ``prompts``, ``slide``, ``slide_path``,
    ``tool_actions`` and ``mode_combo``.
    """

    requested = Signal(object)  # the PreencodeRequest sent to the engine

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self._engine = window.engine
        self._enabled = True
        self._last: PreencodeRequest | None = None
        self._settled_view: tuple[float, float, float] | None = None  # centre x, y, view size
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SETTLE_MS)
        self._timer.timeout.connect(self._settled)
        window.view.viewChanged.connect(self.view_moved)
        window.view.slideChanged.connect(self.view_moved)
        # the new model (after a reload) has an empty cache; a tool or mode change may need more
        self._engine.loaded.connect(self.schedule)
        window.mode_combo.currentIndexChanged.connect(lambda _index: self.schedule())
        for action in window.tool_actions.values():
            action.toggled.connect(self._on_tool_toggled)

    def set_enabled(self, enabled: bool) -> None:
        """Turn background pre-encoding on or off (off: prompts encode their own fields)."""
        self._enabled = enabled
        if enabled:
            self.schedule()
        else:
            self._timer.stop()
            self._engine.cancel_preencode()

    def is_enabled(self) -> bool:
        return self._enabled

    def is_settling(self) -> bool:
        """Whether a pre-encode will be asked for when the view stays still a little longer."""
        return self._timer.isActive()

    def last_request(self) -> PreencodeRequest | None:
        """The latest request sent to the engine (it may be done or dropped since)."""
        return self._last

    def view_moved(self) -> None:
        """The view changed: what was asked for is stale; ask again once it settles."""
        self._engine.cancel_preencode()
        self.schedule()

    def schedule(self) -> None:
        """(Re)start the settle timer when pre-encoding applies now."""
        if self._applies():
            self._timer.start()
        else:
            self._timer.stop()

    def _on_tool_toggled(self, checked: bool) -> None:
        if checked:  # the action of the tool chosen now (the previous one toggles off)
            self.schedule()

    def _applies(self) -> bool:
        window = self._window
        return (
            self._enabled
            and window.slide is not None
            and window.slide_path is not None
            and window.prompts.tool() in PROMPT_TOOLS
        )

    def _settled(self) -> None:
        if not self._applies():
            return
        window = self._window
        target = view_target(window.view.visible_rect_level0(), tuple(window.slide.dimensions))
        if target is None:
            return
        x, y, extent = target
        visible = window.view.visible_rect_level0()
        view = (visible.center().x(), visible.center().y(), max(visible.width(), 1.0))
        direction = pan_direction(self._settled_view, view)
        self._settled_view = view
        request = PreencodeRequest(
            request_id=self._engine.new_request_id(),
            slide_path=window.slide_path,
            x=x,
            y=y,
            extent=extent,
            mode=window.prompts.mode(),
            direction=direction,
            neighbours=NEIGHBOURS if direction is not None else 0,
        )
        self._last = request
        self._engine.request_preencode(request)
        self.requested.emit(request)
