"""The OpenVINO encoder backend: our TinyViT converted once, cached on disk, run on the CPU.

The model is converted from our own torch module with ``openvino.convert_model`` (about 8 s) and
saved as OpenVINO IR (``encoder.xml`` + ``.bin``, float32 weights) in the user's cache folder,
keyed by the checkpoint's sha256, the OpenVINO version and the version of our encoder graph, so
only the first start converts. Precision is a compile-time setting (``INFERENCE_PRECISION_HINT``),
so one IR serves f32 and bf16; OpenVINO's own compiled-model cache (``CACHE_DIR``, keyed by it
internally on model, device and configuration) makes later compiles a read.

A frozen bundle ships the IR (``packaging/`` converts at build time) and looks there first, so a
frozen app never converts. ``WSI_SAM_CACHE_DIR`` moves the cache (e.g. to a shared lab drive).
"""

from __future__ import annotations

import atexit
import contextlib
import locale
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.backends import BackendError
from engine.sam.tiny_vit import TinyViT

# OpenVINO switches the process to the C locale while it reads or writes a graph and then puts
# the previous one back; two threads doing that at once can leave the whole process in the C
# locale (every file is then read as ASCII). Conversions, graph reads and compilations therefore
# run one at a time, and the locale is put back after each. At exit no new one starts and the
# one in flight is waited for: a daemon thread killed inside OpenVINO aborts the interpreter.
_OPENVINO_LOCK = threading.RLock()
_EXITING = threading.Event()


class OpenVinoShutdownError(RuntimeError):
    """The interpreter is exiting: no more OpenVINO graphs are made."""


@contextlib.contextmanager
def openvino_guard() -> Iterator[None]:
    """Run an OpenVINO conversion, graph read or compilation: one at a time, locale kept."""
    with _OPENVINO_LOCK:
        if _EXITING.is_set():
            raise OpenVinoShutdownError("the interpreter is exiting")
        saved = locale.setlocale(locale.LC_ALL)
        try:
            yield
        finally:
            if locale.setlocale(locale.LC_ALL) != saved:
                locale.setlocale(locale.LC_ALL, saved)


@atexit.register
def _wait_for_openvino() -> None:
    _EXITING.set()
    with _OPENVINO_LOCK:
        pass


logger = logging.getLogger(__name__)

#: Bump when the converted graph changes (inputs, outputs or what the module computes).
ENCODER_GRAPH_VERSION = 1
IR_NAME = "encoder.xml"
_OV_PRECISION = {"f32": "f32", "bf16": "bf16", "fp16": "f16"}


def cache_root() -> Path:
    """The user's cache folder for WSI-SAM Studio (``WSI_SAM_CACHE_DIR`` overrides it)."""
    override = os.environ.get("WSI_SAM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "wsi-sam-studio" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "wsi-sam-studio"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsi-sam-studio"


def bundled_models_dir() -> Path | None:
    """Where a frozen bundle keeps its converted models (None when not frozen)."""
    base = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or base is None:
        return None
    return Path(base) / "openvino_models"


#: The encoder graphs that can be converted: "encoder" (prompts: embedding and early feature)
#: and "stages" (instance decoders: also the finer stage-0 and stage-1 maps).
GRAPHS: tuple[str, ...] = ("encoder", "stages")
#: The order of the "stages" graph's outputs.
STAGE_OUTPUTS: tuple[str, ...] = ("embedding", "early", "stage1", "stage0")


def model_key(checkpoint_sha256: str, graph: str = "encoder") -> str:
    """Folder name of one converted encoder: checkpoint, OpenVINO version, graph version."""
    import openvino as ov

    version = ov.get_version().split("-")[0]
    prefix = "tinyvit" if graph == "encoder" else f"tinyvit-{graph}"
    return f"{prefix}-{checkpoint_sha256[:16]}-ov{version}-g{ENCODER_GRAPH_VERSION}"


class _EncoderGraph(nn.Module):
    """What is converted: preprocessed image -> (embedding, early feature)."""

    def __init__(self, encoder: TinyViT) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_with_early(x)


class _StagesGraph(nn.Module):
    """Preprocessed image -> the features of :data:`STAGE_OUTPUTS`, in that order."""

    def __init__(self, encoder: TinyViT) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stages = self.encoder.forward_stages(x)
        return tuple(stages[name] for name in STAGE_OUTPUTS)


def convert_encoder(encoder: TinyViT, folder: Path, graph: str = "encoder") -> Path:
    """Convert ``encoder`` to OpenVINO IR in ``folder`` (written to a temporary folder, renamed).

    Returns the path of ``encoder.xml``. Weights stay float32 (``compress_to_fp16=False``) so the
    f32 backend matches torch; bf16 is chosen when compiling. ``graph`` is one of :data:`GRAPHS`.
    """
    import openvino as ov

    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    side = encoder.img_size
    example = torch.zeros(1, encoder.in_chans, side, side)
    module = _EncoderGraph(encoder.eval()) if graph == "encoder" else _StagesGraph(encoder.eval())
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about the encoder's shape checks, which are constant for one input size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with openvino_guard():
            converted = ov.convert_model(module, example_input=example)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with openvino_guard():
            ov.save_model(converted, tmp / IR_NAME, compress_to_fp16=False)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / IR_NAME).is_file():  # another process did not win the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "converted the image encoder to OpenVINO in %.1f s: %s", time.perf_counter() - t0, folder
    )
    return folder / IR_NAME


