"""The field decoders (:class:`engine.field_decoder.FieldDecoder`) on OpenVINO, for
segment-everything on a CPU.

Two graphs, converted on first use (one per mode, so that SAM mode never waits for the heads'
graph) and cached on disk like :mod:`engine.backends.openvino_decoder`'s: ``field_sam`` (keyed by
the MobileSAM checkpoint and the OpenVINO version) and ``field_wsi_sam`` (also by the heads'
weights). Prompts are one point each (a point and SAM's padding point: two tokens), the batch is
dynamic. They run in the prompt decoders' precision and belong to them
(:meth:`engine.backends.openvino_decoder.OpenVinoDecoders.field_decoders`): they answer only for
the heads those were made for.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.backends import BackendError
from engine.backends.openvino_backend import (
    _OV_PRECISION,
    bundled_models_dir,
    cache_root,
    openvino_core,
    openvino_guard,
)
from engine.backends.openvino_decoder import heads_digest
from engine.field_decoder import FieldDecoder

if TYPE_CHECKING:
    from engine.wsi_sam import WsiSam

logger = logging.getLogger(__name__)

#: Bump when the converted field graphs change.
FIELD_GRAPH_VERSION = 1
GRAPHS: tuple[str, ...] = ("field_sam", "field_wsi_sam")
#: Prompt tokens per item: one point and SAM's padding point.
TOKENS = 2


class _FieldSam(nn.Module):
    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.decoder = FieldDecoder(model)

    def forward(
        self, embedding: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.sam(embedding, dense, sparse)


class _FieldWsiSam(nn.Module):
    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.decoder = FieldDecoder(model)

    def forward(
        self,
        hr_embedding: torch.Tensor,
        lr_embedding: torch.Tensor,
        hr_static: torch.Tensor,
        dense: torch.Tensor,
        hr_sparse: torch.Tensor,
        lr_sparse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.wsi_sam(
            hr_embedding, lr_embedding, hr_static, dense, hr_sparse, lr_sparse
        )


def graph_key(model: WsiSam, graph: str) -> str:
    """The cache folder name of one converted field graph."""
    import openvino as ov

    checkpoint = getattr(model.sam.checkpoint_info, "sha256", "unknown")[:12]
    version = ov.get_version().split("-")[0]
    heads = f"-{heads_digest(model)[:12]}" if graph == "field_wsi_sam" else ""
    return f"{graph.replace('_', '-')}-{checkpoint}{heads}-ov{version}-g{FIELD_GRAPH_VERSION}"


def convert_field_graph(model: WsiSam, graph: str, folder: Path) -> None:
    """Convert one field graph into ``folder/<graph>.xml`` (a temporary folder renamed at the
    end, so that a half-written conversion is never used)."""
    import openvino as ov

    embedding = torch.zeros(1, 256, 64, 64)
    sparse = torch.zeros(2, TOKENS, 256)
    module: nn.Module
    if graph == "field_sam":
        module = _FieldSam(model)
        example: tuple[torch.Tensor, ...] = (embedding, embedding, sparse)
        shapes: list[tuple[int, ...]] = [(1, 256, 64, 64), (1, 256, 64, 64), (-1, TOKENS, 256)]
    else:
        module = _FieldWsiSam(model)
        static = torch.zeros(1, 32, 256, 256)
        example = (embedding, embedding, static, embedding, sparse, sparse)
        shapes = [
            (1, 256, 64, 64),
            (1, 256, 64, 64),
            (1, 32, 256, 256),
            (1, 256, 64, 64),
            (-1, TOKENS, 256),
            (-1, TOKENS, 256),
        ]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            with openvino_guard():
                converted = ov.convert_model(module.eval(), example_input=example, input=shapes)
        with openvino_guard():
            ov.save_model(converted, tmp / f"{graph}.xml", compress_to_fp16=False)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / f"{graph}.xml").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s to OpenVINO in %.1f s: %s", graph, time.perf_counter() - t0, folder)


class OpenVinoFieldDecoders:
    """The field graphs of one model's current heads, each converted (when not cached) and
    compiled for the CPU on its first use.

    Thread-safe: one inference request per graph and calling thread.
    """

    def __init__(self, model: WsiSam, precision: str = "f32") -> None:
        if precision not in _OV_PRECISION:
            raise BackendError(f"OpenVINO precision must be f32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.heads_version = model.heads_version
        # the graphs are converted from the model lazily; a weak reference keeps the model's
        # lifetime its own
        self._model = weakref.ref(model)
        self._keys = {graph: graph_key(model, graph) for graph in GRAPHS}
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_graph(self, graph: str) -> Any:
        with self._lock:
            compiled = self._compiled.get(graph)
            if compiled is not None:
                return compiled
            key = self._keys[graph]
            bundled = bundled_models_dir()
            folder = cache_root() / "openvino" / key
            if bundled is not None and (bundled / key / f"{graph}.xml").is_file():
                folder = bundled / key
            elif not (folder / f"{graph}.xml").is_file():
                model = self._model()
                if model is None or model.heads_version != self.heads_version:
                    raise BackendError("the model these field decoders were made for has changed")
                try:
                    convert_field_graph(model, graph, folder)
                except OSError as exc:
                    raise BackendError(
                        f"could not write the converted OpenVINO field decoder to {folder} "
                        f"({exc.strerror or exc}); set WSI_SAM_CACHE_DIR to a writable folder"
                    ) from exc
            config = {
                "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
                "PERFORMANCE_HINT": "LATENCY",
            }
            try:
                with openvino_guard():
                    compiled = openvino_core().compile_model(
                        str(folder / f"{graph}.xml"), "CPU", config
                    )
            except RuntimeError as exc:
                reason = (str(exc).strip().splitlines() or ["unknown error"])[-1]
                raise BackendError(
                    f"OpenVINO could not compile the field decoder in {folder}: {reason}"
                ) from exc
            self._compiled[graph] = compiled
            return compiled

    def _infer(self, graph: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        compiled = self._compiled_graph(graph)
        requests = self._local.__dict__.setdefault("requests", {})
        request = requests.get(graph)
        if request is None:
            request = requests[graph] = compiled.create_infer_request()
        arrays = [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in inputs]
        result = request.infer(arrays)
        return tuple(torch.from_numpy(np.array(result[out])) for out in compiled.outputs)

    def sam(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`FieldDecoder.sam`."""
        logits, iou = self._infer("field_sam", inputs)
        return logits, iou

    def wsi_sam(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`FieldDecoder.wsi_sam`."""
        logits, iou = self._infer("field_wsi_sam", inputs)
        return logits, iou
