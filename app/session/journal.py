"""Crash journal: every accepted, deleted, reclassified or renamed annotation is appended to a
JSON-lines file (fsync'd) before the user sees it, so a crash or kill loses nothing accepted.

One journal per slide (or per QuPath project image) under ``data_dir()/journal``. Line 1 is a
header; every further line is one edit relative to the annotations the slide was opened with:

    {"op": "add", "row": 3, "feature": {...QuPath GeoJSON feature...}}
    {"op": "remove", "id": "..."}
    {"op": "update", "feature": {...}}

Replaying the edits over those annotations gives the unsaved state. A torn last line (killed
mid-write) is skipped. The journal is cleared after a successful save or export.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.session.annotations import AnnotationStore

JOURNAL_VERSION = 1


def data_dir() -> Path:
    """The per-user data folder (``WSI_SAM_DATA_DIR`` overrides it, e.g. for tests)."""
    override = os.environ.get("WSI_SAM_DATA_DIR")
    if override:
        path = Path(override)
    else:
        from PySide6.QtCore import QStandardPaths

        location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        path = Path(location) if location else Path.home() / ".local" / "share" / "wsi-sam-studio"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slide_key(slide_path: str | os.PathLike[str], entry_id: str | None = None) -> str:
    """What identifies a journal: the slide's absolute path (+ the project entry when in one)."""
    key = str(Path(slide_path).expanduser().resolve())
    return f"{key}#{entry_id}" if entry_id is not None else key


def journal_path_for(key: str, root: Path | None = None) -> Path:
    """Journal file for ``key`` (from ``slide_key``): readable stem + hash of the full key."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key.split("#")[0]).stem)[:40] or "slide"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return (root or data_dir()) / "journal" / f"{stem}-{digest}.jsonl"


def feature_of(annotation: Any) -> dict[str, Any]:
    import qupath_bridge

    feature: dict[str, Any] = qupath_bridge.to_geojson_obj([annotation])["features"][0]
    return feature


def annotation_of(feature: dict[str, Any]) -> Any:
    import qupath_bridge

    return qupath_bridge.read_geojson({"type": "FeatureCollection", "features": [feature]})[0]


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """A journal line as a record, or None when it is damaged (not UTF-8, not JSON, or an edit
    whose feature cannot be read back)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    op = record.get("op")
    if op == "remove":
        return record if isinstance(record.get("id"), str) else None
    if op in ("add", "update"):
        feature = record.get("feature")
        row = record.get("row", 0)
        if not isinstance(feature, dict) or not isinstance(row, int) or isinstance(row, bool):
            return None
        try:
            annotation_of(feature)
        except Exception:
            return None
        return record
    return record