def find_or_convert(
    encoder: TinyViT, checkpoint_sha256: str, *, allow_convert: bool = True, graph: str = "encoder"
) -> Path:
    """The IR for this checkpoint: the bundle's, else the user cache's, else converted now."""
    key = model_key(checkpoint_sha256, graph)
    bundled = bundled_models_dir()
    if bundled is not None and (bundled / key / IR_NAME).is_file():
        return bundled / key / IR_NAME
    cached = cache_root() / "openvino" / key
    if (cached / IR_NAME).is_file() and (cached / IR_NAME).with_suffix(".bin").is_file():
        return cached / IR_NAME
    if not allow_convert:
        raise BackendError(f"no converted OpenVINO encoder {key} in the bundle or {cached.parent}")
    try:
        return convert_encoder(encoder, cached, graph)
    except OSError as exc:
        raise BackendError(
            f"could not write the converted OpenVINO encoder to {cached} ({exc.strerror or exc}); "
            "set WSI_SAM_CACHE_DIR to a writable folder or use --backend torch"
        ) from exc


def openvino_core():  # type: ignore[no-untyped-def]
    """An ``openvino.Core`` with the compiled-model cache in our cache folder (when writable)."""
    import openvino as ov

    with openvino_guard():
        core = ov.Core()
    compiled_cache = cache_root() / "openvino" / "compiled"
    try:
        compiled_cache.mkdir(parents=True, exist_ok=True)
        with openvino_guard():
            core.set_property({"CACHE_DIR": str(compiled_cache)})
    except OSError:
        logger.info("OpenVINO compiled-model cache unavailable at %s", compiled_cache)
    return core


class OpenVinoImageEncoder:
    """Our TinyViT, converted, compiled for the CPU in ``precision`` ("f32", "bf16", "fp16").

    ``threads`` sets ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all physical cores).
    Thread-safe: one inference request per calling thread. The "stages" graph (for instance
    decoders) is converted and compiled on the first :meth:`encode_stages`, not before.
    """

    name = "openvino"

    def __init__(
        self,
        encoder: TinyViT,
        checkpoint_sha256: str,
        precision: str = "f32",
        threads: int | None = None,
    ) -> None:

        if precision not in _OV_PRECISION:
            raise BackendError(f"OpenVINO precision must be f32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self._encoder = encoder
        self._checkpoint_sha256 = checkpoint_sha256
        self._config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.ir_path = find_or_convert(encoder, checkpoint_sha256)
        t0 = time.perf_counter()
        self._compiled = self._compile(self.ir_path)
        self.compile_seconds = time.perf_counter() - t0
        self._outputs = self._compiled.outputs
        logger.debug("OpenVINO encoder compiled in %.2f s", self.compile_seconds)
        self._local = threading.local()
        self._stages_compiled: Any = None
        self._stages_lock = threading.Lock()

    def _compile(self, ir_path: Path):  # type: ignore[no-untyped-def]
        try:
            with openvino_guard():
                return openvino_core().compile_model(str(ir_path), "CPU", self._config)
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or ["unknown error"])[-1]
            raise BackendError(
                f"OpenVINO could not compile the encoder {ir_path} for the CPU in "
                f"{self.precision}: {reason}"
            ) from exc

    def __deepcopy__(self, memo: dict[int, object]) -> OpenVinoImageEncoder:
        # A compiled model is immutable and cannot be pickled: copies of a model (e.g. a trainer's
        # snapshot of WSI-SAM) share it.
        return self

    def _request(self):  # type: ignore[no-untyped-def]
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def _stages_request(self):  # type: ignore[no-untyped-def]
        request = getattr(self._local, "stages_request", None)
        if request is None:
            with self._stages_lock:
                if self._stages_compiled is None:
                    ir_path = find_or_convert(
                        self._encoder, self._checkpoint_sha256, graph="stages"
                    )
                    self._stages_compiled = self._compile(ir_path)
            request = self._stages_compiled.create_infer_request()
            self._local.stages_request = request
        return request

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 1024, 1024) preprocessed -> embedding (B, 256, 64, 64), early (B, 160, 64, 64)."""
        batch = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        request = self._request()
        embeddings, earlies = [], []
        # The IR has a static batch of 1: one patch at a time is the fastest on a CPU anyway.
        for i in range(batch.shape[0]):
            result = request.infer({0: batch[i : i + 1]})
            embeddings.append(torch.from_numpy(np.array(result[self._outputs[0]])))
            earlies.append(torch.from_numpy(np.array(result[self._outputs[1]])))
        device = images.device
        return torch.cat(embeddings).to(device), torch.cat(earlies).to(device)

    def encode_stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 1024, 1024) preprocessed -> the maps of ``TinyViT.forward_stages``, float32."""
        batch = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        request = self._stages_request()
        outputs = request.model_outputs
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in STAGE_OUTPUTS}
        for i in range(batch.shape[0]):
            result = request.infer({0: batch[i : i + 1]})
            for name, output in zip(STAGE_OUTPUTS, outputs, strict=True):
                parts[name].append(torch.from_numpy(np.array(result[output])))
        device = images.device
        return {name: torch.cat(values).to(device) for name, values in parts.items()}

    def describe(self) -> str:
        return f"OpenVINO CPU {self.precision}"
