"""Time one prompt on a real slide: a new field (encoder + decoders) and a re-prompt in a cached
field (decoders only), in both modes, on the CPU unless --device says otherwise.

    .venv/bin/python benchmarks/bench_segment.py [--slide PATH] [--runs 5] [--device cpu]

Prints median and min seconds per case and the ratio new-field / cached for each mode.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import engine
from app import sample_slide_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slide", default=str(sample_slide_path()))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heads", default=None)
    args = parser.parse_args()

    model = engine.load_wsi_sam(heads=args.heads, device=args.device)
    print(
        f"torch {torch.__version__}, device {model.device}, threads {torch.get_num_threads()}, "
        f"slide {args.slide}"
    )
    with engine.open_slide(args.slide) as slide:
        width, height = slide.dimensions
        # prompts spread over the slide so that each "new field" run really is a new field
        centres = [
            (width * (0.25 + 0.5 * i / max(args.runs - 1, 1)), height * (0.3 + 0.4 * (i % 2)))
            for i in range(args.runs + 1)
        ]
        rows = []
        for mode in ("sam", "wsi-sam"):
            predictor = engine.WsiSamPredictor(model)
            new_field, cached = [], []
            for i, (cx, cy) in enumerate(centres):
                box = (cx - 100, cy - 100, cx + 100, cy + 100)
                predictor.clear_cache()
                t0 = time.perf_counter()
                first = predictor.segment(slide, box=box, mode=mode)
                t1 = time.perf_counter()
                again = predictor.segment(
                    slide, box=(cx - 80, cy - 90, cx + 90, cy + 80), mode=mode
                )
                t2 = time.perf_counter()
                assert first.encoded and not again.encoded
                if i == 0:
                    continue  # warm-up
                new_field.append(t1 - t0)
                cached.append(t2 - t1)
            rows.append((mode, new_field, cached))
    print(
        f"{'mode':8} {'new field med/min (s)':>24} "
        f"{'cached re-prompt med/min (s)':>30} {'ratio':>7}"
    )
    for mode, new_field, cached in rows:
        med_new, med_cached = statistics.median(new_field), statistics.median(cached)
        print(
            f"{mode:8} {med_new:12.3f} / {min(new_field):7.3f} "
            f"{med_cached:17.3f} / {min(cached):7.3f} {med_new / med_cached:7.1f}x"
        )


if __name__ == "__main__":
    main()
