"""``wsi-sam --self-test``: check that an installation (frozen or not) can do its job.

Offscreen and without user files, it loads the model, opens the bundled sample slide, segments
one box in both modes (plain SAM and WSI-SAM), writes the two annotations as QuPath GeoJSON to a
temporary folder, reads them back and checks them, then builds the main window offscreen (which
proves the Qt plugins are there). It prints one line (which names the image encoder's backend and
precision, e.g. "encoder OpenVINO CPU bf16") and returns 0, or prints the failed step
and its reason to stderr and returns 1.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

#: A box (level-0 px) around a keratin whorl in the sample slide (CMU-1-Small-Region, 2220x2967):
#: a compact, well-contrasted object that SAM segments reliably.
SAMPLE_BOX: tuple[float, float, float, float] = (1180.0, 1955.0, 1355.0, 2175.0)
MODES: tuple[str, ...] = ("sam", "wsi-sam")
#: the object must cover at least this fraction of the box, and the box this fraction of it
MIN_BOX_OVERLAP = 0.2
MODE_KEY = "wsi-sam mode"

T = TypeVar("T")


class SelfTestError(RuntimeError):
    """A step of the self-test failed; the message says which and why."""


def check_annotations(
    annotations: Sequence[Any],
    slide_size: tuple[int, int],
    box: Sequence[float],
    modes: Sequence[str] = MODES,
) -> list[str]:
    """Problems with annotations read back from the self-test's GeoJSON (empty when all is well).

    Expects exactly one annotation per mode (``metadata[MODE_KEY]``), each a valid, non-empty
    (Multi)Polygon inside the slide's level-0 bounds that overlaps ``box`` substantially.
    """
    from shapely.geometry import box as shapely_box

    problems: list[str] = []
    found = [a.metadata.get(MODE_KEY) for a in annotations]
    for mode in modes:
        if found.count(mode) != 1:
            problems.append(f"expected one {mode!r} annotation, found {found.count(mode)}")
    extra = [m for m in found if m not in modes]
    if extra:
        problems.append(f"unexpected annotations with modes {extra}")
    width, height = slide_size
    slide_rect = shapely_box(0, 0, width, height)
    prompt = shapely_box(*box)
    for annotation in annotations:
        what = f"{annotation.metadata.get(MODE_KEY)!r} annotation"
        geometry = annotation.geometry
        if geometry is None or geometry.is_empty:
            problems.append(f"{what} has an empty geometry")
            continue
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            problems.append(f"{what} is a {geometry.geom_type}, not a polygon")
            continue
        if not geometry.is_valid:
            problems.append(f"{what} is not a valid polygon")
            continue
        if not slide_rect.buffer(1.0).contains(geometry):
            problems.append(f"{what} reaches outside the slide (bounds {geometry.bounds})")
        shared = geometry.intersection(prompt).area
        if shared < MIN_BOX_OVERLAP * min(geometry.area, prompt.area):
            problems.append(
                f"{what} hardly overlaps the box: {shared:.0f} px² shared, "
                f"area {geometry.area:.0f} px², box {prompt.area:.0f} px²"
            )
    return problems


def _step(name: str, func: Callable[[], T]) -> T:
    """Run one step; any failure becomes a SelfTestError that names the step."""
    try:
        return func()
    except SelfTestError:
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise SelfTestError(f"{name}: {type(exc).__name__}: {detail}") from exc


def _check_window() -> str:
    """Build the main window offscreen and paint it once; returns the Qt platform used."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "wsi-sam"])
    from app.main_window import MainWindow

    window = MainWindow(start_engine=False)
    try:
        window.show()
        app.processEvents()
        picture = window.grab()
        if picture.isNull() or picture.width() == 0:
            raise SelfTestError("main window: painting it gave an empty picture")
    finally:
        window.setWindowModified(False)
        window.hide()
        window.deleteLater()
        app.processEvents()
    return str(QApplication.platformName())


def _encoder_label(model: Any) -> str:
    """The image encoder's backend and precision, e.g. "OpenVINO CPU bf16"."""
    sam = getattr(model, "sam", model)
    return str(getattr(sam, "backend_label", "unknown"))


def run_self_test(
    slide_path: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    window: bool = True,
) -> int:
    """Run the self-test; print one summary line and return 0, or the reason and return 1.

    Arguments:
      slide_path: slide to segment (default: the bundled sample slide, with :data:`SAMPLE_BOX`).
      device: torch device for the model ("auto": CUDA, then MPS, then CPU).
      window: also build the main window offscreen.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        summary = _run(slide_path, device=device, window=window)
    except SelfTestError as exc:
        print(f"wsi-sam self-test FAILED: {exc}", file=sys.stderr)
        if os.environ.get("WSI_SAM_DEBUG"):
            traceback.print_exc()
        return 1
    print(summary, flush=True)
    return 0


def _run(slide_path: str | os.PathLike[str] | None, *, device: str, window: bool) -> str:
    started = time.perf_counter()
    import engine
    import qupath_bridge
    from app import sample_slide_path

    path = Path(slide_path) if slide_path is not None else sample_slide_path()
    if not path.is_file():
        raise SelfTestError(f"sample slide: {path} does not exist (incomplete installation?)")
    slide = _step("open slide", lambda: engine.open_slide(path))
    with slide:
        model = _step("load model", lambda: engine.load_wsi_sam(device=device))
        loaded = time.perf_counter()
        predictor = engine.WsiSamPredictor(model)
        annotations: list[Any] = []
        times: dict[str, float] = {}
        for mode in MODES:
            t0 = time.perf_counter()
            segment = functools.partial(predictor.segment, slide, box=SAMPLE_BOX, mode=mode)
            result = _step(f"segment ({mode})", segment)
            times[mode] = time.perf_counter() - t0
            if result.geometry is None:
                raise SelfTestError(f"segment ({mode}): the mask is empty")
            annotations.append(
                qupath_bridge.Annotation(
                    geometry=result.geometry,
                    name=f"self-test {mode}",
                    measurements={"WSI-SAM score": float(result.score)},
                    metadata={MODE_KEY: mode},
                )
            )
        slide_size = (int(slide.dimensions[0]), int(slide.dimensions[1]))

    with tempfile.TemporaryDirectory(prefix="wsi-sam-selftest-") as tmp:
        out = Path(tmp) / "self-test.geojson"
        _step("write GeoJSON", lambda: qupath_bridge.write_geojson(out, annotations))
        back = _step("read GeoJSON", lambda: qupath_bridge.read_geojson(out))
    problems = check_annotations(back, slide_size, SAMPLE_BOX)
    if problems:
        raise SelfTestError("GeoJSON check: " + "; ".join(problems))

    window_text = "window skipped"
    if window:
        platform = _step("main window", _check_window)
        window_text = f"window ok ({platform})"

    import torch

    areas = {a.metadata[MODE_KEY]: a.geometry.area for a in back}
    model_device = next(model.parameters()).device
    frozen = "frozen" if getattr(sys, "frozen", False) else "python"
    parts = [f"{m} {times[m]:.1f} s {areas[m]:.0f} px²" for m in MODES]
    return (
        f"wsi-sam self-test ok: {', '.join(parts)}; model load {loaded - started:.1f} s; "
        f"GeoJSON {len(back)} annotations ok; {window_text}; encoder {_encoder_label(model)}; "
        f"device {model_device}; "
        f"torch {torch.__version__}; {frozen}; total {time.perf_counter() - started:.1f} s"
    )
