"""On-disk cache of the frozen encoder's outputs, one file per (patch content, augmentation).

The encoder is frozen, so its outputs for a field never change: they are computed once and stored
in half precision (``torch.save`` of four float16 tensors, about 6.8 MB per field: HR and LR
embedding (256, 64, 64) and early feature (160, 64, 64)). The file name is a hash of the source
file (resolved path, size, and a hash of its first and last MiB), the field, the augmentation and
a fingerprint of the encoder weights, so a changed image or a different encoder never reads stale
features. The file's content, not its modification time: a data set that is copied or
re-provisioned in place (a fresh checkout, a restored backup) keeps its entries.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.sam.sam import Sam
from engine.train.augment import Augmentation
from engine.train.data import ObjectSample, SlidePool, field_key, load_patches
from engine.wsi_sam import PatchFeatures, WsiSam

CACHE_FORMAT = "wsi-sam-features/1"


def encoder_fingerprint(model: WsiSam | Sam) -> str:
    """Short hash of a few encoder tensors and the encoder's precision.

    Different weights -> different cache entries; so does a half-precision encoder (bf16 features
    differ from f32 ones by ~2e-4 in cosine), while torch and OpenVINO in f32 share entries.
    """
    sam: Any = getattr(model, "sam", model)  # a WsiSam (or a stand-in with its interface), a Sam
    digest = hashlib.sha256()
    params = list(sam.image_encoder.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        digest.update(p.detach().float().cpu().numpy().tobytes())
    backend = getattr(sam, "encoder_backend", None)
    precision = getattr(backend, "precision", "f32") if backend is not None else "f32"
    if precision != "f32":
        digest.update(precision.encode())
    return digest.hexdigest()[:16]


CONTENT_SPAN = 1 << 20  # bytes hashed at each end of a source file


def source_stamp(path: Path) -> str:
    """Resolved path, size and a hash of the first and last MiB of ``path``."""
    try:
        resolved = path.resolve()
        stat = resolved.stat()
        return _content_stamp(str(resolved), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return str(path)


@functools.lru_cache(maxsize=4096)
def _content_stamp(resolved: str, size: int, mtime_ns: int) -> str:
    # mtime_ns only keys the memo (a rewritten file is hashed again); it is not in the stamp
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        digest.update(f.read(CONTENT_SPAN))
        if size > CONTENT_SPAN:
            f.seek(max(CONTENT_SPAN, size - CONTENT_SPAN))
            digest.update(f.read(CONTENT_SPAN))
    return f"{resolved}|{size}|{digest.hexdigest()[:32]}"


def save_atomically(payload: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``: a
    reader (or a killed run) never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class FeatureCache:
    """Encoder outputs of fields, on disk under ``root`` (in memory only when ``root`` is None).

    ``encoder_calls`` counts the patches this cache had to encode (two per missed field).
    """

    root: Path | None
    model: WsiSam
    encode_batch: int = 2
    encoder_calls: int = 0
    hits: int = 0
    _memory: dict[str, tuple[PatchFeatures, PatchFeatures]] = field(default_factory=dict)
    _fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.root is not None:
            self.root = Path(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
        self._fingerprint = encoder_fingerprint(self.model)

    def key(self, sample: ObjectSample, augmentation: Augmentation) -> str:
        text = "|".join(
            (
                CACHE_FORMAT,
                self._fingerprint,
                source_stamp(sample.source),
                field_key(sample.field),
                augmentation.key(),
            )
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.pt"

    def contains(self, key: str) -> bool:
        if key in self._memory:
            return True
        return self.root is not None and self._path(key).is_file()

    def load(self, key: str) -> tuple[PatchFeatures, PatchFeatures] | None:
        """HR and LR features (float16, batch 1) for a key, or None when not cached."""
        if key in self._memory:
            return self._memory[key]
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated file from an interrupted run: recompute it
            return None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return None
        return (
            PatchFeatures(data["hr_embedding"], data["hr_early"]),
            PatchFeatures(data["lr_embedding"], data["lr_early"]),
        )

    def store(self, key: str, hr: PatchFeatures, lr: PatchFeatures) -> None:
        hr, lr = hr.to("cpu").half(), lr.to("cpu").half()
        if self.root is None:
            self._memory[key] = (hr, lr)
            return
        path = self._path(key)
        payload = {
            "format": CACHE_FORMAT,
            "hr_embedding": hr.embedding.contiguous(),
            "hr_early": hr.early.contiguous(),
            "lr_embedding": lr.embedding.contiguous(),
            "lr_early": lr.early.contiguous(),
        }
        save_atomically(payload, path)

    def features(
        self, sample: ObjectSample, augmentation: Augmentation, pool: SlidePool
    ) -> tuple[PatchFeatures, PatchFeatures]:
        """HR and LR features of a sample under an augmentation, encoding only on a miss."""
        key = self.key(sample, augmentation)
        cached = self.load(key)
        if cached is not None:
            self.hits += 1
            return cached
        hr_image, lr_image = load_patches(sample, pool)
        images = np.stack([augmentation.apply_image(hr_image), augmentation.apply_image(lr_image)])
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        parts = [
            self.model.encode(batch[i : i + self.encode_batch])
            for i in range(0, 2, self.encode_batch)
        ]
        encoded = PatchFeatures.cat(parts) if len(parts) > 1 else parts[0]
        self.encoder_calls += 2
        hr, lr = encoded[0], encoded[1]
        self.store(key, hr, lr)
        stored = self.load(key)
        assert stored is not None
        return stored
