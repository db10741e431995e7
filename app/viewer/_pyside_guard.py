"""Guard against a PySide6 6.12 reference-count bug on Python < 3.12.

With PySide6-Essentials 6.12.0 on CPython 3.11 every call of a Qt method returning ``void``
(``QPainter.save``, ``QRectF.setWidth``, ``QTimer.start`` ...) drops one reference to ``None``
it never took, and ``Signal.emit`` does the same to ``True``. A viewer makes thousands of such
calls per second, so after a few seconds the count reaches zero and the interpreter aborts
("none_dealloc: deallocating None", "bool_dealloc"). PySide6 6.11 does not do this, and on
Python >= 3.12 these objects are immortal so the bug is harmless there.

The guard gives ``None``, ``True`` and ``False`` a huge reference count once (what Python 3.12
does by design), which is safe: they are never freed anyway.
"""

from __future__ import annotations

import ctypes
import sys

_GUARD_REFERENCES = 1 << 40
_applied = False


def _pyside_version() -> tuple[int, ...]:
    import PySide6

    parts = []
    for piece in PySide6.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def keep_none_alive() -> bool:
    """Apply the guard where the bug can bite (CPython < 3.12, PySide6 >= 6.12). Returns whether
    it was applied (once per process)."""
    global _applied
    if _applied:
        return True
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if _pyside_version() < (6, 12):
        return False
    for singleton in (None, True, False):
        # ob_refcnt is the first field of every CPython object.
        refcount = ctypes.c_ssize_t.from_address(id(singleton))
        refcount.value += _GUARD_REFERENCES
    _applied = True
    return True
