"""Joint augmentation of a field's HR and LR patches: flips and colour jitter.

An :class:`Augmentation` is plain data (so it can key the feature cache) and is applied with the
same parameters to both patches of a field. Flips mirror each 1024x1024 patch about its centre;
since the HR and LR patches are concentric, they stay concentric (the HR patch is still LR pixels
[256:768]). Colour jitter changes brightness, contrast and saturation (as torchvision's
``ColorJitter`` defines them), never the masks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Flip flags and colour factors (1.0 = unchanged)."""

    hflip: bool = False
    vflip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self == Augmentation()

    def key(self) -> str:
        """A short stable text form, for cache keys."""
        return (
            f"h{int(self.hflip)}v{int(self.vflip)}"
            f"b{self.brightness:.4f}c{self.contrast:.4f}s{self.saturation:.4f}"
        )

    @staticmethod
    def random(rng: np.random.Generator, strength: float = 0.2) -> Augmentation:
        """Random flips (each with probability 1/2) and colour factors in ``1 ± strength``."""
        return Augmentation(
            hflip=bool(rng.integers(2)),
            vflip=bool(rng.integers(2)),
            brightness=float(rng.uniform(1 - strength, 1 + strength)),
            contrast=float(rng.uniform(1 - strength, 1 + strength)),
            saturation=float(rng.uniform(1 - strength, 1 + strength)),
        )

    def apply_geometry(self, array: np.ndarray) -> np.ndarray:
        """Flip an image (H, W, C) or mask (H, W) the way this augmentation flips patches."""
        if self.hflip:
            array = array[:, ::-1]
        if self.vflip:
            array = array[::-1]
        return np.ascontiguousarray(array)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Augment an RGB patch (H, W, 3) uint8 -> (H, W, 3) uint8."""
        out = self.apply_geometry(image)
        if self.brightness == self.contrast == self.saturation == 1.0:
            return out
        x = out.astype(np.float32)
        x = x * self.brightness
        grey = _grey(np.clip(x, 0, 255))
        x = (x - grey.mean()) * self.contrast + grey.mean()
        grey = _grey(np.clip(x, 0, 255))[..., None]
        x = (x - grey) * self.saturation + grey
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _grey(x: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) of an (H, W, 3) float image -> (H, W)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def augmentation_variants(count: int, seed: int, key: str) -> list[Augmentation]:
    """The identity followed by ``count`` random augmentations, fixed by ``seed`` and ``key``.

    ``key`` names the object (e.g. its source and field), so each object gets its own variants
    and the same ones on every run: that is what lets their encoder outputs be cached.
    """
    if count < 0:
        raise ValueError(f"the number of augmentation variants must be >= 0, got {count}")
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    return [Augmentation(), *(Augmentation.random(rng) for _ in range(count))]
