"""Time one prompt on a real slide: a new field and a re-prompt in a cached field, for each
encoder backend and both modes, against one reference MobileSAM encode measured in the same run.

    .venv-bench/bin/python benchmarks/bench_segment.py [--slide PATH] [--runs 7] [--device cpu]
        [--backends torch,openvino:f32,openvino:bf16]

- *new field*: ``WsiSamPredictor.segment`` on an empty cache: read the patches, encode them (one
  in SAM mode, two in WSI-SAM mode), decode, polygon.
- *re-prompt*: a slightly different box in the same field: decoders and polygon only.
- *reference encode*: one forward pass of the original MobileSAM image encoder (PyPI
  ``mobilesam-mirror``, in ``.venv-bench``; see benchmarks/README.md) on a 1024x1024 input,
  timed between the cases so that machine load affects both alike. Where it is not installed
  (the project's ``.venv``), our own TinyViT in torch f32 stands in (about the same speed,
  ../shared/DESIGN.md); the first line says which was used (``--reference`` picks one).
- *add point*: a box, then one, two and three positive points added inside it (each a new
  prompt on the cached field): the re-prompt of refining a mask point by point.

Prints median and min seconds per case and the ratio of each median to the reference's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import engine
from app import sample_slide_path


def _reference_encoder(
    device: torch.device, which: str = "auto"
) -> tuple[Callable[[], object] | None, str]:
    """The reference encode and its name: the original MobileSAM when installed (or asked for),
    else our TinyViT in torch f32."""
    x = torch.randn(1, 3, 1024, 1024, device=device)
    model: torch.nn.Module
    if which in ("auto", "mobilesam"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from mobile_sam import sam_model_registry
        except ImportError:
            if which == "mobilesam":
                return None, "MobileSAM not installed"
        else:
            original = sam_model_registry["vit_t"](checkpoint=str(engine.default_checkpoint_path()))
            model = original.to(device).eval().image_encoder
            return _timed(model, x, device), "original MobileSAM (mobilesam-mirror), torch f32"
    if which == "none":
        return None, "none"
    sam = engine.load_sam(device=device, backend="torch", precision="f32")
    return _timed(sam.image_encoder, x, device), "our TinyViT in torch f32"


def _timed(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], object]:

    def encode() -> object:
        with torch.inference_mode():
            out = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return encode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", default=str(sample_slide_path()))
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heads", default=None)
    parser.add_argument(
        "--reference",
        default="auto",
        choices=("auto", "mobilesam", "ours", "none"),
        help="the reference encoder: the original MobileSAM when installed, else ours",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated backend[:precision] (default: torch and both OpenVINO precisions "
        "on a CPU; torch f32, bf16 and fp16 on a GPU)",
    )
    args = parser.parse_args()

    device = engine.select_device(args.device)
    if args.backends:
        specs = [tuple([*s.split(":"), "auto"][:2]) for s in args.backends.split(",")]
    elif device.type == "cuda":
        specs = [("torch", "f32"), ("torch", "bf16"), ("torch", "fp16")]
    else:
        specs = [("torch", "f32"), ("openvino", "f32"), ("openvino", "bf16")]
    reference, reference_name = _reference_encoder(device, args.reference)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"slide {args.slide}, reference: {reference_name}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ref_times: list[float] = []

    def time_reference() -> None:
        if reference is not None:
            t0 = time.perf_counter()
            reference()
            ref_times.append(time.perf_counter() - t0)

    if reference is not None:
        reference()  # warm-up
    rows = []
    profiles: list[tuple[str, str, list[dict[str, float]], list[dict[str, float]]]] = []
    with engine.open_slide(args.slide) as slide:
        width, height = slide.dimensions
        # prompts spread over the slide so that each "new field" run really is a new field
        centres = [
            (width * (0.25 + 0.5 * i / max(args.runs, 1)), height * (0.3 + 0.4 * (i % 2)))
            for i in range(args.runs + 1)
        ]
        for backend, precision in specs:
            try:
                model = engine.load_wsi_sam(
                    heads=args.heads, device=device, backend=backend, precision=precision
                )
            except RuntimeError as exc:
                print(f"{backend}:{precision}: skipped ({exc})")
                continue
            label = model.sam.backend_label
            for mode in ("sam", "wsi-sam"):
                predictor = engine.WsiSamPredictor(model)
                new_field, cached, points = [], [], []
                stages_new: list[dict[str, float]] = []
                stages_again: list[dict[str, float]] = []
                for i, (cx, cy) in enumerate(centres):
                    box = (cx - 100, cy - 100, cx + 100, cy + 100)
                    predictor.clear_cache()
                    time_reference()
                    _sync(device)
                    t0 = time.perf_counter()
                    first = predictor.segment(slide, box=box, mode=mode)
                    _sync(device)
                    t1 = time.perf_counter()
                    again = [
                        predictor.segment(
                            slide, box=(cx - 80 - j, cy - 90, cx + 90, cy + 80 + j), mode=mode
                        )
                        for j in range(3)
                    ]
                    _sync(device)
                    t2 = time.perf_counter()
                    clicks = [(cx, cy), (cx + 20, cy + 10), (cx - 15, cy + 5)]
                    added = []
                    for k in range(1, len(clicks) + 1):
                        t3 = time.perf_counter()
                        added.append(
                            predictor.segment(slide, box=box, points=clicks[:k], mode=mode)
                        )
                        _sync(device)
                        points.append(time.perf_counter() - t3)
                    assert first.encoded and not any(a.encoded for a in again + added)
                    if i == 0:
                        points.clear()
                        continue  # warm-up
                    new_field.append(t1 - t0)
                    cached.append((t2 - t1) / len(again))
                    stages_new.append(first.timings)
                    stages_again.extend(a.timings for a in again)
                rows.append((label, mode, new_field, cached, points))
                profiles.append((label, mode, stages_new, stages_again))
    ref_median = statistics.median(ref_times) if ref_times else None
    if ref_median is not None:
        print(
            f"reference MobileSAM encode: median {ref_median:.3f} s, min {min(ref_times):.3f} s "
            f"({len(ref_times)} runs, interleaved)"
        )
    print(
        f"{'encoder':22} {'mode':8} {'new field med/min (s)':>22} {'x ref':>6} "
        f"{'re-prompt med/min (ms)':>24} {'add point med/min (ms)':>24}"
    )
    for label, mode, new_field, cached, points in rows:
        med_new, med_cached = statistics.median(new_field), statistics.median(cached)
        ratio = f"{med_new / ref_median:6.2f}" if ref_median else "     -"
        print(
            f"{label:22} {mode:8} {med_new:12.3f} / {min(new_field):7.3f} {ratio} "
            f"{med_cached * 1e3:14.1f} / {min(cached) * 1e3:7.1f} "
            f"{statistics.median(points) * 1e3:14.1f} / {min(points) * 1e3:7.1f}"
        )
    # the profile: where a prompt's time goes (the predictor's own stage timings, medians, ms)
    print("\nprofile (median ms per stage: read, encode, decode, polygon)")
    for label, mode, stages_new, stages_again in profiles:
        for case, stages in (("new field", stages_new), ("re-prompt", stages_again)):
            names = ("read", "encode", "decode", "polygon")
            parts = [
                f"{name} {statistics.median(t.get(name, 0.0) for t in stages) * 1e3:7.1f}"
                for name in names
            ]
            print(f"{label:22} {mode:8} {case:10} " + ", ".join(parts))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
