"""One error path for the command line and the app's dialogs.

Errors a user can cause (a bad argument, a file that is missing, damaged or unwritable, a full
disk, an invalid project) end in one line that names the file or argument and what to do, and
exit status 1 (2 for usage errors); anything else is a bug and keeps its traceback.

The engine and the bridge raise their own error classes; they are recognised here by name, so
that reporting an error never imports torch, OpenSlide or paquo.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "USAGE",
    "UserError",
    "check_writable_dir",
    "check_writable_file",
    "finite_float",
    "join_negative_values",
    "positive_float",
    "positive_int",
    "user_message",
]

#: Exit status of a usage error (argparse's own).
USAGE = 2

# Error classes of the engine and the bridge that always mean "the user's input", by module and
# name (the classes are not imported: reporting an error must stay cheap and must not fail).
_USER_ERROR_CLASSES = {
    "engine.weights.WeightsError",
    "engine.slides.SlideError",
    "engine.wsi_predictor.PromptError",
    "engine.wsi_sam.HeadsError",
    "engine.backends.BackendError",
    "engine.train.readers.AnnotationReadError",
    "engine.train.trainer.TrainingError",
    "engine.objects.classifier.ClassifierError",
    "qupath_bridge.errors.BridgeError",
    "app.commands.eval.DataError",
}
# ... of which these are usage errors (exit status 2).
_USAGE_ERROR_CLASSES = {"app.commands.eval.DataError"}


class UserError(Exception):
    """An error the user can fix; the message says what to do. ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _class_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def _os_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else ""
    where = f"{name}: " if name else ""
    code = exc.errno
    if code == errno.ENOSPC:
        return f"{where}the disk is full; free some space (nothing was overwritten) and run again"
    if code == errno.EDQUOT:
        return f"{where}the disk quota is exceeded; free some space and run again"
    if code in (errno.EACCES, errno.EPERM):
        return f"{where}permission denied; choose a file or folder you may write to"
    if code == errno.EROFS:
        return f"{where}the file system is read-only; choose another place to write"
    if code == errno.ENOENT:
        return f"{where}no such file or folder"
    if code == errno.EISDIR:
        return f"{where}is a folder, not a file"
    if code == errno.ENOTDIR:
        return f"{where}a part of the path is a file, not a folder"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}{reason}"


def user_message(exc: BaseException) -> tuple[str, int] | None:
    """``(one-line message, exit status)`` for an error the user caused, None for a bug."""
    names = _class_names(exc)
    if isinstance(exc, UserError):
        return _one_line(str(exc)), exc.status
    if names & _USER_ERROR_CLASSES:
        status = USAGE if names & _USAGE_ERROR_CLASSES else 1
        return _one_line(str(exc) or type(exc).__name__), status
    if isinstance(exc, OSError):
        return _os_message(exc), 1
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller input, region or batch", 1
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; outputs already written are complete, nothing is half-written", 130
    return None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def run_reporting(prog: str, func: Callable[[], int]) -> int:
    """Run ``func``; a user error is printed as one line on stderr and becomes its exit status."""
    try:
        return func()
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        found = user_message(exc)
        if found is None:
            raise
        message, status = found
        print(f"{prog}: {message}", file=sys.stderr)
        return status


# -- arguments ---------------------------------------------------------------------------------

_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)[\d.eE+\-]*(,[-+]?[\d.eE+\-]*)*$")


def join_negative_values(args: list[str]) -> list[str]:
    """``--box -100,-100,400,400`` -> ``--box=-100,-100,400,400``.

    argparse takes a value that starts with ``-`` for an option unless it is one plain negative
    number; coordinates lists (and ``-1e5``) are joined to their option so that they parse.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if (
            nxt is not None
            and token.startswith("--")
            and "=" not in token
            and token != "--"
            and _NEGATIVE_VALUE.match(nxt)
        ):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


# -- outputs -----------------------------------------------------------------------------------


def _probe_writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(prefix=".wsi-sam-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_writable_dir(folder: str | os.PathLike[str], what: str) -> None:
    """Before a long run: ``folder`` exists or can be created, and a file can be written in it.

    Creates nothing: the nearest existing parent is tested when the folder is not there yet.
    Raises UserError naming ``what`` (the option).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file, not a folder; give a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not _probe_writable(existing):
        raise UserError(
            f"{what} {path}: cannot write in {existing} (read-only or no permission); "
            "choose another folder"
        )


def check_writable_file(
    file: str | os.PathLike[str], what: str, *, folder_must_exist: bool = False
) -> None:
    """Before a long run: ``file`` can be written (its folder is writable, it is not a folder).

    ``folder_must_exist``: the writer does not create missing folders.
    """
    path = Path(file)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: the file is read-only; choose another file")
    if folder_must_exist and not folder.is_dir():
        if folder.exists():
            raise UserError(f"{what} {path}: {folder} is a file, not a folder")
        raise UserError(f"{what} {path}: the folder {folder} does not exist; create it first")
    check_writable_dir(folder, what)


def plain_error(exc: BaseException) -> str:
    """The exception as a sentence for a dialog (our libraries' messages already are one)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "Out of memory."
    if isinstance(exc, PermissionError):
        return f"Permission denied: {exc.filename or text}"
    if isinstance(exc, FileNotFoundError):
        return f"File not found: {exc.filename or text}"
    return text
