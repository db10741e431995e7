"""The frozen encoder's maps of a field, as an instance decoder reads them, and their disk cache.

:func:`encode_field` runs the encoder once on a field's HR patch (all of
``TinyViT.forward_stages``' maps) and, when the decoder reads it, once on the LR patch (its
embedding). :class:`InstanceFeatureCache` keeps them on disk for training, in half precision,
one file per (source content, field, symmetry, encoder): HR maps about 15 MB, the LR embedding
2 MB, the image at 512 px 0.8 MB. A changed image or another encoder never reads stale maps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from engine.patches import Field
from engine.sam.sam import Sam
from engine.train.data import field_key
from engine.train.features import encoder_fingerprint, save_atomically, source_stamp

__all__ = [
    "FEATURE_FORMAT",
    "HR_MAPS",
    "InstanceFeatureCache",
    "encode_field",
    "normalised_rgb",
]

FEATURE_FORMAT = "wsi-sam-instance-features/1"
HR_MAPS: tuple[str, ...] = ("embedding", "early", "stage1", "stage0")
RGB_SIZE = 512


def _preprocess(sam: Sam, image: NDArray[np.uint8]) -> torch.Tensor:
    batch = torch.from_numpy(np.ascontiguousarray(image)[None]).permute(0, 3, 1, 2).float()
    return sam.preprocess(batch.to(sam.device))


def normalised_rgb(sam: Sam, rgb: NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
    """(S, S, 3) uint8 image -> (3, S, S) float32 normalised with SAM's pixel mean and std."""
    x = torch.as_tensor(np.asarray(rgb)).permute(2, 0, 1).float()
    mean = sam.pixel_mean.detach().cpu().reshape(3, 1, 1)
    std = sam.pixel_std.detach().cpu().reshape(3, 1, 1)
    return (x - mean) / std


def downsample_rgb(image: NDArray[np.uint8], size: int = RGB_SIZE) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 by area averaging (H, W multiples of size)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    small = F.interpolate(x, size=(size, size), mode="area")
    return small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def encode_field(
    sam: Sam,
    hr_image: NDArray[np.uint8],
    lr_image: NDArray[np.uint8] | None = None,
    maps: tuple[str, ...] = HR_MAPS,
) -> dict[str, torch.Tensor]:
    """The encoder's maps of one field, batch 1, float32 on the model's device.

    Args:
        sam: the frozen SAM (its encoder backend runs the encode).
        hr_image: (1024, 1024, 3) uint8 HR patch.
        lr_image: the LR patch, encoded only when given ("lr": its embedding).
        maps: the HR maps wanted; only "embedding" and "early" need no stage maps (one cheaper
            encode).
    Returns:
        name -> (1, C, H, W): the HR maps asked for, and "lr" when ``lr_image`` was given.
    """
    x = _preprocess(sam, hr_image)
    out: dict[str, torch.Tensor] = {}
    if set(maps) <= {"embedding", "early"}:
        embedding, early = sam.encode_preprocessed(x)
        out = {"embedding": embedding, "early": early}
    else:
        out = dict(sam.encode_stages(x))
    out = {name: value for name, value in out.items() if name in maps}
    if lr_image is not None:
        out["lr"] = sam.encode_preprocessed(_preprocess(sam, lr_image))[0]
    return out


@dataclass
class InstanceFeatureCache:
    """Encoder maps of training fields on disk (``root``), or in memory when ``root`` is None.

    ``encoder_calls`` counts patches encoded (HR and LR separately); ``hits`` entries read.
    """

    root: Path | None
    sam: Sam
    encoder_calls: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        self._fingerprint = encoder_fingerprint(self.sam)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.root is not None:
            self.root = Path(self.root)
            self.root.mkdir(parents=True, exist_ok=True)

    def key(self, source: Path, field: Field, variant: int, part: str) -> str:
        text = "|".join(
            (
                FEATURE_FORMAT,
                self._fingerprint,
                source_stamp(Path(source)),
                field_key(field),
                f"d{variant}",
                part,
            )
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.pt"

    def contains(self, key: str) -> bool:
        return key in self._memory or (self.root is not None and self._path(key).is_file())

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored maps (float16 (C, H, W); "rgb" uint8 (S, S, 3)), or None when absent."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        if self.root is None or not self._path(key).is_file():
            return None
        try:
            data = torch.load(self._path(key), map_location="cpu", weights_only=True)
        except Exception:  # a truncated file from an interrupted run: encode again
            return None
        if not isinstance(data, dict) or data.get("format") != FEATURE_FORMAT:
            return None
        self.hits += 1
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}

    def store(self, key: str, maps: dict[str, torch.Tensor]) -> None:
        payload: dict[str, object] = {
            name: (value if value.dtype == torch.uint8 else value.half()).contiguous()
            for name, value in maps.items()
        }
        if self.root is None:
            self._memory[key] = payload  # type: ignore[assignment]
            return
        payload["format"] = FEATURE_FORMAT
        save_atomically(payload, self._path(key))

    def hr(
        self, source: Path, field: Field, variant: int, image: NDArray[np.uint8]
    ) -> dict[str, torch.Tensor]:
        """HR maps (float16, (C, H, W)) and "rgb" ((512, 512, 3) uint8) of an already
        transformed HR patch ``image``, encoding only on a miss."""
        key = self.key(source, field, variant, "hr")
        cached = self.load(key)
        if cached is not None:
            return cached
        encoded = encode_field(self.sam, image)
        self.encoder_calls += 1
        maps = {name: value[0].cpu() for name, value in encoded.items()}
        maps["rgb"] = torch.from_numpy(downsample_rgb(image))
        self.store(key, maps)
        return self.load(key) or maps

    def lr(
        self, source: Path, field: Field, variant: int, image: NDArray[np.uint8]
    ) -> torch.Tensor:
        """The LR embedding (256, 64, 64) float16 of an already transformed LR patch."""
        key = self.key(source, field, variant, "lr")
        cached = self.load(key)
        if cached is not None:
            return cached["lr"]
        x = _preprocess(self.sam, image)
        with torch.no_grad():
            embedding = self.sam.encode_preprocessed(x)[0]
        self.encoder_calls += 1
        self.store(key, {"lr": embedding[0].cpu()})
        loaded = self.load(key)
        return loaded["lr"] if loaded is not None else embedding[0].cpu().half()
