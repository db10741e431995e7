"""The batch manifest (what is complete) and ``summary.csv`` (what happened).

The manifest is an append-only journal, ``manifest.jsonl`` in the output folder: one JSON line
per finished slide (done or failed), written and fsync'ed as the slide finishes, so a run killed
at any moment (Ctrl+C, kill, power loss) loses at most the slides in flight; a torn last line is
ignored when the journal is read. The last line of a key wins. Each line records the input
fingerprint (:func:`slide_fingerprint` of the slide plus the sha256 of its prompts file) and the
settings hash (:func:`settings_sha256`), and the sha256 of the output written. A slide is
complete when its last line says ``done`` with the same input fingerprint and settings and its
output is still there unchanged (:meth:`Manifest.complete`); a rerun skips it. ``--force``
ignores the manifest. Reading compacts the journal (one line per key, written atomically).

``summary.csv`` is derived from it: one row per slide of the run (slide, objects_in, objects_out,
seconds, status, error, note, output), rewritten atomically as slides finish (at most once per
``min_interval`` seconds, and at the end). Status: ``done``, ``failed``, ``skipped`` (complete
from an earlier run: its figures are that run's) or ``pending`` (not finished: the run was
interrupted).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine._files import atomic_write_bytes
from engine.batch.jobs import SlideOutcome

__all__ = [
    "MANIFEST_NAME",
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "Manifest",
    "file_sha256",
    "settings_sha256",
    "slide_fingerprint",
    "write_summary",
]

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (
    "slide",
    "objects_in",
    "objects_out",
    "seconds",
    "status",
    "error",
    "note",
    "output",
)
# bytes read at each end of a slide for its fingerprint
_FINGERPRINT_BYTES = 1 << 20
# the version of what a manifest line means; a change makes every slide incomplete
MANIFEST_FORMAT = 1


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def slide_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a (possibly many-gigabyte) slide file: its size, modification time
    and the sha256 of its first and last MiB. A slide replaced or rewritten changes it; reading
    a whole cohort's slides to hash them would take longer than segmenting some of them.

    A multi-file slide (MRXS, VMS) is fingerprinted by its index file only. A missing or
    unreadable file gives a fingerprint of its own (the run then records its error).
    """
    p = Path(path)
    digest = hashlib.sha256()
    try:
        stat = p.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
        with open(p, "rb") as handle:
            digest.update(handle.read(_FINGERPRINT_BYTES))
            if stat.st_size > 2 * _FINGERPRINT_BYTES:
                handle.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
                digest.update(handle.read(_FINGERPRINT_BYTES))
    except OSError as exc:
        digest.update(f"unreadable:{type(exc).__name__}:{exc.errno}".encode())
    return digest.hexdigest()


def settings_sha256(identity: Mapping[str, Any]) -> str:
    """The hash of the settings that change results (engine settings, work, conventions)."""
    text = json.dumps({"format": MANIFEST_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Manifest:
    """The journal of one output folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        lines = text.splitlines()
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                self.torn_lines += 1  # a line cut by a kill or a power loss
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                self.entries[entry["key"]] = entry
        if self.torn_lines or len(lines) > len(self.entries):
            self.compact()

    def compact(self) -> None:
        """Rewrite the journal with one line per key (atomically)."""
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.entries.values())
        atomic_write_bytes(self.path, data.encode("utf-8"))

    def complete(self, key: str, input_sha256: str, settings: str) -> bool:
        """Whether ``key`` is done with these inputs and settings and its output is intact."""
        entry = self.entries.get(key)
        if entry is None or entry.get("status") != "done":
            return False
        if entry.get("input_sha256") != input_sha256 or entry.get("settings_sha256") != settings:
            return False
        output, expected = entry.get("output"), entry.get("output_sha256")
        if not output or not Path(output).is_file():
            return False
        if expected:
            try:
                return bool(file_sha256(output) == expected)
            except OSError:
                return False
        return True

    def previous_ids(self, key: str) -> list[str]:
        """Ids of the objects the last run of ``key`` wrote."""
        entry = self.entries.get(key) or {}
        ids = entry.get("ids") or []
        return [str(i) for i in ids]

    def record(self, outcome: SlideOutcome, settings: str) -> None:
        """Append a finished slide (flushed and fsync'ed before returning)."""
        entry = dataclasses.asdict(outcome)
        entry["settings_sha256"] = settings
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.entries[outcome.key] = entry
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            with contextlib.suppress(OSError):
                os.fsync(handle.fileno())


def _row(key: str, entry: Mapping[str, Any] | None, status: str | None, slide: str) -> list[Any]:
    if entry is None:
        return [slide, "", "", "", "pending", "", "", ""]
    return [
        entry.get("slide", slide),
        entry.get("objects_in", ""),
        entry.get("objects_out", ""),
        f"{float(entry.get('seconds', 0.0)):.2f}",
        status or entry.get("status", ""),
        entry.get("error", ""),
        entry.get("note", ""),
        entry.get("output", ""),
    ]


def write_summary(
    path: str | os.PathLike[str],
    order: Iterable[tuple[str, str]],
    entries: Mapping[str, Mapping[str, Any]],
    skipped: Iterable[str] = (),
) -> None:
    """Write ``summary.csv`` atomically: one row per (key, slide) of ``order``, in that order.

    ``entries``: the finished slides by key (the manifest's lines); ``skipped``: keys that were
    complete before this run. Keys without an entry are ``pending``.
    """
    skipped = set(skipped)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for key, slide in order:
        entry = entries.get(key)
        writer.writerow(_row(key, entry, "skipped" if key in skipped else None, slide))
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
