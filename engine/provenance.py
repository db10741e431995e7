"""Where an object came from: model, heads, prompt, field, predicted IoU, version, time.

A :class:`Provenance` goes with every object the app or the command line makes. It splits into
what QuPath can show and filter: numbers as measurements (:meth:`Provenance.measurements`, e.g.
"WSI-SAM predicted IoU") and text as object metadata (:meth:`Provenance.metadata`, keys starting
with "wsi-sam "). Both are plain dicts, so the QuPath bridge writes them with the object to
GeoJSON (``measurements`` / ``metadata``) and into projects; nothing here imports the bridge.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "MEASUREMENT_PREFIX",
    "METADATA_PREFIX",
    "Provenance",
    "heads_identity",
    "read_provenance",
]

MEASUREMENT_PREFIX = "WSI-SAM "
METADATA_PREFIX = "wsi-sam "
MODEL_NAMES = {"wsi-sam": "WSI-SAM", "sam": "SAM"}


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def heads_identity(model: Any, mode: str = "wsi-sam") -> tuple[str, str]:
    """(name, sha256) of the heads a model runs with: the checkpoint's file name and hash.

    Plain SAM uses no heads: ("none", ""). Fresh (untrained) heads: ("fresh", "").
    """
    if mode == "sam":
        return "none", ""
    metadata = getattr(model, "metadata", None) or {}
    path = metadata.get("path")
    if not path:
        return "fresh", ""
    try:
        stat = os.stat(path)
        return Path(path).name, _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return Path(path).name, ""


@dataclass
class Provenance:
    """The making of one object.

    Attributes:
        model: "WSI-SAM" or "SAM".
        heads: the heads checkpoint's name ("none" for SAM, "fresh" for untrained heads).
        heads_sha256: the checkpoint file's sha256 ("" when there is none).
        prompt_kind: "box", "points", "box+points", "refine" (box + own mask [+ points]),
            "everything" (one point of a grid) or "instances" (found by an instance decoder,
            whose name and sha256 are then in ``heads`` / ``heads_sha256``).
        prompt: the prompt in level-0 pixels: {"box": [x0, y0, x1, y1], "points": [[x, y], ...],
            "labels": [1, 0, ...]} (only the keys that apply).
        field_magnification: the HR patch's magnification (None when the slide's is unknown).
        field_downsample: level-0 pixels per HR pixel.
        predicted_iou: the decoder's predicted IoU of the mask.
        stability: the stability score (segment-everything only), or None.
        app_version: the version of the program that made the object.
        time: ISO 8601 UTC time of making.
    """

    model: str
    heads: str
    heads_sha256: str
    prompt_kind: str
    prompt: dict[str, Any]
    field_magnification: float | None
    field_downsample: float
    predicted_iou: float
    stability: float | None = None
    app_version: str = ""
    time: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )

    @classmethod
    def create(
        cls,
        model: Any,
        mode: str,
        prompt_kind: str,
        *,
        field: Any,
        predicted_iou: float,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        stability: float | None = None,
        app_version: str = "",
    ) -> Provenance:
        """Provenance of a mask made by ``model`` (a WsiSam) in ``mode`` on ``field``."""
        heads, sha = heads_identity(model, mode)
        prompt: dict[str, Any] = {}
        if box is not None:
            prompt["box"] = [round(float(v), 1) for v in box]
        if points is not None and len(points) > 0:
            prompt["points"] = [[round(float(x), 1), round(float(y), 1)] for x, y in points]
            prompt["labels"] = [
                int(v) for v in (labels if labels is not None else [1] * len(points))
            ]
        if not app_version:
            from engine import __version__

            app_version = f"wsi-sam-engine {__version__}"
        return cls(
            model=MODEL_NAMES.get(mode, mode),
            heads=heads,
            heads_sha256=sha,
            prompt_kind=prompt_kind,
            prompt=prompt,
            field_magnification=field.hr_magnification,
            field_downsample=float(field.hr_downsample),
            predicted_iou=float(predicted_iou),
            stability=None if stability is None else float(stability),
            app_version=app_version,
        )

    @classmethod
    def from_decoder(
        cls,
        name: str,
        sha256: str,
        *,
        field: Any,
        score: float,
        refined_with: str | None = None,
        app_version: str = "",
    ) -> Provenance:
        """Provenance of an object an instance decoder found (``prompt_kind`` "instances"):
        the decoder's name and file hash stand where a prompt's heads do, and ``score`` is the
        object's mean foreground probability. ``refined_with``: the WSI-SAM heads that refined
        its outline, if any."""
        if not app_version:
            from engine import __version__

            app_version = f"wsi-sam-engine {__version__}"
        return cls(
            model="instance decoder" + (f" + WSI-SAM ({refined_with})" if refined_with else ""),
            heads=name,
            heads_sha256=sha256,
            prompt_kind="instances",
            prompt={},
            field_magnification=field.hr_magnification,
            field_downsample=float(field.hr_downsample),
            predicted_iou=float(score),
            app_version=app_version,
        )

    @property
    def from_instances(self) -> bool:
        return self.prompt_kind == "instances"

    def measurements(self) -> dict[str, float]:
        """Numbers for QuPath's measurement table (filterable there)."""
        score = "foreground probability" if self.from_instances else "predicted IoU"
        out = {
            f"{MEASUREMENT_PREFIX}{score}": self.predicted_iou,
            f"{MEASUREMENT_PREFIX}field downsample": self.field_downsample,
        }
        if self.field_magnification is not None:
            out[f"{MEASUREMENT_PREFIX}field magnification"] = float(self.field_magnification)
        if self.stability is not None:
            out[f"{MEASUREMENT_PREFIX}stability"] = self.stability
        return out

    def metadata(self) -> dict[str, str]:
        """Text for the object's metadata (QuPath keeps it on annotations)."""
        made_by = "decoder" if self.from_instances else "heads"
        return {
            f"{METADATA_PREFIX}model": self.model,
            f"{METADATA_PREFIX}{made_by}": self.heads,
            f"{METADATA_PREFIX}{made_by} sha256": self.heads_sha256,
            f"{METADATA_PREFIX}prompt kind": self.prompt_kind,
            f"{METADATA_PREFIX}prompt": json.dumps(self.prompt, separators=(",", ":")),
            f"{METADATA_PREFIX}version": self.app_version,
            f"{METADATA_PREFIX}time": self.time,
        }

    def apply(self, measurements: dict[str, float], metadata: dict[str, str]) -> None:
        """Write into an object's measurements and metadata in place, replacing earlier
        provenance (a refined object keeps only its latest making)."""
        for key in [k for k in measurements if k.startswith(MEASUREMENT_PREFIX)]:
            del measurements[key]
        for key in [k for k in metadata if k.startswith(METADATA_PREFIX)]:
            del metadata[key]
        measurements.update(self.measurements())
        metadata.update(self.metadata())


