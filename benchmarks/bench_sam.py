"""Encoder and decoder latency of our SAM port next to the original MobileSAM, in one process.

Encoders timed, interleaved run by run: the reference MobileSAM, ours in torch eager f32, ours on
OpenVINO in f32 and in bf16 (the CPU backends; bf16 only where the CPU has it natively), or on a
CUDA GPU ours in torch bf16 and fp16. Ratios are to the reference's median / minimum.

Runs in the separate reference environment (the original needs timm and torchvision)::

    benchmarks/setup_reference_env.sh
    .venv-bench/bin/python benchmarks/bench_sam.py [--runs 10] [--device auto]

Both models load the same mobile_sam.pt and see the same 1024x1024 real H&E image. Runs of the
two implementations are interleaved so that machine load affects both alike. "encoder" is one
forward pass of the image encoder on the preprocessed image; "decoder" is one prompt through
``SamPredictor.predict`` (box transform, prompt encoder, mask decoder, upscaling to the image),
i.e. what a user waits for after each click once the image is encoded. The script also prints
how closely the two agree (embedding cosine, mask IoU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "tests" / "data" / "golden" / "mobilesam" / "hgsc_nest_crop.png"
BOX = np.array([684, 452, 908, 727])  # a tumour nest in the default image


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_interleaved(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call for each function, alternating between them run by run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _load_reference(checkpoint: Path, device: torch.device) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm deprecation and registry warnings
            from mobile_sam import sam_model_registry
    except ImportError as exc:
        sys.exit(
            f"the reference implementation is not importable ({exc}); "
            "run benchmarks/setup_reference_env.sh and use .venv-bench/bin/python"
        )
    model = sam_model_registry["vit_t"](checkpoint=str(checkpoint))
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="RGB image (1024 px)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--decoder-runs", type=int, default=30, help="timed decoder runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)

    from engine.backends import cpu_supports_bf16
    from engine.device import select_device
    from engine.predictor import SamPredictor
    from engine.weights import default_checkpoint_path, load_sam

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    checkpoint = default_checkpoint_path()
    ours = load_sam(checkpoint, device=device, backend="torch", precision="f32")
    reference = _load_reference(checkpoint, device)
    # our OpenVINO encoders run on the CPU only
    variants: dict[str, Any] = {}
    if device.type == "cpu":
        variants["openvino f32"] = load_sam(
            checkpoint, device="cpu", backend="openvino", precision="f32"
        )
        if cpu_supports_bf16():
            variants["openvino bf16"] = load_sam(
                checkpoint, device="cpu", backend="openvino", precision="bf16"
            )
    elif device.type == "cuda":
        for precision in ("bf16", "fp16"):
            variants[f"torch {precision}"] = load_sam(
                checkpoint, device=device, backend="torch", precision=precision
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import SamPredictor as ReferencePredictor

    image = np.asarray(Image.open(args.image).convert("RGB"))
    ours_pred = SamPredictor(ours)
    ref_pred = ReferencePredictor(reference)

    # the same preprocessed input for every encoder
    resized = ours_pred.transform.apply_image(image)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float().to(device)
    x = ours.preprocess(x)

    print(
        f"device {device} | torch {torch.__version__} | CPU threads {torch.get_num_threads()} | "
        f"image {args.image.name} {image.shape[1]}x{image.shape[0]}"
    )
    encoders: dict[str, Callable[[], object]] = {
        "reference": lambda: reference.image_encoder(x),
        "ours torch f32": lambda: ours.image_encoder(x),
    }
    for name, model in variants.items():
        encoders[f"ours {name}"] = lambda model=model: model.encode_preprocessed(x)
    with torch.inference_mode():
        enc = _time_interleaved(encoders, args.runs, args.warmup, device)
        emb_ref = reference.image_encoder(x).double().flatten()
        cosines = {}
        for name, model in [("torch f32", ours), *variants.items()]:
            emb = model.encode_preprocessed(x)[0].double().flatten()
            cosines[name] = float(emb @ emb_ref / (emb.norm() * emb_ref.norm()))

    ours_pred.set_image(image)
    ref_pred.set_image(image)
    dec = _time_interleaved(
        {
            "ours torch f32": lambda: ours_pred.predict(box=BOX, multimask_output=False),
            "reference": lambda: ref_pred.predict(box=BOX, multimask_output=False),
        },
        args.decoder_runs,
        args.warmup,
        device,
    )
    mask_ours = ours_pred.predict(box=BOX, multimask_output=False)[0][0]
    mask_ref = ref_pred.predict(box=BOX, multimask_output=False)[0][0]
    mask_iou = float((mask_ours & mask_ref).sum() / max((mask_ours | mask_ref).sum(), 1))

    header = ("", "median", "min", "ratio med", "ratio min", "cosine")
    print(f"{header[0]:28}" + "".join(f"{h:>12}" for h in header[1:]))
    for part, times, runs in (("encoder", enc, args.runs), ("decoder", dec, args.decoder_runs)):
        r_med, r_min = statistics.median(times["reference"]), min(times["reference"])
        for name, values in times.items():
            med, low = statistics.median(values), min(values)
            cosine = cosines.get(name.removeprefix("ours "), 1.0 if name == "reference" else None)
            cells = [
                f"{med * 1e3:.1f} ms",
                f"{low * 1e3:.1f} ms",
                f"{med / r_med:.3f}",
                f"{low / r_min:.3f}",
                "" if cosine is None or part == "decoder" else f"{cosine:.6f}",
            ]
            print(
                f"{part + ' ' + name:28}" + "".join(f"{c:>12}" for c in cells) + f"   ({runs} runs)"
            )
    print(f"agreement (torch f32 vs reference): box mask IoU {mask_iou:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
