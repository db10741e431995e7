"""Speed of the slide side of a prompt: reading a field, and mask -> polygon.

Prints figures; asserts nothing. Run: ``.venv/bin/python benchmarks/bench_slides.py [SLIDE]``
(default: the bundled sample slide).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from app import sample_slide_path
from engine.geometry import geometry_to_mask, mask_to_geometry
from engine.patches import choose_field, read_field
from engine.slides import open_slide


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def blob_mask(size: int = 1024, seed: int = 0) -> np.ndarray:
    """Several large blobs with holes plus smaller specks, like a busy WSI-SAM mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, r in [(200, 200, 150), (600, 300, 200), (300, 750, 220), (800, 800, 150)]:
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    for cx, cy, r in [(600, 300, 60), (300, 750, 50), (230, 680, 20), (820, 780, 40)]:
        mask &= ~((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((size, size)), 6)
    return mask | (noise > np.quantile(noise, 0.97))


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(sample_slide_path())
    mask = blob_mask()
    exact = mask_to_geometry(mask, simplify_tolerance=0)
    simplified = mask_to_geometry(mask, simplify_tolerance=1.0)
    assert exact is not None and simplified is not None
    pieces = len(getattr(exact, "geoms", [exact]))
    print(f"mask_to_geometry 1024x1024, {pieces} pieces, {int(mask.sum())} px:")
    exact_s = best_of(lambda: mask_to_geometry(mask, simplify_tolerance=0))
    print(f"  tolerance 0: {exact_s * 1e3:.1f} ms")
    print(f"  tolerance 1: {best_of(lambda: mask_to_geometry(mask)) * 1e3:.1f} ms")
    print(
        f"  geometry_to_mask: {best_of(lambda: geometry_to_mask(exact, mask.shape)) * 1e3:.1f} ms"
    )

    with open_slide(path) as slide:
        print(f"{slide!r}")
        w, h = slide.dimensions
        centre_box = (w / 2 - 200, h / 2 - 200, w / 2 + 200, h / 2 + 200)
        field = choose_field(slide, centre_box)
        start = time.perf_counter()
        read_field(slide, field)
        first = time.perf_counter() - start
        again = best_of(lambda: read_field(slide, field))
        print(
            f"read_field (HR {field.hr_downsample:g}, LR {field.lr_downsample:g} px/px): "
            f"first {first * 1e3:.0f} ms, again {again * 1e3:.0f} ms"
        )
        for downsample in (4.0, 16.0):
            slide._cache.clear()
            start = time.perf_counter()
            slide.read_scaled((0, 0), downsample, (512, 512))
            cold = time.perf_counter() - start
            warm = best_of(lambda d=downsample: slide.read_scaled((0, 0), d, (512, 512)))
            print(
                f"read_scaled 512x512 at {downsample:g}: "
                f"cold {cold * 1e3:.0f} ms, cached {warm * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