def read_provenance(measurements: dict[str, float], metadata: dict[str, str]) -> Provenance | None:
    """The provenance written by :meth:`Provenance.apply`, or None when there is none."""
    prefix = METADATA_PREFIX
    if f"{prefix}model" not in metadata:
        return None
    mp = MEASUREMENT_PREFIX
    try:
        prompt = json.loads(metadata.get(f"{prefix}prompt", "{}"))
    except ValueError:
        prompt = {}
    magnification = measurements.get(f"{mp}field magnification")
    made_by = "decoder" if metadata.get(f"{prefix}prompt kind") == "instances" else "heads"
    score = measurements.get(f"{mp}predicted IoU", measurements.get(f"{mp}foreground probability"))
    return Provenance(
        model=metadata[f"{prefix}model"],
        heads=metadata.get(f"{prefix}{made_by}", ""),
        heads_sha256=metadata.get(f"{prefix}{made_by} sha256", ""),
        prompt_kind=metadata.get(f"{prefix}prompt kind", ""),
        prompt=prompt if isinstance(prompt, dict) else {},
        field_magnification=None if magnification is None else float(magnification),
        field_downsample=float(measurements.get(f"{mp}field downsample", float("nan"))),
        predicted_iou=float("nan") if score is None else float(score),
        stability=measurements.get(f"{mp}stability"),
        app_version=metadata.get(f"{prefix}version", ""),
        time=metadata.get(f"{prefix}time", ""),
    )
