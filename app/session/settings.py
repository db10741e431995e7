"""Per-user settings: recent files, the user's class list, the model's backend (``QSettings``).

With ``WSI_SAM_DATA_DIR`` set (tests, portable installs) the settings live in an ini file there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from app.session.classes import ClassEntry

ORGANIZATION = "WSI-SAM Studio"
APPLICATION = "WSI-SAM Studio"
MAX_RECENT = 10


def app_settings() -> QSettings:
    override = os.environ.get("WSI_SAM_DATA_DIR")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return QSettings(str(Path(override) / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(ORGANIZATION, APPLICATION)


def recent_files() -> list[str]:
    value: Any = app_settings().value("recentFiles", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or [])]


def add_recent_file(path: str) -> list[str]:
    path = str(Path(path).expanduser().resolve())
    items = [path, *(p for p in recent_files() if p != path)][:MAX_RECENT]
    settings = app_settings()
    settings.setValue("recentFiles", items)
    settings.sync()
    return items


def clear_recent_files() -> None:
    settings = app_settings()
    settings.remove("recentFiles")
    settings.sync()


def saved_classes() -> list[ClassEntry] | None:
    raw = str(app_settings().value("classes", "") or "")
    if not raw:
        return None
    try:
        entries = [
            ClassEntry(str(n), (int(c[0]), int(c[1]), int(c[2]))) for n, c in json.loads(raw)
        ]
    except (ValueError, TypeError, IndexError, KeyError):
        return None  # unreadable settings: fall back to the defaults
    return entries or None


def save_classes(classes: list[ClassEntry]) -> None:
    settings = app_settings()
    settings.setValue("classes", json.dumps([[c.name, list(c.color)] for c in classes]))
    settings.sync()


def engine_preference() -> tuple[str, str]:
    """(backend, precision) the user chose for the model; ("auto", "auto") until then."""
    settings = app_settings()
    backend = str(settings.value("engine/backend", "auto") or "auto")
    precision = str(settings.value("engine/precision", "auto") or "auto")
    return backend, precision


def save_engine_preference(backend: str, precision: str) -> None:
    settings = app_settings()
    settings.setValue("engine/backend", backend)
    settings.setValue("engine/precision", precision)
    settings.sync()


def _project_key(project: str | None) -> str:
    """A settings key for a project (its resolved path, hashed); "" for no project."""
    if not project:
        return "heads/no-project"
    import hashlib

    resolved = str(Path(project).expanduser().resolve())
    return "heads/project-" + hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:16]


def heads_choice(project: str | None) -> str | None:
    """The heads chosen for ``project`` (a heads file path, or "sam" for plain SAM), or None."""
    value = app_settings().value(_project_key(project), "")
    return str(value) if value else None


def save_heads_choice(project: str | None, choice: str) -> None:
    settings = app_settings()
    settings.setValue(_project_key(project), choice)
    settings.sync()