class Journal:
    """Append-only edit log of one slide's unsaved annotations."""

    def __init__(self, path: Path, key: str):
        self.path = Path(path)
        self.key = key
        self._file: Any = None

    @classmethod
    def for_slide(cls, slide_path: str | os.PathLike[str], entry_id: str | None = None) -> Journal:
        key = slide_key(slide_path, entry_id)
        return cls(journal_path_for(key), key)

    # -- reading ---------------------------------------------------------------------------
    def edits(self) -> list[dict[str, Any]]:
        """The recorded edits, in order (the header and damaged lines, such as a torn last line,
        left out)."""
        return [record for record, _raw in self._read()[0]]

    def _read(self) -> tuple[list[tuple[dict[str, Any], bytes]], list[bytes]]:
        """(good edits with their raw lines, damaged raw lines); the header is neither."""
        if not self.path.exists():
            return [], []
        good: list[tuple[dict[str, Any], bytes]] = []
        damaged: list[bytes] = []
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                record = _parse_line(raw)
                if record is None:
                    damaged.append(raw)
                elif record.get("op") in ("add", "remove", "update"):
                    good.append((record, raw))
                elif "journal" not in record:
                    damaged.append(raw)
        return good, damaged

    def repair(self) -> str | None:
        """Set damaged lines aside (a torn last line, bytes a crash or a full disk garbled) so the
        good edits can be restored: the whole file is kept as ``<stem>.damaged-<time>.jsonl``
        beside it and the journal is rewritten with the good lines only. Returns a message for
        the user, or None when nothing was damaged."""
        try:
            good, damaged = self._read()
        except OSError as exc:
            return f"the journal {self.path} cannot be read: {exc.strerror or exc}"
        if not damaged:
            return None
        self.close()
        # A last line without its newline is a write a kill cut short: the user never saw that
        # edit acknowledged, and its bytes are no JSON; it goes without a word.
        torn_only = len(damaged) == 1 and not damaged[0].endswith(b"\n")
        aside = self.path.with_name(f"{self.path.stem}.damaged-{int(time.time())}.jsonl")
        if not torn_only:
            shutil.copyfile(self.path, aside)
        with open(self.path, "rb") as f:
            first = f.readline()
        header = _parse_line(first)
        if header is None or "journal" not in header:
            header = {"journal": JOURNAL_VERSION, "slide": self.key, "started": time.time()}
        lines = [json.dumps(header).encode("utf-8") + b"\n"]
        lines += [raw if raw.endswith(b"\n") else raw + b"\n" for _record, raw in good]
        tmp = self.path.with_name(self.path.name + ".repair.tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if torn_only:
            return None
        return (
            f"{len(damaged)} damaged line(s) of the crash journal were set aside in {aside}; "
            f"the {len(good)} good edit(s) are kept"
        )

    def has_edits(self) -> bool:
        return bool(self.edits())

    def replay(self, base: Iterable[Any] = ()) -> list[Any]:
        """Apply the recorded edits to ``base`` (the annotations the slide was opened with)."""
        items: dict[str, Any] = {a.id: a for a in base}
        for edit in self.edits():
            op = edit["op"]
            if op == "remove":
                items.pop(str(edit.get("id")), None)
                continue
            annotation = annotation_of(edit["feature"])
            if op == "update" and annotation.id in items:
                items[annotation.id] = annotation
            elif op in ("add", "update"):
                pairs = [(k, v) for k, v in items.items() if k != annotation.id]
                row = int(edit.get("row", len(pairs)))
                pairs.insert(max(0, min(row, len(pairs))), (annotation.id, annotation))
                items = dict(pairs)
        return list(items.values())

    # -- writing ---------------------------------------------------------------------------
    def record_add(self, annotation: Any, row: int) -> None:
        self._append({"op": "add", "row": row, "feature": feature_of(annotation)})

    def record_remove(self, annotation_id: str) -> None:
        self._append({"op": "remove", "id": annotation_id})

    def record_update(self, annotation: Any) -> None:
        self._append({"op": "update", "feature": feature_of(annotation)})

    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            if fresh:
                header = {"journal": JOURNAL_VERSION, "slide": self.key, "started": time.time()}
                self._file.write(json.dumps(header) + "\n")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def clear(self) -> None:
        """Forget the edits (they were saved)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def set_aside(self) -> Path | None:
        """Keep the edits in a dated side file instead of deleting them (restore declined)."""
        self.close()
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{self.path.stem}.declined-{int(time.time())}.jsonl")
        os.replace(self.path, target)
        return target


class JournalRecorder:
    """Writes every user edit of ``store`` to ``journal`` as it happens."""

    def __init__(self, store: AnnotationStore, journal: Journal):
        self.store = store
        self.journal = journal
        store.added.connect(self._on_added)
        store.removed.connect(self._on_removed)
        store.changed.connect(self._on_changed)

    def detach(self) -> None:
        self.store.added.disconnect(self._on_added)
        self.store.removed.disconnect(self._on_removed)
        self.store.changed.disconnect(self._on_changed)
        self.journal.close()

    def _on_added(self, annotation_id: str, row: int) -> None:
        self.journal.record_add(self.store.get(annotation_id), row)

    def _on_removed(self, annotation_id: str, _row: int) -> None:
        self.journal.record_remove(annotation_id)

    def _on_changed(self, annotation_id: str) -> None:
        self.journal.record_update(self.store.get(annotation_id))
