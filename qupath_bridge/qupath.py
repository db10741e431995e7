"""Finding QuPath (through paquo) without starting Java or downloading anything.

paquo looks for QuPath in ``PAQUO_QUPATH_DIR`` (or ``qupath_dir`` in ``.paquo.toml``), then in
the usual install folders. This module asks paquo's finder once, reads the version from the
QuPath jars, and only starts the Java VM (by importing ``paquo.projects``) when a project
operation actually needs QuPath.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import QuPathNotFoundError

_HOW_TO_POINT = (
    "install QuPath (0.4 to 0.6) and point paquo at it with the environment variable "
    "PAQUO_QUPATH_DIR=/path/to/QuPath (or qupath_dir in .paquo.toml)"
)


@dataclass(frozen=True)
class QuPathStatus:
    """Whether QuPath can be used through paquo.

    Attributes:
        available: a QuPath installation was found.
        version: its version (e.g. ``"0.5.1"``) when it could be read from the jars, else None.
        path: the QuPath installation folder, or None.
        message: one sentence for the user saying what was found or what to do.
    """

    available: bool
    version: str | None
    path: Path | None
    message: str


_JAR_VERSION = re.compile(r"^qupath-(?:core|gui-fx|app)-(\d+\.\d+\.\d+(?:-[\w.]+)?)\.jar$")


def _version_from_jars(app_dir: Path) -> str | None:
    try:
        names = [p.name for p in app_dir.iterdir()]
    except OSError:
        return None
    for name in sorted(names):
        match = _JAR_VERSION.match(name)
        if match:
            return match.group(1)
    return None


def _detect() -> QuPathStatus:
    try:
        from paquo._config import settings, to_kwargs
        from paquo.jpype_backend import find_qupath
    except Exception as exc:  # paquo or jpype missing or broken
        return QuPathStatus(
            False, None, None, f"QuPath cannot be used because paquo failed to load ({exc})."
        )
    try:
        kwargs: dict[str, Any] = to_kwargs(settings)
        info = find_qupath(**kwargs)
    except Exception as exc:
        where = kwargs.get("qupath_dir") if "kwargs" in locals() else None
        detail = f" in {where}" if where else ""
        return QuPathStatus(
            False,
            None,
            None,
            f"No QuPath installation was found{detail} ({exc}): {_HOW_TO_POINT}.",
        )
    app_dir = Path(info.app_dir)
    qupath_dir = app_dir.parent.parent if app_dir.parent.name == "lib" else app_dir.parent
    version = _version_from_jars(app_dir)
    shown = f"QuPath {version}" if version else "QuPath (version unknown)"
    return QuPathStatus(True, version, qupath_dir, f"{shown} found at {qupath_dir}.")


@functools.cache
def _cached_status() -> QuPathStatus:
    return _detect()


def qupath_status(refresh: bool = False) -> QuPathStatus:
    """Detect QuPath once (cached); ``refresh=True`` looks again (e.g. after setting
    ``PAQUO_QUPATH_DIR``; paquo's own settings are read when paquo is first imported)."""
    if refresh:
        _cached_status.cache_clear()
    return _cached_status()


def no_qupath_message(action: str) -> str:
    """The one-sentence explanation for a project operation that needs QuPath."""
    return (
        f"{action} needs QuPath, which was not found: {_HOW_TO_POINT}, "
        "or export the annotations as QuPath GeoJSON instead, "
        "which QuPath imports by drag and drop."
    )


def load_paquo() -> ModuleType:
    """Import ``paquo.projects`` (this starts the Java VM) or raise QuPathNotFoundError."""
    status = qupath_status()
    if not status.available:
        raise QuPathNotFoundError(no_qupath_message("This operation on a QuPath project"))
    try:
        return importlib.import_module("paquo.projects")
    except Exception as exc:
        raise QuPathNotFoundError(
            f"QuPath was found at {status.path} but could not be started through paquo ({exc}): "
            f"{_HOW_TO_POINT}, or export the annotations as QuPath GeoJSON instead."
        ) from exc
