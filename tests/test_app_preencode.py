"""Nothing waits: the engine worker's pre-encode slot (prompts first, stale requests dropped), the
window asking for a pre-encode when the view settles with a prompt tool, the status bar's engine
texts, and the backend/precision preference (stored, reloaded, failures reported)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PySide6.QtCore import QPointF
from test_app_support import (  # noqa: F401 (data_dir is a fixture)
    FakeSegmenter,
    ScriptedPrompter,
    data_dir,
    drag_box,
    make_window,
    wait_ready,
    wait_tiles,
)

from app.engine_worker import EngineClient, EngineOptions, PreencodeRequest, SegmentRequest
from app.session.settings import engine_preference, save_engine_preference

# every test keeps its settings and journal in a data dir of its own
pytestmark = pytest.mark.usefixtures("data_dir")

FAKE_LABEL = "Fake CPU f32"


class FakePreencoder(FakeSegmenter):
    """A FakeSegmenter with the predictor's pre-encode API, logging every engine call in order.

    ``preencode_gate`` holds a pre-encode step until set (``preencode_started`` tells that one is
    being held); fields are plain tuples, cached parts a set.
    """

    backend_label = FAKE_LABEL

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[Any, ...]] = []
        self.cached: set[tuple[Any, str]] = set()
        self.preencode_gate: threading.Event | None = None
        self.preencode_started = threading.Event()

    def field_at(self, slide: Any, x: float, y: float, extent: float | None = None) -> Any:
        return ("field", round(x), round(y), None if extent is None else round(extent))

    def is_field_cached(self, slide: Any, chosen: Any, need_lr: bool = True) -> bool:
        return (chosen, "hr") in self.cached and (not need_lr or (chosen, "lr") in self.cached)

    def preencode(self, slide: Any, chosen: Any, part: str) -> bool:
        self.log.append(("preencode", part, chosen))
        self.preencode_started.set()
        if self.preencode_gate is not None:
            self.preencode_gate.wait(10)
        if (chosen, part) in self.cached:
            return False
        self.cached.add((chosen, part))
        return True

    def clear_cache(self) -> None:
        self.cached.clear()

    def segment(self, slide, box=None, points=None, labels=None, mode="wsi-sam", multimask=None):
        self.log.append(("segment", None if box is None else tuple(box)))
        return super().segment(slide, box, points, labels, mode, multimask)

    def kinds(self) -> list[tuple[str, ...]]:
        """The log without fields: ("preencode", part) and ("segment",) entries."""
        return [entry[:2] if entry[0] == "preencode" else entry[:1] for entry in self.log]


class _FakeSlide:
    dimensions = (1000, 1000)

    def close(self) -> None:
        pass


@pytest.fixture
def client(qtbot):
    """An engine client on a FakePreencoder, loaded."""
    fake = FakePreencoder()
    engine = EngineClient(lambda progress: fake, slide_opener=lambda path: _FakeSlide())
    engine.fake = fake
    with qtbot.waitSignal(engine.loaded, timeout=5000):
        engine.start()
    yield engine
    fake.preencode_gate = None
    engine.shutdown()


def preencode_request(engine: EngineClient, x: float = 500, mode: str = "wsi-sam"):
    return PreencodeRequest(engine.new_request_id(), "s", x=x, y=500, extent=300, mode=mode)


# -- the worker -------------------------------------------------------------------------------
def test_worker_preencodes_hr_then_lr_when_asked(qtbot, client) -> None:
    parts: list[tuple[int, str, bool]] = []
    client.preencoded.connect(lambda rid, part, ran: parts.append((rid, part, ran)))
    request = preencode_request(client)
    with qtbot.waitSignal(client.idle, timeout=5000):
        client.request_preencode(request)
    assert parts == [(request.request_id, "hr", True), (request.request_id, "lr", True)]
    assert client.fake.kinds() == [("preencode", "hr"), ("preencode", "lr")]
    assert client.preencode_request() is None and not client.is_busy()
    # asked again for the same view: the field is cached, nothing is encoded
    parts.clear()
    with qtbot.waitSignal(client.idle, timeout=5000):
        client.request_preencode(preencode_request(client))
    assert [ran for _, _, ran in parts] == [False]
    assert len(client.fake.log) == 2


def test_sam_mode_preencodes_only_the_hr_patch(qtbot, client) -> None:
    with qtbot.waitSignal(client.idle, timeout=5000):
        client.request_preencode(preencode_request(client, mode="sam"))
    assert client.fake.kinds() == [("preencode", "hr")]


def test_prompt_submitted_during_preencode_runs_before_the_lr_step(qtbot, client) -> None:
    fake = client.fake
    fake.preencode_gate = threading.Event()
    client.request_preencode(preencode_request(client))
    assert fake.preencode_started.wait(5)  # the HR patch is being encoded
    answered: list[int] = []
    client.finished.connect(lambda rid, result: answered.append(rid))
    prompt = SegmentRequest(client.new_request_id(), "s", box=(400, 400, 600, 600))
    client.submit(prompt)
    fake.preencode_gate.set()
    qtbot.waitUntil(lambda: not client.is_busy(), timeout=5000)
    assert answered == [prompt.request_id]
    assert fake.kinds() == [("preencode", "hr"), ("segment",), ("preencode", "lr")]


def test_waiting_prompt_goes_before_a_preencode_not_started(qtbot, client) -> None:
    fake = client.fake
    fake.gate = threading.Event()  # hold the first prompt in segment()
    client.submit(SegmentRequest(client.new_request_id(), "s", box=(10, 10, 100, 100)))
    qtbot.waitUntil(lambda: len(fake.calls) == 1, timeout=5000)
    client.request_preencode(preencode_request(client))
    client.submit(SegmentRequest(client.new_request_id(), "s", box=(20, 20, 200, 200)))
    fake.gate.set()
    qtbot.waitUntil(lambda: not client.is_busy(), timeout=5000)
    assert fake.kinds() == [("segment",), ("segment",), ("preencode", "hr"), ("preencode", "lr")]


def test_stale_preencode_is_dropped(qtbot, client) -> None:
    fake = client.fake
    fake.preencode_gate = threading.Event()
    stale = preencode_request(client, x=100)
    client.request_preencode(stale)
    assert fake.preencode_started.wait(5)
    fresh = preencode_request(client, x=900)  # the view moved: a new request replaces it
    client.request_preencode(fresh)
    fake.preencode_gate.set()
    qtbot.waitUntil(lambda: not client.is_busy(), timeout=5000)
    fields = [(part, chosen[1]) for _, part, chosen in fake.log]
    assert fields == [("hr", 100), ("hr", 900), ("lr", 900)]  # the stale LR step never ran


def test_cancelled_preencode_never_starts(qtbot, client) -> None:
    fake = client.fake
    fake.gate = threading.Event()
    client.submit(SegmentRequest(client.new_request_id(), "s", box=(10, 10, 100, 100)))
    qtbot.waitUntil(lambda: len(fake.calls) == 1, timeout=5000)
    client.request_preencode(preencode_request(client))
    assert client.is_busy() and client.preencode_request() is not None
    client.cancel_preencode()
    assert client.preencode_request() is None
    fake.gate.set()
    qtbot.waitUntil(lambda: not client.is_busy(), timeout=5000)
    assert fake.kinds() == [("segment",)]


def test_segmenter_without_preencode_api_is_left_alone(qtbot) -> None:
    segmenter = FakeSegmenter()
    engine = EngineClient(lambda progress: segmenter, slide_opener=lambda path: _FakeSlide())
    try:
        with qtbot.waitSignal(engine.loaded, timeout=5000):
            engine.start()
        with qtbot.waitSignal(engine.preencoded, timeout=5000) as blocker:
            engine.request_preencode(preencode_request(engine))
        assert blocker.args[2] is False and segmenter.calls == []
        qtbot.waitUntil(lambda: not engine.is_busy(), timeout=5000)
    finally:
        engine.shutdown()


# -- the window -------------------------------------------------------------------------------
@pytest.fixture
def window(qtbot, sample_slide):
    fake = FakePreencoder()
    win = make_window(qtbot, segmenter=fake)
    assert win.open_path(sample_slide), win.prompter.errors
    wait_ready(qtbot, win)
    wait_tiles(qtbot, win)
    # the opened slide's view settles too: let that pre-encode finish, then start afresh
    qtbot.waitUntil(
        lambda: win.preencode.last_request() is not None and not win.engine.is_busy(),
        timeout=5000,
    )
    fake.log.clear()
    yield win
    fake.preencode_gate = None
    win.close()


def settle(qtbot, window) -> PreencodeRequest:
    """Wait for the request a settled view sends to the engine."""
    with qtbot.waitSignal(window.preencode.requested, timeout=5000) as blocker:
        pass
    return blocker.args[0]


def test_settled_view_with_box_tool_preencodes_the_view_centre(qtbot, window) -> None:
    window.set_tool("box")
    window.view.set_downsample(2.0, QPointF(1100, 1500))
    window.view.centre_on_level0(1100, 1500)
    request = settle(qtbot, window)
    visible = window.view.visible_rect_level0()
    assert abs(request.x - 1100) < 3 and abs(request.y - 1500) < 3
    shorter = min(visible.width(), visible.height())
    assert request.extent == pytest.approx(shorter / 3, rel=0.02)
    assert request.mode == "wsi-sam" and request.slide_path == window.slide_path
    qtbot.waitUntil(lambda: not window.engine.is_busy(), timeout=5000)
    fields = [entry for entry in window.segmenter.log if entry[0] == "preencode"]
    assert [part for _, part, _ in fields] == ["hr", "lr"]
    assert fields[0][2] == ("field", round(request.x), round(request.y), round(request.extent))
    assert window.engine_label.text() == "Ready"


def test_zoomed_out_view_preencodes_the_centre_of_the_slide_shown(qtbot, window) -> None:
    window.set_tool("point")
    window.view.set_downsample(window.view.downsample_range()[1])  # background around it
    request = settle(qtbot, window)
    width, height = window.slide.dimensions
    assert request.x == pytest.approx(width / 2, abs=3)
    assert request.y == pytest.approx(height / 2, abs=3)
    assert request.extent == pytest.approx(min(width, height) / 3, rel=0.02)


def test_panning_drops_the_preencode_and_asks_again_after_settling(qtbot, window) -> None:
    fake = window.segmenter
    window.set_tool("box")
    window.view.set_downsample(2.0, QPointF(700, 700))
    settle(qtbot, window)
    qtbot.waitUntil(lambda: not window.engine.is_busy(), timeout=5000)
    fake.preencode_started.clear()
    fake.preencode_gate = threading.Event()
    window.view.centre_on_level0(800, 900)
    held = settle(qtbot, window)
    assert fake.preencode_started.wait(5)  # its HR patch is being encoded
    window.view.pan_by(200, 0)  # the user pans on: the request is stale at once
    assert window.engine.preencode_request() is None
    assert window.preencode.is_settling()
    fake.preencode_gate.set()
    fresh = settle(qtbot, window)
    qtbot.waitUntil(lambda: not window.engine.is_busy(), timeout=5000)

    def steps(request: PreencodeRequest) -> list[str]:
        centre = (round(request.x), round(request.y))
        return [part for kind, part, chosen in fake.log if chosen[1:3] == centre]

    assert steps(held) == ["hr"]  # the LR step of the stale request never ran
    assert steps(fresh) == ["hr", "lr"]
    assert fresh.x > held.x and held.request_id < fresh.request_id


def test_pan_tool_does_not_preencode(qtbot, window) -> None:
    window.set_tool("pan")
    window.preencode._last = None
    window.view.set_downsample(2.0, QPointF(900, 900))
    window.view.centre_on_level0(900, 900)
    qtbot.wait(700)  # two settle periods
    assert window.preencode.last_request() is None and not window.preencode.is_settling()
    window.set_tool("point")  # choosing a prompt tool on a still view asks once it settles
    request = settle(qtbot, window)
    assert (request.x, request.y) == pytest.approx((900, 900), abs=3)


def test_preencode_can_be_turned_off(qtbot, window) -> None:
    window.preencode.set_enabled(False)
    window.preencode._last = None
    window.set_tool("box")
    window.view.centre_on_level0(900, 900)
    assert not window.preencode.is_settling()
    qtbot.wait(500)
    assert window.preencode.last_request() is None


def test_status_bar_names_the_backend_and_the_engine_work(qtbot, window) -> None:
    assert window.engine_status.backend_label.text() == FAKE_LABEL
    assert window.engine.backend_label() == FAKE_LABEL
    assert window.engine_label.text() == "Ready"
    texts: list[str] = []
    window.engine.busy.connect(lambda _rid, _what: texts.append(window.engine_label.text()))
    window.segmenter.preencode_started.clear()
    window.segmenter.preencode_gate = threading.Event()
    window.set_tool("box")
    window.view.set_downsample(2.0, QPointF(1000, 1200))  # a field not encoded yet
    settle(qtbot, window)
    qtbot.waitUntil(lambda: "Pre-encoding view…" in texts, timeout=5000)
    window.segmenter.preencode_gate.set()
    window.prompts.set_box(900, 1100, 1100, 1300)
    qtbot.waitUntil(window.prompts.has_preview, timeout=5000)
    qtbot.waitUntil(lambda: window.engine_label.text() == "Ready", timeout=5000)
    assert "Encoding field…" in texts  # the fake has no is_cached: every prompt may encode


def test_decoding_is_shown_for_a_cached_field(qtbot, sample_slide) -> None:
    fake = FakePreencoder()
    fake.is_cached = lambda slide, box=None, points=None, labels=None: True  # type: ignore[attr-defined]
    win = make_window(qtbot, segmenter=fake)
    assert win.open_path(sample_slide)
    wait_ready(qtbot, win)
    texts: list[str] = []
    win.engine.busy.connect(lambda _rid, what: texts.append(win.engine_label.text()))
    win.prompts.set_box(900, 1100, 1100, 1300)
    qtbot.waitUntil(win.prompts.has_preview, timeout=5000)
    assert "Decoding…" in texts
    win.close()


# -- the backend preference -------------------------------------------------------------------
class OptionsRecorder:
    """An options factory: records the options of each load, fails like the real loader would
    (``engine.backends.resolve_backend`` on the CPU) and otherwise returns a FakePreencoder."""

    def __init__(self) -> None:
        self.loads: list[EngineOptions] = []

    def __call__(self, progress: Any, options: EngineOptions) -> Any:
        from engine.backends import resolve_backend

        self.loads.append(options)
        resolve_backend(options.backend, options.precision, "cpu")  # BackendError if impossible
        fake = FakePreencoder()
        fake.backend_label = f"Fake {options.backend} {options.precision}"
        return fake


def options_window(qtbot, recorder: OptionsRecorder) -> Any:
    from app.main_window import MainWindow

    win = MainWindow(options_factory=recorder, prompter=ScriptedPrompter())
    qtbot.addWidget(win)
    win.show()
    wait_ready(qtbot, win, timeout_ms=30_000)
    return win


def test_backend_preference_is_stored_and_used_at_the_next_start(qtbot) -> None:
    recorder = OptionsRecorder()
    win = options_window(qtbot, recorder)
    assert recorder.loads == [EngineOptions("auto", "auto")]
    assert win.engine_status.backend_actions["auto"].isChecked()
    with qtbot.waitSignal(win.engine.loaded, timeout=30_000):
        win.engine_status.backend_actions["torch"].trigger()
    with qtbot.waitSignal(win.engine.loaded, timeout=30_000):
        win.engine_status.precision_actions["f32"].trigger()
    assert recorder.loads[1:] == [EngineOptions("torch", "auto"), EngineOptions("torch", "f32")]
    assert engine_preference() == ("torch", "f32")
    assert win.engine_status.backend_label.text() == "Fake torch f32"
    win.close()

    again = OptionsRecorder()
    second = options_window(qtbot, again)
    assert again.loads == [EngineOptions("torch", "f32")]
    assert second.engine_status.backend_actions["torch"].isChecked()
    assert second.engine_status.precision_actions["f32"].isChecked()
    second.close()


def test_impossible_backend_choice_says_why_and_keeps_the_model(qtbot, sample_slide) -> None:
    recorder = OptionsRecorder()
    win = options_window(qtbot, recorder)
    assert win.open_path(sample_slide)
    win.engine_status.backend_actions["torch"].trigger()
    win.engine_status.precision_actions["fp16"].trigger()  # torch has no fp16 on a CPU
    qtbot.waitUntil(lambda: bool(win.prompter.errors), timeout=30_000)
    qtbot.waitUntil(win.engine.is_ready, timeout=30_000)
    title, text = win.prompter.errors[-1]
    assert "cannot" in title.lower() and "fp16" in text and "\n" not in text
    assert win.engine.options() == EngineOptions("torch", "auto")  # the model kept
    assert win.engine_status.precision_actions["auto"].isChecked()
    assert engine_preference() == ("torch", "auto")
    win.prompts.set_box(900, 1100, 1100, 1300)  # the app still segments
    qtbot.waitUntil(win.prompts.has_preview, timeout=5000)
    win.close()


def test_saved_choice_that_no_longer_runs_falls_back_to_auto(qtbot) -> None:
    save_engine_preference("torch", "fp16")
    recorder = OptionsRecorder()
    win = options_window(qtbot, recorder)
    assert recorder.loads == [EngineOptions("torch", "fp16"), EngineOptions("auto", "auto")]
    assert len(win.prompter.errors) == 1 and "Auto" in win.prompter.errors[0][1]
    assert engine_preference() == ("auto", "auto")
    assert win.engine_status.backend_actions["auto"].isChecked()
    win.close()


# -- the real engine --------------------------------------------------------------------------
@pytest.mark.slow
def test_real_engine_box_at_settled_view_centre_only_decodes(
    qtbot, sample_slide, fresh_wsi_sam
) -> None:
    import engine

    predictor = engine.WsiSamPredictor(fresh_wsi_sam)
    win = make_window(qtbot, segmenter=predictor)
    assert win.open_path(sample_slide)
    wait_ready(qtbot, win, timeout_ms=60_000)
    wait_tiles(qtbot, win)
    assert win.engine_status.backend_label.text() == fresh_wsi_sam.sam.backend_label
    lr_done: list[int] = []
    win.engine.preencoded.connect(lambda rid, part, _ran: part == "lr" and lr_done.append(rid))
    win.set_tool("box")
    win.view.centre_on_level0(1000, 1600)
    request = settle(qtbot, win)
    qtbot.waitUntil(lambda: request.request_id in lr_done, timeout=120_000)  # two encodes
    half = request.extent * 0.4
    drag_box(qtbot, win, request.x - half, request.y - half, request.x + half, request.y + half)
    qtbot.waitUntil(win.prompts.has_preview, timeout=120_000)
    result = win.prompts.result()
    assert result.encoded is False and result.mode == "wsi-sam"
    win.close()


# -- fields ahead of the pan ------------------------------------------------------------------
class FakeWithNeighbours(FakePreencoder):
    """Knows the fields next to a field: ("field", x + 1000 * step * dx, ...)."""

    def neighbour_field(self, slide: Any, chosen: Any, direction: Any, step: int = 1) -> Any:
        dx, dy = direction
        return ("next", chosen[1] + 1000 * step * dx, chosen[2] + 1000 * step * dy)


def test_request_parts_include_the_neighbours_after_the_centre() -> None:
    plain = PreencodeRequest(1, "s", x=1, y=2, extent=3)
    assert plain.parts() == ("hr", "lr")
    ahead = PreencodeRequest(1, "s", x=1, y=2, extent=3, direction=(1.0, 0.0), neighbours=2)
    assert ahead.parts() == ("hr", "lr", "hr@1", "lr@1", "hr@2", "lr@2")
    sam = PreencodeRequest(1, "s", x=1, y=2, mode="sam", direction=(0.0, 1.0), neighbours=1)
    assert sam.parts() == ("hr", "hr@1")
    # no direction, no neighbours
    assert PreencodeRequest(1, "s", x=1, y=2, neighbours=3).parts() == ("hr", "lr")


def test_worker_preencodes_the_neighbour_ahead_after_the_centre(qtbot) -> None:
    fake = FakeWithNeighbours()
    engine = EngineClient(lambda progress: fake, slide_opener=lambda path: _FakeSlide())
    with qtbot.waitSignal(engine.loaded, timeout=5000):
        engine.start()
    try:
        request = PreencodeRequest(
            engine.new_request_id(), "s", x=500, y=500, extent=300, direction=(1, 0), neighbours=1
        )
        engine.request_preencode(request)
        qtbot.waitUntil(lambda: engine.preencode_request() is None, timeout=5000)
        qtbot.waitUntil(lambda: not engine.is_busy(), timeout=5000)
        centre = ("field", 500, 500, 300)
        assert [(part, chosen) for _, part, chosen in fake.log] == [
            ("hr", centre),
            ("lr", centre),
            ("hr", ("next", 1500, 500)),
            ("lr", ("next", 1500, 500)),
        ]
        # a prompt that arrives while the neighbour is being encoded goes before its next step
        fake.log.clear()
        fake.cached.clear()
        fake.preencode_gate = threading.Event()
        fake.preencode_started.clear()
        request = PreencodeRequest(
            engine.new_request_id(), "s", x=700, y=500, extent=300, direction=(1, 0), neighbours=1
        )
        engine.request_preencode(request)
        assert fake.preencode_started.wait(5)  # the centre's HR step is held
        engine.submit(SegmentRequest(engine.new_request_id(), "s", box=(1, 2, 30, 40)))
        fake.preencode_gate.set()
        qtbot.waitUntil(lambda: engine.preencode_request() is None, timeout=5000)
        qtbot.waitUntil(lambda: not engine.is_busy(), timeout=5000)
        assert fake.kinds()[:2] == [("preencode", "hr"), ("segment",)]
        assert len([k for k in fake.kinds() if k[0] == "preencode"]) == 4
    finally:
        fake.preencode_gate = None
        engine.shutdown()


def test_pan_direction_between_settled_views() -> None:
    from app.controllers.preencode import pan_direction

    assert pan_direction(None, (0, 0, 100)) is None
    assert pan_direction((0, 0, 100), (50, -20, 100)) == (50, -20)
    assert pan_direction((0, 0, 100), (5, 0, 100)) is None  # too small to be a pan
    assert pan_direction((0, 0, 100), (500, 0, 200)) is None  # a zoom


def test_settled_pan_asks_for_the_field_ahead(qtbot, window) -> None:
    window.set_tool("box")
    window.view.set_downsample(2.0, QPointF(900, 1400))
    window.view.centre_on_level0(900, 1400)
    first = settle(qtbot, window)
    assert first.direction is None  # after a zoom: no pan direction
    qtbot.waitUntil(lambda: not window.engine.is_busy(), timeout=5000)
    window.view.centre_on_level0(1300, 1400)  # pan to the right
    request = settle(qtbot, window)
    assert request.direction is not None and request.direction[0] > 0
    assert abs(request.direction[1]) < 1e-6 * request.direction[0] + 1
    assert request.neighbours >= 1 and "hr@1" in request.parts()


def test_predictor_neighbour_field_lies_ahead_at_the_same_magnification(sample_slide) -> None:
    from engine.patches import PATCH_SIZE, choose_field
    from engine.slides import open_slide
    from engine.wsi_predictor import REUSE_MARGIN, WsiSamPredictor

    predictor = WsiSamPredictor(model=None)  # type: ignore[arg-type]
    with open_slide(sample_slide) as slide:
        chosen = choose_field(slide, (1000, 1400, 1100, 1500))
        ahead = predictor.neighbour_field(slide, chosen, (1.0, 0.0))
        assert ahead is not None
        assert ahead.hr_downsample == chosen.hr_downsample
        step = (PATCH_SIZE - 2 * REUSE_MARGIN) * chosen.hr_downsample
        assert ahead.centre[0] - chosen.centre[0] == pytest.approx(
            step, abs=2 * chosen.lr_downsample
        )
        assert ahead.centre[1] == pytest.approx(chosen.centre[1], abs=chosen.lr_downsample)
        # the two fields' reusable areas meet: no gap between them for a prompt
        right_edge = chosen.centre[0] + (PATCH_SIZE / 2 - REUSE_MARGIN) * chosen.hr_downsample
        left_edge = ahead.centre[0] - (PATCH_SIZE / 2 - REUSE_MARGIN) * ahead.hr_downsample
        assert left_edge <= right_edge + chosen.lr_downsample
        # off the slide: none
        far = predictor.neighbour_field(slide, chosen, (-1.0, 0.0), step=10)
        assert far is None
        assert predictor.neighbour_field(slide, chosen, (0.0, 0.0)) is None
