"""Safe file handling: atomic writes, writability checks, timestamped backups."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
import time
from pathlib import Path


def is_writable_dir(folder: Path) -> bool:
    """True when files can really be created in ``folder``.

    ``os.access`` alone is not enough: it says yes to root on a ``chmod 555`` folder and cannot
    see read-only mounts, so a probe file is created and removed as well.
    """
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".wsi-sam-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file; on failure the old file is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            with contextlib.suppress(OSError):
                shutil.copymode(path, tmp_name)
        else:
            # mkstemp creates 0600 files; give a new file the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
        remove_stale_temporaries(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def timestamp() -> str:
    """A sortable local timestamp for backup folder names, e.g. ``20250131-142501-123456``."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def make_backup(project_dir: Path, backup_root: Path, entry_ids: list[str], keep: int = 10) -> Path:
    """Copy ``project.qpproj``, ``classifiers/classes.json`` and the data folders of ``entry_ids``
    into a new timestamped folder under ``backup_root``; keep the newest ``keep`` backups.

    Returns the new backup folder.
    """
    backup_dir = backup_root / timestamp()
    backup_dir.mkdir(parents=True, exist_ok=False)
    for relative in ("project.qpproj", "classifiers/classes.json"):
        source = project_dir / relative
        if source.is_file():
            (backup_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, backup_dir / relative)
    for entry_id in entry_ids:
        source = project_dir / "data" / entry_id
        if source.is_dir():
            shutil.copytree(source, backup_dir / "data" / entry_id)
    older = sorted(p for p in backup_root.iterdir() if p.is_dir())[:-keep]
    for old in older:
        shutil.rmtree(old, ignore_errors=True)
    return backup_dir


def restore_backup(project_dir: Path, backup_dir: Path, entry_ids: list[str]) -> None:
    """Put back what :func:`make_backup` saved (used when a write fails half-way)."""
    for relative in ("project.qpproj", "classifiers/classes.json"):
        source = backup_dir / relative
        if source.is_file():
            atomic_write_bytes(project_dir / relative, source.read_bytes())
    for entry_id in entry_ids:
        saved = backup_dir / "data" / entry_id
        target = project_dir / "data" / entry_id
        if saved.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(saved, target)
        elif target.exists():
            # The folder did not exist before the failed write: remove what it left behind.
            shutil.rmtree(target)


# Temporary files of an atomic write are named ``.<name>.<pid>.<random>.tmp``: a run that was
# killed mid-write leaves one, and the next write of the same file removes it once no process of
# that id is alive (or, for names without an id, after STALE_TEMPORARY_SECONDS).
STALE_TEMPORARY_SECONDS = 3600.0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process, or a platform that cannot tell
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left beside it; return them."""
    path = Path(path)
    prefix = f".{path.name}."
    removed: list[Path] = []
    try:
        candidates = [
            p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.suffix == ".tmp"
        ]
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        middle = candidate.name[len(prefix) : -len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        if "." in middle and pid_text.isdigit():
            stale = int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        else:
            try:
                stale = now - candidate.stat().st_mtime > STALE_TEMPORARY_SECONDS
            except OSError:
                continue
        if stale:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed
