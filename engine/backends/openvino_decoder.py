"""WSI-SAM's prompt-dependent decoders on OpenVINO, for the per-prompt cost on a CPU.

After the encoder, what a prompt waits for is SAM's two-way-transformer decoder (run three times
in WSI-SAM mode: plain SAM on the HR patch, then the HR and LR heads' tokens in one batch) and the
HR head's 3x3-conv fusion at 256x256; a new field also waits for the HR head's prompt-independent
fused features (:meth:`~engine.wsi_sam.WsiSam.hr_static_torch`), converted here as well.
:meth:`engine.wsi_sam.WsiSam.decode_hr` and :meth:`~engine.wsi_sam.WsiSam.decode_sam` hold exactly
that tensor work without shape-dependent Python branches; this module converts them with
``openvino.convert_model`` (dynamic batch and prompt length), caches the IR on disk keyed by the
MobileSAM checkpoint, the heads' weights and the OpenVINO version, and runs them in the encoder
backend's precision.

The converted graphs hold the heads' weights, so they answer only for the heads they were
converted from: :class:`~engine.wsi_sam.WsiSam` uses them only while its ``heads_version`` is the
one recorded here, drops them when it is put into training mode, and a deep copy of the model
(which may then be trained) does not inherit them.
"""

from __future__ import annotations

import hashlib
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

if TYPE_CHECKING:
    from engine.backends.openvino_field_decoder import OpenVinoFieldDecoders
    from engine.wsi_sam import WsiSam

logger = logging.getLogger(__name__)

#: Bump when the converted decoder graphs change.
#: 2: the merged token folded into the fusion's last conv; the HR static features converted too
DECODER_GRAPH_VERSION = 2
#: the converted graphs, one IR each in a decoders folder
DECODER_GRAPHS = ("decode_hr", "decode_sam", "hr_static")
_GRAPHS = DECODER_GRAPHS
#: static-shape compilations kept per decoders object (each is a few MB)
MAX_STATIC_SHAPES = 16
#: prompt token counts compiled ahead for one field: a box (2), a point (1 + padding), a box and
#: one or two points (3, 4), two or three points alone
PREPARED_TOKENS = (2, 3, 4)


class _DecodeHr(nn.Module):
    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        hr_embedding: torch.Tensor,
        lr_embedding: torch.Tensor,
        hr_static: torch.Tensor,
        hr_sparse: torch.Tensor,
        lr_sparse: torch.Tensor,
        hr_dense: torch.Tensor,
        lr_dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_hr(
            hr_embedding, lr_embedding, hr_static, hr_sparse, lr_sparse, hr_dense, lr_dense
        )


class _DecodeSam(nn.Module):
    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_sam(embedding, sparse, dense)


class _HrStatic(nn.Module):
    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, embedding: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
        return self.model.hr_static_torch(embedding, early)


def heads_digest(model: WsiSam) -> str:
    """sha256 of the heads' weights and aggregation (what the converted graphs depend on)."""
    digest = hashlib.sha256(model.aggregation.encode())
    for key, value in sorted(model.heads_state_dict().items()):
        digest.update(key.encode())
        digest.update(value.float().numpy().tobytes())
    return digest.hexdigest()


def decoders_key(model: WsiSam) -> str:
    import openvino as ov

    checkpoint = getattr(model.sam.checkpoint_info, "sha256", "unknown")
    version = ov.get_version().split("-")[0]
    return (
        f"decoders-{checkpoint[:12]}-{heads_digest(model)[:12]}-ov{version}"
        f"-g{DECODER_GRAPH_VERSION}"
    )


