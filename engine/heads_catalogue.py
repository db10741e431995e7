"""The WSI-SAM heads a user can choose: shipped, in the user's heads folder, in a QuPath project.

Three places are searched, in this order:

- ``shipped``: the heads installed with the package (``engine/heads/*.pt``),
- ``user``: the user's heads folder (:func:`user_heads_dir`; ``WSI_SAM_HEADS_DIR`` overrides it),
- ``project``: ``<project>/wsi-sam/heads/`` of a QuPath project (what "Train heads from this
  project" writes).

Each ``*.pt`` file there is read and checked (format, keys and shapes of both heads, finite
values); a file that is not WSI-SAM heads (a foreign checkpoint, a damaged file) is reported in
:attr:`HeadsCatalogue.skipped` with the reason and left out. An entry's name is its file stem; a
stem found in two places is qualified by the place (``project:NAME``). :func:`resolve_heads`
turns what the user typed for ``--heads`` (a path or a catalogue name) into a file.

Evaluation figures come from the heads' metadata (``evaluation`` or ``validation``: what
``wsi-sam train --holdout`` writes) or from a card beside the file, ``NAME.card.json``, which
holds the figures and the sha256 of the file it describes (a card that does not match the file
is ignored): the shipped heads carry their model card's test figures that way, so that the heads
file itself, and everything keyed by its hash, stays unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine._files import atomic_write_bytes
from engine.wsi_sam import HeadsError, WsiSamHead, default_heads_path, read_heads_checkpoint

HEADS_DIR_ENV = "WSI_SAM_HEADS_DIR"
DATA_DIR_ENV = "WSI_SAM_USER_DATA_DIR"
PLACES = ("shipped", "user", "project")
CARD_SUFFIX = ".card.json"


def user_data_root() -> Path:
    """The user's data folder for WSI-SAM Studio (``WSI_SAM_USER_DATA_DIR`` overrides it).

    The sibling of the cache folder (``engine.backends.openvino_backend.cache_root``): data a
    user keeps (their heads), where the cache holds what can be rebuilt.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
        return base / "wsi-sam-studio"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "wsi-sam-studio"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / (
        "wsi-sam-studio"
    )


