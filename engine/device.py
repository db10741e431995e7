"""Choosing the torch device: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"`` picks CUDA when a GPU is usable, then MPS, then the CPU. Any other value is passed
    to :class:`torch.device` and checked, so ``"cuda"`` on a machine without a GPU fails here with
    a clear message instead of deep inside a forward pass.
    """
    if isinstance(device, torch.device):
        chosen = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(chosen)!r} requested but torch sees no CUDA GPU")
    if chosen.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("device 'mps' requested but this torch has no usable MPS backend")
    return chosen
