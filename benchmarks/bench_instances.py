"""Find every object in one 1024x1024 field: the instance decoder against the point grid, each
against a reference encode measured in the same run.

    .venv/bin/python benchmarks/bench_instances.py [--decoder glands] [--image PATH]
        [--image-magnification 20] [--runs 5] [--points-per-side 16] [--mode wsi-sam]

- *decoder*: ``segment_instances`` over one field: read, encode (all of TinyViT's stage maps),
  decoder, watershed, polygons, merge; the parts as ``result.timings`` reports them.
- *grid*: ``segment_everything`` over the same field at the decoder's magnification:
  encode, the whole point grid decoded, filtered, polygons.
- *reference encode*: one forward pass of the original MobileSAM image encoder when
  ``mobile_sam`` is importable (``.venv-bench``, see README.md), else of our own TinyViT in torch
  f32 (about the same speed, DESIGN.md), on a 1024x1024 input, timed between the cases so
  machine load affects all alike.

Prints median seconds per field for each case and part, objects found and objects per second,
and each case's ratio to the reference encode.

``--region-size N`` instead measures one large region: an N x N px pyramid at 40x (0.25 um/px)
is written to a temporary folder from 512-px JPEG tiles of real H&E (the MoNuSeg test images in
``../shared``; a synthetic texture when they are absent), and the decoder segments all of it with
streamed fields: seconds, fields, objects, and the process's resident memory (RSS) after each
field and its peak, against the features one field needs.

The default image is the first GlaS test image in ``../shared`` (the field covers all of it), at
20x; nuclei: ``--decoder nuclei --image
../shared/datasets/MoNuSeg_instances__bruceyang2012/Test_Folder/img/<name>.png
--image-magnification 40``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from engine.everything import EverythingSettings, segment_everything  # noqa: E402
from engine.heads_catalogue import resolve_decoder  # noqa: E402
from engine.instances.checkpoint import read_decoder  # noqa: E402
from engine.instances.segment import segment_instances  # noqa: E402

DEFAULT_IMAGE = (
    ROOT.parent / "shared/datasets/GlaS_png__McGregorWwww_UDTransNet/Test_Folder/img/1.png"
)


def reference_encoder(device: torch.device) -> tuple[str, Callable[[], object]]:
    x = torch.randn(1, 3, 1024, 1024, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mobile_sam import sam_model_registry

        model = sam_model_registry["vit_t"](checkpoint=str(engine.default_checkpoint_path()))
        model = model.to(device).eval()
        encoder = model.image_encoder
        name = "original MobileSAM encoder (torch f32)"
    except ImportError:
        sam = engine.load_sam(device=device, backend="torch", precision="f32")
        encoder = sam.image_encoder
        name = "our TinyViT encoder, torch f32 (mobile_sam not installed)"

    def encode() -> object:
        with torch.inference_mode():
            out = encoder(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return name, encode


MONUSEG_TEST = ROOT.parent / "shared/datasets/MoNuSeg_instances__bruceyang2012/Test_Folder/img"


def real_tile_pool(tile: int = 512) -> list[bytes]:
    """JPEG tiles cut from the MoNuSeg test images (empty when they are not there)."""
    import io

    from PIL import Image

    pool = []
    for path in sorted(MONUSEG_TEST.glob("*.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for y in range(0, rgb.shape[0] - tile + 1, tile // 2):
            for x in range(0, rgb.shape[1] - tile + 1, tile // 2):
                buffer = io.BytesIO()
                Image.fromarray(rgb[y : y + tile, x : x + tile]).save(buffer, "JPEG", quality=85)
                pool.append(buffer.getvalue())
    return pool


def rss_mb() -> float:
    """The process's resident memory now, MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def region_benchmark(args: argparse.Namespace) -> None:
    import resource
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_viewer

    pool = real_tile_pool()
    if pool:
        bench_viewer.jpeg_tile_pool = lambda tile, variants, quality=80: pool  # type: ignore[assignment]
    device = engine.select_device(args.device)
    model = engine.load_wsi_sam(device=device, backend=args.backend, precision=args.precision)
    decoder = read_decoder(
        resolve_decoder(args.decoder), encoder_sha256=model.sam.checkpoint_info.sha256
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "region.tif"
        made = bench_viewer.write_jpeg_pyramid(path, args.region_size)
        print(
            f"{args.region_size} x {args.region_size} px pyramid at 40x from "
            f"{'real H&E tiles' if pool else 'synthetic tiles'}: {made['bytes'] / 1e6:.0f} MB, "
            f"{made['seconds']:.0f} s to write"
        )
        trace: list[float] = []
        with engine.open_slide(path) as slide:
            started = time.perf_counter()
            before = rss_mb()
            result = segment_instances(
                model.sam,
                decoder,
                slide,
                (0, 0, args.region_size, args.region_size),
                progress=lambda done, total: trace.append(rss_mb()),
            )
            seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(result.fields)
    print(
        f"decoder {decoder.name} at {decoder.magnification:g}x: {n} fields, "
        f"{len(result.objects)} objects, {seconds:.0f} s ({seconds / n:.2f} s / field)"
    )
    quarter = [trace[int(i * (len(trace) - 1) / 4)] for i in range(5)] if trace else []
    print(
        f"RSS: {before:.0f} MB before, after fields 0/25/50/75/100 %: "
        + ", ".join(f"{v:.0f}" for v in quarter)
        + f" MB; peak {peak:.0f} MB"
    )
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", default="glands", help="decoder name or file")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--image-magnification", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--mode", default="wsi-sam", choices=("wsi-sam", "sam"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--region-size", type=int, default=0, help="see above (0: off)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (the field benchmark)")
    args = parser.parse_args()
    if args.region_size:
        region_benchmark(args)
        return

    device = engine.select_device(args.device)
    model = engine.load_wsi_sam(device=device, backend=args.backend, precision=args.precision)
    decoder = read_decoder(
        resolve_decoder(args.decoder), encoder_sha256=model.sam.checkpoint_info.sha256
    )
    slide = engine.open_slide(args.image)
    if slide.magnification is None:
        slide.set_scale(magnification=args.image_magnification)
    width, height = slide.dimensions
    # one field at the decoder's magnification, centred on the image
    side = 1024 * (slide.magnification or args.image_magnification) / decoder.magnification
    cx, cy = width / 2, height / 2
    region = (
        max(cx - side / 2, 0),
        max(cy - side / 2, 0),
        min(cx + side / 2, width),
        min(cy + side / 2, height),
    )
    predictor = engine.WsiSamPredictor(
        model, magnification=decoder.magnification, default_magnification=args.image_magnification
    )
    grid = EverythingSettings(points_per_side=args.points_per_side)
    ref_name, reference = reference_encoder(device)
    reference()  # warm-up
    print(
        f"image {args.image.name} ({width} x {height}), decoder {decoder.name} at "
        f"{decoder.magnification:g}x, encoder {model.sam.backend_label}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"reference: {ref_name}")

    times: dict[str, list[float]] = {"reference": [], "decoder": [], "grid": []}
    parts: dict[str, dict[str, list[float]]] = {"decoder": {}, "grid": {}}
    objects = {"decoder": 0, "grid": 0}

    def run_decoder() -> None:
        result = segment_instances(
            model.sam, decoder, slide, region, default_magnification=args.image_magnification
        )
        objects["decoder"] = len(result.objects)
        for key, value in result.timings.items():
            parts["decoder"].setdefault(key, []).append(value)

    def run_grid() -> None:
        predictor.clear_cache()
        result = segment_everything(predictor, slide, region, args.mode, grid)
        objects["grid"] = len(result.objects)
        for key, value in result.timings.items():
            parts["grid"].setdefault(key, []).append(value)

    run_decoder()  # warm-up: the stage graph's conversion and compile
    parts["decoder"].clear()
    for _ in range(args.runs):
        for name, case in (("reference", reference), ("decoder", run_decoder), ("grid", run_grid)):
            t0 = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["reference"])
    print(f"\nreference encode: median {ref:.3f} s (min {min(times['reference']):.3f})")
    print("| case | s / field (median) | min | x reference encode | objects | objects / s |")
    print("|---|---|---|---|---|---|")
    for name in ("decoder", "grid"):
        med = statistics.median(times[name])
        print(
            f"| {name} | {med:.3f} | {min(times[name]):.3f} | {med / ref:.2f} | "
            f"{objects[name]} | {objects[name] / med:.1f} |"
        )
    for name in ("decoder", "grid"):
        text = ", ".join(
            f"{key} {statistics.median(values):.3f}" for key, values in parts[name].items()
        )
        print(f"{name} parts (median s): {text}")
    ratio = statistics.median(times["grid"]) / statistics.median(times["decoder"])
    print(f"\ngrid / decoder time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
