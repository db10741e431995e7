"""Instance decoder files: write them whole, read them with every check a user's file needs.

A decoder file is a ``torch.save`` of plain data (read back with ``weights_only=True``, never
unpickled code):

- ``format``: :data:`DECODER_FORMAT`;
- ``config``: the decoder's layout (:class:`~engine.instances.model.DecoderConfig`);
- ``state_dict``: its weights;
- ``magnification``: the HR magnification it was trained at (the user never has to know it);
- ``watershed``: the post-processing settings chosen for it;
- ``min_area_um2`` / ``max_area_um2``: object size limits (um^2; None: no limit);
- ``encoder``: the sha256 of the SAM checkpoint whose frozen encoder it reads;
- ``metadata``: what it was trained on, figures, the time and the code version.

:func:`read_decoder` refuses, with one line naming the file, a missing or damaged file, a file
of another kind (WSI-SAM heads, any other checkpoint), a layout that does not build, weights that
do not fit it or hold NaN, and a decoder trained on another encoder.
"""

from __future__ import annotations

import datetime
import io
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from engine._files import atomic_write_bytes
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.instances.watershed import WatershedSettings
from engine.validation import non_finite_tensors, torch_load_reason

__all__ = [
    "DECODER_FORMAT",
    "DecoderError",
    "InstanceModel",
    "read_decoder",
    "shipped_decoders_dir",
    "write_decoder",
]

DECODER_FORMAT = "wsi-sam-instance-decoder/1"


class DecoderError(RuntimeError):
    """An instance decoder file is missing, damaged, foreign or made for another encoder."""


def shipped_decoders_dir() -> Path:
    """Where the decoders installed with the package live (``engine/instances/decoders``)."""
    return Path(str(resources.files("engine.instances") / "decoders"))


@dataclass
class InstanceModel:
    """A loaded decoder with what it needs to run.

    Attributes:
        decoder: the network (eval mode, on the CPU until moved).
        magnification: HR magnification of its fields.
        watershed: post-processing settings.
        min_area_um2, max_area_um2: object size limits (None: none).
        encoder_sha256: the SAM checkpoint it reads features of.
        metadata: what it was trained on, figures, ...
        path: the file it came from (None when built in memory).
        sha256: the file's sha256 (None when built in memory).
    """

    decoder: InstanceDecoder
    magnification: float
    watershed: WatershedSettings = field(default_factory=WatershedSettings)
    min_area_um2: float = 0.0
    max_area_um2: float | None = None
    encoder_sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @property
    def config(self) -> DecoderConfig:
        return self.decoder.config

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path.stem
        return str(self.metadata.get("name") or "decoder")


def write_decoder(path: str | Path, model: InstanceModel) -> Path:
    """Write ``model`` to ``path`` atomically (a failed write leaves the old file)."""
    path = Path(path)
    metadata = dict(model.metadata)
    metadata.setdefault("saved", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    payload = {
        "format": DECODER_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {
            k: v.detach().cpu().contiguous() for k, v in model.decoder.state_dict().items()
        },
        "magnification": float(model.magnification),
        "watershed": model.watershed.to_dict(),
        "min_area_um2": float(model.min_area_um2),
        "max_area_um2": None if model.max_area_um2 is None else float(model.max_area_um2),
        "encoder": {"checkpoint_sha256": model.encoder_sha256},
        "metadata": metadata,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def is_decoder_payload(payload: object) -> bool:
    return isinstance(payload, dict) and payload.get("format") == DECODER_FORMAT


def read_decoder(path: str | Path, encoder_sha256: str | None = None) -> InstanceModel:
    """Load and check a decoder file.

    Args:
        path: the ``.pt`` file.
        encoder_sha256: the sha256 of the SAM checkpoint in use; a decoder trained on another
            encoder is refused. None skips that check (listing files, not running them).
    Raises:
        DecoderError: with one line that names the file and says what is wrong.
    """
    from engine.heads_catalogue import file_sha256

    path = Path(path)
    if path.is_dir():
        raise DecoderError(f"instance decoder {path} is a folder: give the .pt file in it")
    if not path.is_file():
        raise DecoderError(f"instance decoder not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise DecoderError(
            f"{path}: not a readable instance decoder: {torch_load_reason(exc)}"
        ) from exc
    if not is_decoder_payload(payload):
        kind = payload.get("format") if isinstance(payload, dict) else None
        what = f" (it is {kind!r})" if isinstance(kind, str) else ""
        raise DecoderError(
            f"{path}: not a WSI-SAM instance decoder{what}; expected format {DECODER_FORMAT!r}"
        )
    try:
        config = DecoderConfig.from_dict(payload["config"])
        decoder = InstanceDecoder(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecoderError(f"{path}: the decoder's layout is not valid: {exc}") from exc
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise DecoderError(f"{path}: the decoder has no weights (state_dict)")
    bad = non_finite_tensors(state)
    if bad:
        raise DecoderError(
            f"{path}: the decoder's weights hold NaN or infinity ({', '.join(bad[:4])}): the "
            "training run that wrote them diverged; train again"
        )
    expected = decoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DecoderError(
            f"{path}: the weights do not fit the decoder's layout "
            f"(missing: {missing[:4]}, unexpected: {unexpected[:4]})"
        )
    for key, value in expected.items():
        got = tuple(getattr(state[key], "shape", ()))
        if got != tuple(value.shape):
            raise DecoderError(
                f"{path}: {key} has shape {got}, the layout needs {tuple(value.shape)}"
            )
    decoder.load_state_dict(state)
    decoder.eval()
    trained_on = str((payload.get("encoder") or {}).get("checkpoint_sha256") or "")
    if encoder_sha256 is not None and trained_on and trained_on != encoder_sha256:
        raise DecoderError(
            f"{path}: this decoder was trained on another SAM encoder (checkpoint "
            f"{trained_on[:12]}..., the one in use is {encoder_sha256[:12]}...); "
            "train it again on this one"
        )
    try:
        magnification = float(payload["magnification"])
        if not (math.isfinite(magnification) and magnification > 0):
            raise ValueError(magnification)
        watershed = WatershedSettings.from_dict(dict(payload.get("watershed") or {}))
        min_area = float(payload.get("min_area_um2") or 0.0)
        max_raw = payload.get("max_area_um2")
        max_area = None if max_raw is None else float(max_raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecoderError(f"{path}: the decoder's settings are not valid: {exc}") from exc
    metadata = payload.get("metadata")
    return InstanceModel(
        decoder=decoder,
        magnification=magnification,
        watershed=watershed,
        min_area_um2=min_area,
        max_area_um2=max_area,
        encoder_sha256=trained_on,
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        path=path,
        sha256=file_sha256(path),
    )
