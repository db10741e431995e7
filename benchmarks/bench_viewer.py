"""Viewer benchmark: pan across a large synthetic pyramid, cold and warm tile cache.

Writes a tiled JPEG pyramid (OpenSlide "generic-tiff": reduced levels as subfiletype=1 pages,
photometric RGB) of ``--size`` x ``--size`` pixels, opens it with ``engine.open_slide``, shows a
SlideView of ``--view`` pixels offscreen and pans across the slide, repainting synchronously each
frame, twice per downsample: a realistic pan (``--pan-speed``, default 1,200 screen px/s, paced at
``--hz`` 60 frames a second, events processed between frames as a real event loop would; over a
part of the slide not read before, so from a cold cache too) and the fast pan (``--step`` screen
pixels per frame, unpaced: as fast as the loop runs). Prints:

- frames per second of the whole loop (pan + event processing + synchronous repaint) and the
  p50/p95 repaint time,
- how complete the frames were (share of visible tiles already at full resolution when painted;
  the rest is drawn from coarser tiles),
- tile latency p50/p95 (request to arrival in the UI thread),

first from a cold tile cache (fresh view, fresh slide handle), then over the same path again with
a warm cache. Also a wheel-like zoom sweep. Run: ``.venv/bin/python benchmarks/bench_viewer.py``.

Tiles are JPEG-encoded once with Pillow (a pool of textured variants) and written pre-encoded,
because tifffile needs imagecodecs (not installed) to encode JPEG itself; writing a 100k x 100k
pyramid this way takes seconds, not hours. The OS page cache is warm for the freshly written
file, so "cold" means cold in the viewer and OpenSlide, not on disk.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np


def jpeg_tile_pool(tile: int, variants: int, quality: int = 80) -> list[bytes]:
    """JPEG-encoded (tile x tile) RGB tiles with an H&E-like pink / purple texture."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
    pool = []
    for _ in range(variants):
        field = np.zeros((tile, tile), np.float32)
        for _ in range(6):  # a few blobs ("nuclei clusters") and waves ("stroma")
            fx, fy = rng.uniform(0.005, 0.05, 2)
            phase = rng.uniform(0, 2 * math.pi)
            field += np.sin(xx * fx + yy * fy + phase)
        field += rng.normal(0, 0.6, field.shape).astype(np.float32)
        t = (field - field.min()) / (np.ptp(field) + 1e-6)
        pink = np.array([235, 170, 200], np.float32)
        purple = np.array([110, 60, 150], np.float32)
        rgb = pink * (1 - t[..., None]) + purple * t[..., None]
        buffer = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        pool.append(buffer.getvalue())
    return pool