def user_heads_dir() -> Path:
    """The user's heads folder (``WSI_SAM_HEADS_DIR`` overrides it); it may not exist yet."""
    override = os.environ.get(HEADS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return user_data_root() / "heads"


def project_root(project: str | Path) -> Path:
    """The folder of a QuPath project given as its ``project.qpproj`` or its folder."""
    path = Path(project)
    return path.parent if path.suffix.lower() == ".qpproj" or path.is_file() else path


def project_heads_dir(project: str | Path) -> Path:
    """``<project>/wsi-sam/heads``: where heads trained from the project are written."""
    return project_root(project) / "wsi-sam" / "heads"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class HeadsEntry:
    """One usable heads file."""

    name: str
    path: Path
    place: str  # "shipped" | "user" | "project"
    sha256: str
    size: int
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    #: evaluation figures: {"split": ..., "n_objects": ..., "dice": {model: {prompt: dice}}};
    #: for an instance decoder {"split": ..., "images": ..., "scores": {name: value}}
    figures: dict[str, Any] = field(default_factory=dict, compare=False)
    #: "heads" (WSI-SAM's HR/LR heads) or "instances" (an instance decoder)
    kind: str = "heads"

    @property
    def trained_on(self) -> str:
        """What the heads were trained on, in a few words ("GlaS: 70 objects from 10 files")."""
        meta = self.metadata
        what = str(meta.get("trained_on") or "unknown data")
        data = meta.get("data")
        if isinstance(data, dict) and data.get("n_objects"):
            what += f": {data['n_objects']} objects from {data.get('n_sources', '?')} file(s)"
        classes = meta.get("classes")
        if classes:
            what += f"; classes {', '.join(str(c) for c in classes)}"
        return what

    def figures_text(self) -> str:
        """One line per model: "WSI-SAM box 82.6, 3 pts 58.6 | SAM box 81.1, ..." or ""."""
        if self.kind == "instances":
            return self._instance_figures_text()
        dice = self.figures.get("dice") if isinstance(self.figures, dict) else None
        if not isinstance(dice, dict) or not dice:
            return ""
        parts = []
        for model, cells in dice.items():
            if not isinstance(cells, dict):
                continue
            text = ", ".join(
                f"{'box' if p == 'box' else f'{p} pts'} {float(v):.1f}" for p, v in cells.items()
            )
            parts.append(f"{model}: {text}")
        where = self.figures.get("split") or "evaluation"
        n = self.figures.get("n_objects")
        head = f"Dice % on {where}" + (f" ({n} objects)" if n else "")
        return head + "\n" + "\n".join(parts)

    def _instance_figures_text(self) -> str:
        scores = self.figures.get("scores") if isinstance(self.figures, dict) else None
        if not isinstance(scores, dict) or not scores:
            return ""
        names = {
            "glas_f1": "GlaS F1",
            "object_dice": "object Dice",
            "aji": "AJI",
            "pq": "PQ",
            "f1_iou50": "F1 @ IoU 0.5",
        }
        text = ", ".join(
            f"{label} {float(scores[key]):.3f}" for key, label in names.items() if key in scores
        )
        where = self.figures.get("split") or "evaluation"
        images = self.figures.get("images")
        return f"on {where}" + (f" ({images} images)" if images else "") + ": " + text

    def describe(self) -> str:
        """A few lines for a tooltip or ``wsi-sam heads list``."""
        what = " instance decoder" if self.kind == "instances" else ""
        lines = [
            f"{self.name} ({self.place}{what}): {self.path}",
            f"trained on {self.trained_on}",
        ]
        settings = [
            f"{k} {self.metadata[k]}"
            for k in ("epochs", "prompt_mixing", "augment_variants", "magnification")
            if self.metadata.get(k) is not None
        ]
        if settings:
            lines.append("settings: " + ", ".join(settings))
        figures = self.figures_text()
        lines.append(figures if figures else "no evaluation figures in its metadata")
        lines.append(f"sha256 {self.sha256[:16]}…, {self.size / 1e6:.1f} MB")
        return "\n".join(lines)


@dataclass(frozen=True)
class SkippedHeads:
    """A ``*.pt`` file in a heads folder that is not usable heads, and why."""

    path: Path
    place: str
    reason: str


@dataclass
class HeadsCatalogue:
    """WSI-SAM heads (``entries``), instance decoders (``decoders``), and what was skipped."""

    entries: list[HeadsEntry] = field(default_factory=list)
    skipped: list[SkippedHeads] = field(default_factory=list)
    decoders: list[HeadsEntry] = field(default_factory=list)

    def find_decoder(self, name: str) -> HeadsEntry | None:
        """The instance decoder called ``name`` (or ``place:stem``, or a unique stem)."""
        for entry in self.decoders:
            if entry.name == name or f"{entry.place}:{entry.path.stem}" == name:
                return entry
        stems = [e for e in self.decoders if e.path.stem == name]
        return stems[0] if len(stems) == 1 else None

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def find(self, name: str) -> HeadsEntry | None:
        """The entry called ``name`` (or ``place:stem``, or a stem that is unique)."""
        for entry in self.entries:
            if entry.name == name or f"{entry.place}:{entry.path.stem}" == name:
                return entry
        stems = [e for e in self.entries if e.path.stem == name]
        return stems[0] if len(stems) == 1 else None

    def find_path(self, path: str | Path) -> HeadsEntry | None:
        try:
            wanted = Path(path).resolve()
        except OSError:
            return None
        for entry in self.entries:
            if entry.path.resolve() == wanted:
                return entry
        return None


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    head = WsiSamHead().state_dict()
    return {
        f"{prefix}.{key}": tuple(value.shape)
        for prefix in ("hr_head", "lr_head")
        for key, value in head.items()
    }


_EXPECTED: dict[str, tuple[int, ...]] | None = None


def check_heads_file(path: Path) -> dict[str, Any]:
    """The metadata of a heads file; :class:`HeadsError` with the reason when it is not one
    that fits WSI-SAM (format, keys, shapes, finite values)."""
    global _EXPECTED
    payload = read_heads_checkpoint(path)
    if _EXPECTED is None:
        _EXPECTED = _expected_shapes()
    state = payload["state_dict"]
    missing = sorted(set(_EXPECTED) - set(state))
    unexpected = sorted(set(state) - set(_EXPECTED))
    if missing or unexpected:
        raise HeadsError(
            f"{path}: heads checkpoint does not fit this model "
            f"(missing: {missing[:4]}, unexpected: {unexpected[:4]})"
        )
    for key, shape in _EXPECTED.items():
        got = tuple(getattr(state[key], "shape", ()))
        if got != shape:
            raise HeadsError(f"{path}: {key} has shape {got}, the model expects {shape}")
    metadata = payload.get("metadata")
    return dict(metadata) if isinstance(metadata, dict) else {}


def read_card(path: Path, sha256: str) -> dict[str, Any]:
    """The figures of ``NAME.card.json`` beside ``path`` when it describes this very file."""
    card = path.with_name(path.stem + CARD_SUFFIX)
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("sha256") != sha256:
        return {}
    figures = data.get("evaluation")
    return figures if isinstance(figures, dict) else {}


def _figures(metadata: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    for key in ("evaluation", "validation"):
        value = metadata.get(key)
        if isinstance(value, dict) and (value.get("dice") or value.get("scores")):
            return value
    return card


def _heads_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.glob("*.pt") if not p.name.endswith(".state.pt"))
    except OSError:
        return []


def build_catalogue(
    project: str | Path | None = None,
    user_dir: str | Path | None = None,
    shipped_dir: str | Path | None = None,
) -> HeadsCatalogue:
    """Every usable heads file of the three places (``project`` may be None)."""
    places: list[tuple[str, Path]] = [
        ("shipped", Path(shipped_dir) if shipped_dir else default_heads_path().parent),
        ("user", Path(user_dir) if user_dir else user_heads_dir()),
    ]
    if project is not None:
        places.append(("project", project_heads_dir(project)))
    from engine.instances.checkpoint import DecoderError, read_decoder, shipped_decoders_dir

    catalogue = HeadsCatalogue()
    found: list[tuple[str, Path, dict[str, Any]]] = []
    found_decoders: list[tuple[str, Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    # instance decoders share the user's and the project's folders with heads
    scan = [*places[:1], ("shipped", shipped_decoders_dir()), *places[1:]]
    for place, folder in scan:
        for path in _heads_files(folder):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                metadata = check_heads_file(path)
            except HeadsError as exc:
                try:  # not heads: an instance decoder, perhaps
                    decoder = read_decoder(path)
                except DecoderError:
                    reason = str(exc).removeprefix(f"{path}: ")
                    catalogue.skipped.append(SkippedHeads(path, place, reason))
                    continue
                metadata = dict(decoder.metadata)
                metadata["magnification"] = decoder.magnification
                found_decoders.append((place, path, metadata))
                continue
            except OSError as exc:
                catalogue.skipped.append(SkippedHeads(path, place, f"cannot be read: {exc}"))
                continue
            found.append((place, path, metadata))
    catalogue.entries.extend(_entries(found, "heads"))
    catalogue.decoders.extend(_entries(found_decoders, "instances"))
    return catalogue


def _entries(found: list[tuple[str, Path, dict[str, Any]]], kind: str) -> list[HeadsEntry]:
    stems = [path.stem for _, path, _ in found]
    entries = []
    for place, path, metadata in found:
        name = path.stem if stems.count(path.stem) == 1 or place == "shipped" else None
        if name is None:
            name = f"{place}:{path.stem}"
        sha = file_sha256(path)
        entries.append(
            HeadsEntry(
                name=name,
                path=path,
                place=place,
                sha256=sha,
                size=path.stat().st_size,
                metadata=metadata,
                figures=_figures(metadata, read_card(path, sha)),
                kind=kind,
            )
        )
    return entries


def _looks_like_path(value: str) -> bool:
    return value.endswith(".pt") or os.sep in value or "/" in value or Path(value).exists()


def resolve_heads(
    value: str | Path | None,
    project: str | Path | None = None,
    catalogue: HeadsCatalogue | None = None,
) -> str | Path | None:
    """What ``--heads`` means: None (the default heads), ``"none"`` (fresh heads = SAM), a file,
    or a catalogue name resolved to its file. Raises :class:`HeadsError` for an unknown name,
    listing the names there are."""
    if value is None:
        return None
    text = str(value)
    if text.lower() == "none":
        return "none"
    if _looks_like_path(text):
        return Path(text)
    catalogue = catalogue or build_catalogue(project=project)
    entry = catalogue.find(text)
    if entry is None:
        names = ", ".join(catalogue.names()) or "none"
        raise HeadsError(
            f"no heads called {text!r}: give a heads file (.pt) or one of: {names} "
            "(wsi-sam heads list)"
        )
    return entry.path


def resolve_decoder(
    value: str | Path, project: str | Path | None = None, catalogue: HeadsCatalogue | None = None
) -> Path:
    """What ``--instances`` means: a decoder file, or a catalogue name resolved to its file.

    Raises :class:`HeadsError` for an unknown name, listing the decoders there are.
    """
    text = str(value)
    if _looks_like_path(text):
        return Path(text)
    catalogue = catalogue or build_catalogue(project=project)
    entry = catalogue.find_decoder(text)
    if entry is None:
        names = ", ".join(e.name for e in catalogue.decoders) or "none"
        raise HeadsError(
            f"no instance decoder called {text!r}: give a decoder file (.pt) or one of: "
            f"{names} (wsi-sam heads list)"
        )
    return entry.path


def write_card(path: Path, evaluation: dict[str, Any], notes: Iterable[str] = ()) -> Path:
    """Write ``NAME.card.json`` beside heads ``path``, tied to the file by its sha256."""
    card = path.with_name(path.stem + CARD_SUFFIX)
    payload = {"sha256": file_sha256(path), "evaluation": evaluation, "notes": list(notes)}
    atomic_write_bytes(card, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))
    return card
