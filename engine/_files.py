"""Atomic writes of user-visible files (reports, plots)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and a failure leaves the old file as it was. The new
    file gets the usual permissions (0666 less the umask), not mkstemp's private 0600, so reports
    on a shared lab drive stay readable by colleagues.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        remove_stale_temporaries(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