def write_jpeg_pyramid(path: Path, size: int, tile: int = 512, variants: int = 48) -> dict:
    """Write a size x size pyramid (downsamples 1, 4, 16, ... down to < 2 tiles) at ``path``."""
    import tifffile

    # tifffile looks up a JPEG encoder even when handed pre-encoded tiles; register one that
    # refuses to run, so any attempt to re-encode fails loudly instead of silently.
    def _refuse(*_args: object, **_kwargs: object) -> bytes:
        raise RuntimeError("tiles must be pre-encoded JPEG")

    tifffile.TIFF.COMPRESSORS._codecs[7] = _refuse

    started = time.perf_counter()
    pool = jpeg_tile_pool(tile, variants)
    downsamples = [1]
    while size // downsamples[-1] > 2 * tile:
        downsamples.append(downsamples[-1] * 4)

    def tiles(w: int, h: int, level: int) -> Iterator[bytes]:
        columns, rows = math.ceil(w / tile), math.ceil(h / tile)
        for row in range(rows):
            for col in range(columns):
                yield pool[(col * 7 + row * 13 + level) % len(pool)]

    count = 0
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level, ds in enumerate(downsamples):
            w = h = size // ds
            count += math.ceil(w / tile) * math.ceil(h / tile)
            writer.write(
                tiles(w, h, level),
                shape=(h, w, 3),
                dtype="uint8",
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                subfiletype=0 if level == 0 else 1,
                resolution=(1e4 / (0.25 * ds), 1e4 / (0.25 * ds)),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return {
        "seconds": time.perf_counter() - started,
        "bytes": path.stat().st_size,
        "tiles": count,
        "downsamples": downsamples,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def pan_run(app, view, path_points: list[tuple[int, int]], hz: float | None = None) -> dict:
    """Pan by each (dx, dy) step, repainting synchronously; returns the frame figures.

    ``hz``: pace the frames at this rate (events are processed while waiting for the next
    frame, as a real event loop would); None pans as fast as the loop runs.
    """
    view.clear_tile_latencies()
    paint_times: list[float] = []
    completeness: list[float] = []
    started = time.perf_counter()
    for frame, (dx, dy) in enumerate(path_points):
        if hz is not None:
            due = started + frame / hz
            while time.perf_counter() < due:
                app.processEvents()
                time.sleep(0.001)
        view.pan_by(dx, dy)
        app.processEvents()  # tile arrivals, request updates
        visible = view.visible_tiles()
        missing = view.missing_visible_tiles()
        completeness.append(1.0 - len(missing) / max(1, len(visible)))
        t0 = time.perf_counter()
        view.viewport().repaint()
        paint_times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    settle_start = time.perf_counter()
    while view.missing_visible_tiles() or view.pending_tiles():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - settle_start > 60:
            break
    settle = time.perf_counter() - settle_start
    latencies = view.tile_latencies()
    return {
        "frames": len(path_points),
        "fps": len(path_points) / elapsed,
        "paint_p50_ms": 1e3 * percentile(paint_times, 50),
        "paint_p95_ms": 1e3 * percentile(paint_times, 95),
        "complete_mean": statistics.fmean(completeness),
        "complete_frames": sum(c == 1.0 for c in completeness) / len(completeness),
        "tiles": len(latencies),
        "latency_p50_ms": 1e3 * percentile(latencies, 50),
        "latency_p95_ms": 1e3 * percentile(latencies, 95),
        "settle_s": settle,
    }


def _paced_steps(per_frame: float, frames: int) -> list[tuple[int, int]]:
    """Whole-pixel steps that add up to ``per_frame`` (x) and a quarter of it (y) per frame."""
    steps = []
    for frame in range(frames):
        x = round(per_frame * (frame + 1)) - round(per_frame * frame)
        y = round(per_frame / 4 * (frame + 1)) - round(per_frame / 4 * frame)
        steps.append((x, y))
    return steps


def wait_loaded(app, view) -> None:
    while view.missing_visible_tiles() or view.pending_tiles():
        app.processEvents()
        time.sleep(0.002)


def report(name: str, figures: dict) -> None:
    print(
        f"{name:<22} {figures['frames']:>5} frames  {figures['fps']:6.1f} fps  "
        f"paint p50 {figures['paint_p50_ms']:5.1f} ms p95 {figures['paint_p95_ms']:5.1f} ms  "
        f"full-res tiles {100 * figures['complete_mean']:5.1f}% "
        f"(complete frames {100 * figures['complete_frames']:5.1f}%)  "
        f"tiles {figures['tiles']:>5}  latency p50 {figures['latency_p50_ms']:6.1f} ms "
        f"p95 {figures['latency_p95_ms']:6.1f} ms  settle {figures['settle_s']:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="slide side in pixels")
    parser.add_argument("--view", default="1600x1000", help="viewport WxH")
    parser.add_argument(
        "--step", type=int, default=40, help="screen px per frame of the fast (unpaced) pan"
    )
    parser.add_argument("--frames", type=int, default=400, help="frames per pan run")
    parser.add_argument(
        "--pan-speed",
        type=float,
        default=1200.0,
        help="screen px per second of the realistic pan, paced at --hz (0: leave it out)",
    )
    parser.add_argument("--hz", type=float, default=60.0, help="frame rate of the realistic pan")
    parser.add_argument("--downsample", type=float, nargs="+", default=[1.0, 2.5])
    parser.add_argument("--tile", type=int, default=256, help="viewer tile size")
    parser.add_argument("--slide", type=Path, help="use this slide instead of writing one")
    parser.add_argument("--keep", action="store_true", help="keep the written pyramid")
    args = parser.parse_args(argv)

    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication

    import engine
    from app.viewer import SlideView

    app = QApplication.instance() or QApplication(sys.argv[:1])
    view_w, view_h = (int(v) for v in args.view.lower().split("x"))

    workdir = None
    if args.slide is None:
        workdir = tempfile.TemporaryDirectory(prefix="bench_viewer_")
        path = Path(workdir.name) / f"pyramid_{args.size}.tif"
        info = write_jpeg_pyramid(path, args.size)
        print(
            f"wrote {args.size} x {args.size} JPEG pyramid, downsamples {info['downsamples']}, "
            f"{info['tiles']} tiles of 512 px, {info['bytes'] / 2**30:.2f} GiB "
            f"in {info['seconds']:.1f} s"
        )
    else:
        path = args.slide
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, view {view_w}x{view_h}, "
        f"viewer tiles {args.tile} px, fast pan {args.step} px/frame unpaced, realistic pan "
        f"{args.pan_speed:g} px/s at {args.hz:g} Hz, load average {os.getloadavg()[0]:.1f}"
    )

    try:
        for ds in args.downsample:
            with engine.open_slide(path) as slide:
                view = SlideView(tile_size=args.tile)
                view.resize(view_w, view_h)
                view.show()
                app.processEvents()
                view.set_slide(slide)
                width, height = slide.dimensions
                start_x = width * 0.2
                view.set_downsample(ds, None)
                view.centre_on_level0(start_x, height * 0.5)
                # Wait for the overview and first screen: the pan starts from a loaded view.
                while view.missing_visible_tiles() or view.pending_tiles():
                    app.processEvents()
                    time.sleep(0.002)
                level = view.display_levels()[view.current_level()]
                print(
                    f"\ndownsample {ds:g} (drawn from level downsample {level.downsample:g}, "
                    f"{len(view.visible_tiles())} tiles on screen); slide {slide!r}"
                )
                forward = [(args.step, args.step // 4)] * args.frames
                if args.pan_speed > 0:
                    # the realistic pan first, over a fresh part of the slide: cold as well
                    per_frame = args.pan_speed / args.hz
                    steps = _paced_steps(per_frame, args.frames)
                    view.centre_on_level0(width * 0.2, height * 0.75)
                    wait_loaded(app, view)
                    view.tile_cache().clear()
                    paced = pan_run(app, view, steps, hz=args.hz)
                    report(f"pan {args.pan_speed:g} px/s, cold", paced)
                    view.centre_on_level0(start_x, height * 0.5)
                    wait_loaded(app, view)
                view.tile_cache().clear()
                cold = pan_run(app, view, forward)
                report("pan, cold cache", cold)
                # Warm: load the whole path first (stopping at each screen), then pan it again.
                view.centre_on_level0(start_x, height * 0.5)
                origin = view.visible_rect_level0().center()
                total_x = sum(dx for dx, _ in forward) * ds
                total_y = sum(dy for _, dy in forward) * ds
                stops = max(1, math.ceil(abs(total_x) / (view_w * ds / 2)))
                for stop in range(stops + 1):
                    view.centre_on_level0(
                        origin.x() + total_x * stop / stops, origin.y() + total_y * stop / stops
                    )
                    while view.missing_visible_tiles() or view.pending_tiles():
                        app.processEvents()
                        time.sleep(0.002)
                view.centre_on_level0(origin.x(), origin.y())
                app.processEvents()
                warm = pan_run(app, view, forward)
                report("pan, warm cache", warm)
                cache = view.tile_cache()
                print(
                    f"{'':<22} cache {cache.bytes_used / 2**20:.0f} MiB "
                    f"of {cache.max_bytes / 2**20:.0f} MiB, {len(cache)} tiles"
                )
                view.set_slide(None)
                view.shutdown()
                view.deleteLater()

        with engine.open_slide(path) as slide:
            view = SlideView(tile_size=args.tile)
            view.resize(view_w, view_h)
            view.show()
            view.set_slide(slide)
            width, height = slide.dimensions
            view.set_downsample(1.0, QPointF(width * 0.6, height * 0.6))
            while view.missing_visible_tiles() or view.pending_tiles():
                app.processEvents()
                time.sleep(0.002)
            view.clear_tile_latencies()
            # A wheel zoom paced like a user's: one 10 % step per 60 Hz frame, out and back in.
            frames, paint, completeness = 0, [], []
            frame_period = 1 / 60
            started = time.perf_counter()
            for factor in [1 / 1.1] * 60 + [1.1] * 60:
                frame_start = time.perf_counter()
                view.zoom_by(factor)
                app.processEvents()
                visible = view.visible_tiles()
                completeness.append(1 - len(view.missing_visible_tiles()) / max(1, len(visible)))
                t0 = time.perf_counter()
                view.viewport().repaint()
                paint.append(time.perf_counter() - t0)
                frames += 1
                while time.perf_counter() - frame_start < frame_period:
                    app.processEvents()
                    time.sleep(0.001)
            elapsed = time.perf_counter() - started
            latencies = view.tile_latencies()
            print(
                f"\nzoom sweep at 60 Hz, ds 1 -> {1.1**60:.0f} -> 1, cold: {frames} frames "
                f"{frames / elapsed:.1f} fps, paint p50 {1e3 * percentile(paint, 50):.1f} ms "
                f"p95 {1e3 * percentile(paint, 95):.1f} ms, full-res tiles "
                f"{100 * statistics.fmean(completeness):.1f}%, {len(latencies)} tiles, "
                f"latency p50 {1e3 * percentile(latencies, 50):.1f} ms "
                f"p95 {1e3 * percentile(latencies, 95):.1f} ms"
            )
            view.set_slide(None)
            view.shutdown()
    finally:
        if workdir is not None:
            if args.keep:
                print(f"kept {path}")
            else:
                workdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
