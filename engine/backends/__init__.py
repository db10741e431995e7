"""Inference backends for SAM's frozen image encoder, and the choice between them.

The TinyViT encoder is where nearly all of a new field's time goes (77.5 GFLOP per 1024x1024
patch), and it never trains, so it may run on whatever runtime is fastest:

- ``torch``: our own module (the reference), on the CPU in float32, on a CUDA GPU in half
  precision (bf16 where the GPU supports it, else fp16) unless ``precision="f32"``.
- ``openvino``: the same module converted with ``openvino.convert_model`` (never someone else's
  export), cached on disk, run by OpenVINO's CPU plugin in f32 or bf16. 3-6x faster than torch
  eager on an ordinary CPU.

``backend="auto"`` means: a CUDA GPU -> torch on it; otherwise OpenVINO on the CPU when it can be
imported, torch on the CPU when not. ``precision="auto"`` means bf16 where the hardware computes
it natively (OpenVINO reports BF16: AVX512-BF16 or AMX; a CUDA GPU with bf16), fp16 on other CUDA
GPUs, and f32 everywhere else (MPS keeps f32).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

if TYPE_CHECKING:
    from engine.sam.tiny_vit import TinyViT

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "openvino"]
Precision = Literal["auto", "f32", "bf16", "fp16"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16", "fp16")

_TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class BackendError(RuntimeError):
    """A backend or precision that cannot be used on this machine (said why, in one line)."""


class ImageEncoder(Protocol):
    """What the predictors need from an encoder backend."""

    #: "torch" or "openvino"
    name: str
    #: "f32", "bf16" or "fp16": the precision the encoder computes in
    precision: str

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode preprocessed (normalised, padded) images.

        Args:
            images: (B, 3, 1024, 1024) float32 on the model's device.
        Returns:
            the image embedding (B, 256, 64, 64) and the early feature (B, 160, 64, 64), float32
            on the model's device.
        """
        ...

    def encode_stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode preprocessed images into every map an instance decoder may use.

        Args:
            images: (B, 3, 1024, 1024) float32 on the model's device.
        Returns:
            ``TinyViT.forward_stages``'s maps: "embedding" (B, 256, 64, 64), "early"
            (B, 160, 64, 64), "stage1" (B, 128, 128, 128), "stage0" (B, 64, 256, 256), float32.
        """
        ...

    def describe(self) -> str:
        """A short label for status bars and logs, e.g. "OpenVINO CPU bf16"."""
        ...


@dataclass(frozen=True)
class BackendChoice:
    """A resolved choice: a concrete backend, precision and torch device for the decoders."""

    backend: Literal["torch", "openvino"]
    precision: Literal["f32", "bf16", "fp16"]
    device: torch.device

    @property
    def label(self) -> str:
        where = "CPU" if self.backend == "openvino" else self.device.type.upper()
        name = "OpenVINO" if self.backend == "openvino" else "torch"
        return f"{name} {where} {self.precision}"


def openvino_available() -> bool:
    """Whether OpenVINO can be imported here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (e.g. FP32, BF16, FP16, INT8)."""
    import openvino as ov

    from engine.backends.openvino_backend import openvino_guard

    with openvino_guard():  # a new Core reads its plugins' XML (see openvino_guard)
        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return tuple(str(c) for c in capabilities)


def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), as OpenVINO reports it."""
    if not openvino_available():
        return False
    try:
        return "BF16" in openvino_cpu_capabilities()
    except Exception:  # a broken plugin is reported when the backend is built, not here
        return False


def resolve_backend(
    backend: str = "auto", precision: str = "auto", device: str | torch.device = "auto"
) -> BackendChoice:
    """Turn the user's backend / precision / device into one concrete choice, or say why not.

    Raises BackendError for a backend or precision this machine cannot run (e.g. OpenVINO not
    installed, fp16 on a CPU without it, OpenVINO asked for together with a GPU device).
    """
    from engine.device import select_device

    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        torch_device = select_device(device)
    except RuntimeError as exc:
        raise BackendError(str(exc)) from exc

    chosen: Literal["torch", "openvino"]
    if backend == "auto":
        chosen = "openvino" if torch_device.type == "cpu" and openvino_available() else "torch"
    else:
        chosen = "openvino" if backend == "openvino" else "torch"

    if chosen == "openvino":
        if torch_device.type != "cpu":
            raise BackendError(
                f"the OpenVINO backend runs on the CPU; device {str(torch_device)!r} was asked for "
                "(use --backend torch on a GPU)"
            )
        if not openvino_available():
            raise BackendError(
                "the OpenVINO backend needs the Python package openvino "
                "(pip install openvino), or use --backend torch"
            )
        caps = openvino_cpu_capabilities()
        if precision == "auto":
            return BackendChoice("openvino", "bf16" if "BF16" in caps else "f32", torch_device)
        if precision == "bf16" and "BF16" not in caps:
            raise BackendError(
                "this CPU has no native bf16 (AVX512-BF16 or AMX): use --precision f32"
            )
        if precision == "fp16" and "FP16" not in caps:
            raise BackendError("this CPU has no native fp16 for OpenVINO: use --precision f32")
        return BackendChoice("openvino", _concrete(precision), torch_device)

    if torch_device.type == "cuda":
        if precision == "auto":
            index = torch_device.index if torch_device.index is not None else 0
            with torch.cuda.device(index):
                bf16 = torch.cuda.is_bf16_supported()
            return BackendChoice("torch", "bf16" if bf16 else "fp16", torch_device)
        return BackendChoice("torch", _concrete(precision), torch_device)
    # CPU and MPS: torch computes in float32 (bf16 autocast on a CPU is allowed when asked for).
    if precision == "auto":
        return BackendChoice("torch", "f32", torch_device)
    if precision != "f32" and torch_device.type == "mps":
        raise BackendError("on MPS the torch backend runs in f32 only: use --precision f32")
    if precision == "fp16":
        raise BackendError(
            "torch has no fast fp16 on a CPU: use --precision f32 or bf16, or the OpenVINO backend"
        )
    return BackendChoice("torch", _concrete(precision), torch_device)


def _concrete(precision: str) -> Literal["f32", "bf16", "fp16"]:
    if precision == "bf16":
        return "bf16"
    if precision == "fp16":
        return "fp16"
    return "f32"


def torch_dtype(precision: str) -> torch.dtype:
    """torch dtype of a concrete precision ("f32", "bf16", "fp16")."""
    return _TORCH_DTYPES[precision]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed torch code in ``precision`` on ``device`` (no-op for f32).

    One device path for the decoders: half precision is autocast on whatever device the model
    is on, never a ``.cuda()`` or ``.half()`` scattered through the code.
    """
    if precision == "f32" or device.type not in ("cuda", "cpu"):
        yield
        return
    with torch.autocast(device.type, dtype=torch_dtype(precision)):
        yield


def build_image_encoder(
    encoder: TinyViT, choice: BackendChoice, checkpoint_sha256: str
) -> ImageEncoder:
    """The encoder backend for ``choice`` over our own (loaded, eval-mode) TinyViT module."""
    if choice.backend == "openvino":
        from engine.backends.openvino_backend import OpenVinoImageEncoder

        return OpenVinoImageEncoder(encoder, checkpoint_sha256, choice.precision)
    from engine.backends.torch_backend import TorchImageEncoder

    return TorchImageEncoder(encoder, choice.precision)


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendChoice",
    "BackendError",
    "ImageEncoder",
    "Precision",
    "autocast",
    "build_image_encoder",
    "cpu_supports_bf16",
    "openvino_available",
    "resolve_backend",
    "torch_dtype",
]