def _example_inputs(model: WsiSam) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of batch 2 with 3 prompt tokens (a box and a point), for tracing."""
    batch, tokens = 2, 3
    emb = torch.zeros(1, 256, 64, 64)
    static = torch.zeros(1, 32, 256, 256)
    sparse = torch.zeros(batch, tokens, 256)
    dense = torch.zeros(batch, 256, 64, 64)
    return {
        "decode_hr": (emb, emb, static, sparse, sparse, dense, dense),
        "decode_sam": (emb, sparse, dense),
        "hr_static": (emb, torch.zeros(1, 160, 64, 64)),
    }


def convert_decoders(model: WsiSam, folder: Path) -> None:
    """Convert both decoder graphs into ``folder`` (a temporary folder renamed at the end)."""
    import openvino as ov

    examples = _example_inputs(model)
    shapes = {
        "decode_hr": [
            (-1, 256, 64, 64),
            (-1, 256, 64, 64),
            (-1, 32, 256, 256),
            (-1, -1, 256),
            (-1, -1, 256),
            (-1, 256, 64, 64),
            (-1, 256, 64, 64),
        ],
        "decode_sam": [(-1, 256, 64, 64), (-1, -1, 256), (-1, 256, 64, 64)],
        "hr_static": [(-1, 256, 64, 64), (-1, 160, 64, 64)],
    }
    modules = {
        "decode_hr": _DecodeHr(model),
        "decode_sam": _DecodeSam(model),
        "hr_static": _HrStatic(model),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    t0 = time.perf_counter()
    try:
        for name in _GRAPHS:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                with openvino_guard():
                    converted = ov.convert_model(
                        modules[name].eval(), example_input=examples[name], input=shapes[name]
                    )
            with openvino_guard():
                ov.save_model(converted, tmp / f"{name}.xml", compress_to_fp16=False)
        try:
            tmp.rename(folder)
        except OSError:
            if not all((folder / f"{name}.xml").is_file() for name in _GRAPHS):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "converted the decoders to OpenVINO in %.1f s: %s", time.perf_counter() - t0, folder
    )


class OpenVinoDecoders:
    """The converted :meth:`WsiSam.decode_hr` / :meth:`WsiSam.decode_sam`, compiled for the CPU.

    Built for one model's current heads (``heads_version`` records which). Thread-safe: one
    inference request per graph and calling thread.
    """

    def __init__(self, model: WsiSam, precision: str = "f32", prepare: bool = False) -> None:

        if precision not in _OV_PRECISION:
            raise BackendError(f"OpenVINO precision must be f32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.heads_version = model.heads_version
        key = decoders_key(model)
        bundled = bundled_models_dir()
        folder = cache_root() / "openvino" / key
        if bundled is not None and all(
            (bundled / key / f"{name}.xml").is_file() for name in _GRAPHS
        ):
            folder = bundled / key
        elif not all((folder / f"{name}.xml").is_file() for name in _GRAPHS):
            try:
                convert_decoders(model, folder)
            except OSError as exc:
                raise BackendError(
                    f"could not write the converted OpenVINO decoders to {folder} "
                    f"({exc.strerror or exc}); set WSI_SAM_CACHE_DIR to a writable folder"
                ) from exc
        self.folder = folder
        core = openvino_core()
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            with openvino_guard():
                self._compiled = {
                    name: core.compile_model(str(folder / f"{name}.xml"), "CPU", config)
                    for name in _GRAPHS
                }
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or ["unknown error"])[-1]
            raise BackendError(
                f"OpenVINO could not compile the decoders in {folder}: {reason}"
            ) from exc
        self._local = threading.local()
        # the same graphs compiled for the shapes prompts come in (see _compiled_for)
        self._core = core
        self._config = config
        self._static: dict[tuple[str, tuple[tuple[int, ...], ...]], Any] = {}
        self._static_pending: set[tuple[str, tuple[tuple[int, ...], ...]]] = set()
        self._static_lock = threading.Lock()
        if prepare:
            # Compiled here, in the loading thread, not in the background: OpenVINO switches
            # the process to the C locale while it compiles, and another thread's file I/O
            # would then read text as ASCII (see openvino_guard).
            self._prepare_shapes()
        # segment-everything's field graphs for the same heads, made on first use
        self._model = weakref.ref(model)
        self._field: OpenVinoFieldDecoders | None = None

    def field_decoders(self) -> OpenVinoFieldDecoders:
        """The field graphs (:mod:`engine.field_decoder`) for the same heads and precision."""
        if self._field is None:
            from engine.backends.openvino_field_decoder import OpenVinoFieldDecoders

            model = self._model()
            if model is None:
                raise BackendError("the model these decoders were made for is gone")
            self._field = OpenVinoFieldDecoders(model, self.precision)
        return self._field

    def __deepcopy__(self, memo: dict[int, object]) -> None:
        # A copy of the model may get other heads (training): it decodes in torch.
        return None

    def _infer(self, name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        device = inputs[0].device
        arrays = [np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()) for t in inputs]
        shapes = tuple(tuple(int(v) for v in a.shape) for a in arrays)
        compiled, key = self._compiled_for(name, shapes)
        requests = self._local.__dict__.setdefault("requests", {})
        request = requests.get(key)
        if request is None:
            request = requests[key] = compiled.create_infer_request()
        # the inputs are read in place (no copy into OpenVINO's buffers); the outputs are copied
        result = request.infer(arrays, share_inputs=True)
        return tuple(torch.from_numpy(np.array(result[out])).to(device) for out in compiled.outputs)

    def _compiled_for(
        self, name: str, shapes: tuple[tuple[int, ...], ...], wait: bool = False
    ) -> tuple[Any, Any]:
        """The graph compiled for exactly these input shapes when there is one (``wait``:
        compiled now), else the dynamic-shape graph; with the key of its inference requests.
        The shapes of the first prompts are compiled when the decoders are made.

        A graph reshaped to static shapes does about a quarter less work per decode on a CPU
        than the dynamic one (OpenVINO plans its kernels once); a prompt's shapes change only
        with its number of points, so few are ever made (at most :data:`MAX_STATIC_SHAPES`).
        """
        key = (name, shapes)
        with self._static_lock:
            compiled = self._static.get(key)
            start = (
                compiled is None
                and key not in self._static_pending
                and len(self._static) + len(self._static_pending) < MAX_STATIC_SHAPES
            )
            if start:
                self._static_pending.add(key)
        if compiled is not None:
            return compiled, key
        if start:
            if wait:
                self._compile_static(key)
                return self._compiled_for(name, shapes)
            with self._static_lock:  # other shapes: the dynamic graph (no compile behind it)
                self._static_pending.discard(key)
        return self._compiled[name], name

    def _compile_static(self, key: tuple[str, tuple[tuple[int, ...], ...]]) -> None:
        import openvino as ov

        name, shapes = key
        compiled = None
        try:
            with openvino_guard():
                graph = self._core.read_model(str(self.folder / f"{name}.xml"))
                ports = graph.inputs
                graph.reshape(
                    {
                        port: ov.PartialShape(list(shape))
                        for port, shape in zip(ports, shapes, strict=True)
                    }
                )
                compiled = self._core.compile_model(graph, "CPU", self._config)
        except Exception as exc:  # the dynamic graph keeps answering (also at exit)
            logger.info("OpenVINO decoder %s not compiled for shapes %s: %s", name, shapes, exc)
        with self._static_lock:
            self._static_pending.discard(key)
            if compiled is not None:
                self._static[key] = compiled

    def _prepare_shapes(self) -> None:
        """Compile the shapes of the first prompts ahead: one field, a box or points and a box
        with up to two points (:data:`PREPARED_TOKENS`)."""
        field = (1, 256, 64, 64)
        for tokens in PREPARED_TOKENS:
            sparse = (1, tokens, 256)
            for name, shapes in (
                ("decode_sam", (field, sparse, field)),
                ("decode_hr", (field, field, (1, 32, 256, 256), sparse, sparse, field, field)),
            ):
                self._compiled_for(name, shapes, wait=True)
        self._compiled_for("hr_static", (field, (1, 160, 64, 64)), wait=True)

    def static_shapes(self) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
        """The (graph, input shapes) compiled statically so far (for tests and status)."""
        with self._static_lock:
            return sorted(self._static)

    def decode_hr(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`WsiSam.decode_hr`: HR logits (B, 4, 256, 256), IoU predictions (B, 4)."""
        logits, iou = self._infer("decode_hr", inputs)
        return logits, iou

    def decode_sam(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`WsiSam.decode_sam`: logits (B, 4, 256, 256), IoU predictions (B, 4)."""
        masks, iou = self._infer("decode_sam", inputs)
        return masks, iou

    def hr_static(self, embedding: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
        """As :meth:`WsiSam.hr_static_torch`: (B, 32, 256, 256), once per field."""
        (static,) = self._infer("hr_static", (embedding, early))
        return static
