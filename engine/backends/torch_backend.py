"""The reference encoder backend: our TinyViT module run by torch on the model's device."""

from __future__ import annotations

import torch

from engine.backends import autocast
from engine.sam.tiny_vit import TinyViT


class TorchImageEncoder:
    """Runs :class:`~engine.sam.tiny_vit.TinyViT` eagerly, in f32 or under half-precision autocast.

    The module stays the model's own (shared, not copied), so moving the model to another device
    moves the encoder with it.
    """

    name = "torch"

    def __init__(self, encoder: TinyViT, precision: str = "f32") -> None:
        self.encoder = encoder
        self.precision = precision

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 1024, 1024) preprocessed -> embedding (B, 256, 64, 64), early (B, 160, 64, 64)."""
        with torch.no_grad(), autocast(images.device, self.precision):
            embedding, early = self.encoder.forward_with_early(images)
        return embedding.float(), early.float()

    def encode_stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 1024, 1024) preprocessed -> the maps of ``TinyViT.forward_stages``, float32."""
        with torch.no_grad(), autocast(images.device, self.precision):
            stages = self.encoder.forward_stages(images)
        return {name: value.float() for name, value in stages.items()}

    def describe(self) -> str:
        device = next(self.encoder.parameters()).device.type.upper()
        return f"torch {device} {self.precision}"
