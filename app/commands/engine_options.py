"""The engine options every command shares: where and how the model runs."""

from __future__ import annotations

import argparse
from typing import Any

BACKEND_CHOICES = ("auto", "torch", "openvino")
PRECISION_CHOICES = ("auto", "f32", "bf16", "fp16")


def add_engine_arguments(parser: argparse.ArgumentParser, *, device: bool = False) -> None:
    """``--backend`` and ``--precision`` (and ``--device`` when the command has none yet).

    The choices repeat ``engine.backends.BACKENDS`` / ``PRECISIONS`` so that ``--help`` does not
    import torch.
    """
    group = parser.add_argument_group("engine")
    if device:
        group.add_argument(
            "--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, ..."
        )
    group.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="image encoder runtime: auto (torch on a CUDA GPU, else OpenVINO on the CPU), "
        "torch or openvino",
    )
    group.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="auto (bf16 where the hardware has it, fp16 on other GPUs, else f32), f32, bf16 "
        "or fp16; f32 is the exact fallback",
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``engine.load_wsi_sam`` / ``load_sam`` from the parsed options."""
    return {"device": args.device, "backend": args.backend, "precision": args.precision}
