"""Compose WSI-SAM from its parts: the frozen SAM on a runtime, the heads, the fast decoders.

As segment-anything's ``build_sam.py`` does, the loader is the one place that knows all three:
the model (:mod:`engine.wsi_sam`) imports neither a runtime nor the heads catalogue, the
runtimes (:mod:`engine.backends`) and the catalogue (:mod:`engine.heads_catalogue`) may import
the model, and this module imports them all::

    engine.build -> engine.wsi_sam, engine.weights, engine.heads_catalogue,
                    engine.backends.openvino_decoder (when the encoder runs on OpenVINO)
    engine.heads_catalogue -> engine.wsi_sam
    engine.backends.openvino_decoder -> engine.wsi_sam (type hints only)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from engine.wsi_sam import Aggregation, WsiSam, default_heads_path

logger = logging.getLogger(__name__)

__all__ = ["decoder_factory", "enable_fast_decoders", "load_wsi_sam"]


def decoder_factory(model: WsiSam) -> Any:
    """The function that makes ``model``'s converted decoders for its encoder's runtime, or None
    when prompts are decoded in torch (a torch encoder: the GPU or the reference path)."""
    backend = model.sam.encoder_backend
    if backend is None or getattr(backend, "name", "") != "openvino":
        return None
    precision = backend.precision

    def make(target: WsiSam) -> Any:
        from engine.backends.openvino_decoder import OpenVinoDecoders

        return OpenVinoDecoders(target, precision)

    return make


def enable_fast_decoders(model: WsiSam) -> WsiSam:
    """Decode ``model``'s prompts on its encoder's runtime (converted for the current heads)."""
    model.decoder_factory = decoder_factory(model)
    model.enable_fast_decoders()
    return model


def load_wsi_sam(
    heads: str | Path | None = None,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    aggregation: Aggregation | None = None,
    backend: str = "auto",
    precision: str = "auto",
    fast_decoders: bool = True,
    project: str | Path | None = None,
) -> WsiSam:
    """Build WSI-SAM on the MobileSAM weights and load its heads.

    Args:
        heads: a heads checkpoint, or the name of one in the heads catalogue
            (:mod:`engine.heads_catalogue`); None loads the shipped default heads when they are
            installed (fresh heads, which reproduce SAM, otherwise); ``"none"`` forces fresh
            heads.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.
        checkpoint: a MobileSAM checkpoint instead of the packaged ``mobile_sam.pt``.
        aggregation: override the heads' token aggregation (``"mean"`` or ``"sum"``).
        backend, precision: the image encoder's runtime and precision, as for
            :func:`engine.weights.load_sam`.
        fast_decoders: with the OpenVINO encoder, also decode prompts on OpenVINO
            (:func:`enable_fast_decoders`); False keeps the decoders in torch (training does, as
            it changes the heads).
        project: a QuPath project whose ``wsi-sam/heads/`` folder a heads name may refer to.
    """
    from engine.weights import load_sam

    sam = load_sam(checkpoint=checkpoint, device=device, backend=backend, precision=precision)
    # Fresh heads start from the same weights at every load (whatever the caller's random state),
    # so that their converted decoders are found in the cache instead of converted again.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WsiSam(sam, aggregation=aggregation or "mean")
    if heads is None:
        default = default_heads_path()
        if default.is_file():
            model.load_heads(default, aggregation=aggregation)
        else:
            logger.warning("no default WSI-SAM heads at %s: using fresh heads (= SAM)", default)
            model.metadata = {"trained_on": None, "note": "fresh heads, equal to SAM"}
    elif str(heads).lower() != "none":
        from engine.heads_catalogue import resolve_heads

        # a catalogue name ("wsi-sam heads list") as well as a path
        model.load_heads(resolve_heads(heads, project=project) or heads, aggregation=aggregation)
    else:
        model.metadata = {"trained_on": None, "note": "fresh heads, equal to SAM"}
    model.eval()
    model = model.to(sam.device)
    model.decoder_factory = decoder_factory(model)
    if fast_decoders:
        model.enable_fast_decoders()
    return model
