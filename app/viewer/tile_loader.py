# ruff: noqa: N815  (Qt names its virtual methods and signals in camelCase)
"""Loads tiles off the UI thread: worker threads, a priority queue, stale requests dropped.

The view hands the loader the full list of tiles it wants, best first (visible tiles nearest the
centre of the view first); each call replaces the queue, so tiles the view has moved away from are
never read. Reads of one slide are serialised with the slide's lock (``slide_lock``) because slide
back-ends are not guaranteed to be safe for concurrent reads; decoding into a QImage happens
outside the lock so that two workers still overlap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.viewer.levels import DisplayLevel, SlideLike, TileKey, read_tile
from engine.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

# Pseudo tile key of the low-resolution image of the whole slide (drawn under missing tiles).
OVERVIEW_KEY = TileKey(-1, 0, 0)
OVERVIEW_MAX_SIDE = 1024

_locks_guard = threading.Lock()
_locks: dict[int, ReadWriteLock] = {}
_strong_refs: dict[int, object] = {}


def slide_lock(slide: object) -> ReadWriteLock:
    """The app's lock of ``slide``: ``shared()`` around a read where the slide allows concurrent
    reads (:func:`read_lock`), ``with lock:`` (alone) otherwise and to stop reading it."""
    key = id(slide)
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = ReadWriteLock()
            _locks[key] = lock
            try:
                weakref.finalize(slide, _forget_lock, key)
            except TypeError:  # not weak-referenceable: keep it alive so its id stays unique
                _strong_refs[key] = slide
        return lock


def read_lock(slide: object, lock: ReadWriteLock) -> contextlib.AbstractContextManager[Any]:
    """What a reader of ``slide`` holds: the shared side when its reads may run in parallel."""
    if getattr(slide, "concurrent_reads", False):
        return lock.shared()
    return lock.exclusive()


def _forget_lock(key: int) -> None:
    with _locks_guard:
        _locks.pop(key, None)


def overview_downsample(width: int, height: int) -> float:
    """Downsample of the overview image: the whole slide within OVERVIEW_MAX_SIDE pixels."""
    return max(1.0, max(width, height) / OVERVIEW_MAX_SIDE)


def pixels_to_qimage(pixels: np.ndarray[Any, Any]) -> QImage:
    """(h, w, 3|4) uint8 RGB(A) -> a new QImage in Format_RGB32 (the fastest to draw).

    The pixels are copied into memory the QImage owns: wrapping a numpy buffer with
    ``QImage(data, ...)`` ties the image to a Python object whose release from a worker thread
    has crashed PySide6 (a refcount error) while the UI thread painted.
    """
    height, width = pixels.shape[:2]
    image = QImage(width, height, QImage.Format.Format_RGB32)
    if width == 0 or height == 0:
        return image
    rows = np.frombuffer(image.bits(), dtype=np.uint8).reshape(height, image.bytesPerLine())
    bgra = rows[:, : 4 * width].reshape(height, width, 4)  # RGB32 is 0xffRRGGBB: B, G, R, A
    bgra[..., 0] = pixels[..., 2]
    bgra[..., 1] = pixels[..., 1]
    bgra[..., 2] = pixels[..., 0]
    bgra[..., 3] = 255
    return image


@dataclass(frozen=True)
class LoadedTile:
    """A tile read by a worker: ``image`` is None when the read failed (``error`` says why)."""

    generation: int
    key: TileKey
    image: QImage | None
    error: str | None
    requested_at: float  # time.perf_counter() when the view asked for it
    read_seconds: float


@dataclass
class _Source:
    slide: SlideLike | None
    levels: Sequence[DisplayLevel]
    tile_size: int
    lock: ReadWriteLock


class TileLoader(QObject):
    """Reads tiles of the current slide in ``workers`` threads; results arrive as ``tileReady``
    (a LoadedTile) in the thread the loader lives in (the UI thread)."""

    tileReady = Signal(object)

    def __init__(self, workers: int = 2, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._workers = max(1, workers)
        self._cond = threading.Condition()
        self._queue: deque[tuple[TileKey, float]] = deque()
        self._in_flight: set[TileKey] = set()
        self._outstanding = 0  # taken by a worker, not yet delivered to the UI thread
        self._generation = 0
        self._source = _Source(None, (), 256, ReadWriteLock())
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- UI thread -------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def set_source(
        self, slide: SlideLike | None, levels: Sequence[DisplayLevel], tile_size: int
    ) -> int:
        """Switch to another slide (or none). Pending requests are dropped and, when this
        returns, no worker is reading the previous slide any more: it may be closed at once."""
        with self._cond:
            old_lock = self._source.lock
            self._generation += 1
            self._queue.clear()
            self._in_flight.clear()
            self._outstanding = 0
            lock = slide_lock(slide) if slide is not None else ReadWriteLock()
            self._source = _Source(slide, tuple(levels), tile_size, lock)
            generation = self._generation
        # A worker reads under the old lock and checks the generation inside it: once we have
        # held the lock alone, any read of the old slide has finished and none can start.
        with old_lock:
            pass
        return generation

    def request(self, keys: Sequence[TileKey]) -> None:
        """Replace the queue with ``keys`` (best first). Tiles being read are not queued again."""
        now = time.perf_counter()
        with self._cond:
            previous = dict(self._queue)
            self._queue = deque(
                (key, previous.get(key, now)) for key in keys if key not in self._in_flight
            )
            if self._queue:
                self._ensure_threads()
                self._cond.notify_all()

    def delivered(self, generation: int) -> None:
        """The UI thread has taken a tile of ``generation`` (it counted as pending until now)."""
        with self._cond:
            if generation == self._generation and self._outstanding > 0:
                self._outstanding -= 1

    def pending(self) -> int:
        """Tiles requested and not yet delivered (queued, being read, or on their way)."""
        with self._cond:
            return len(self._queue) + self._outstanding

    def queued_keys(self) -> list[TileKey]:
        with self._cond:
            return [key for key, _ in self._queue]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the workers (after their current read). The loader starts them again if asked."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)
        with self._cond:
            self._stopping = False

    # -- worker threads --------------------------------------------------------------------
    def _ensure_threads(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self._workers:
            thread = threading.Thread(
                target=self._work, name=f"tile-loader-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key, requested_at = self._queue.popleft()
                generation = self._generation
                source = self._source
                self._in_flight.add(key)
                self._outstanding += 1
            image: QImage | None = None
            error: str | None = None
            started = time.perf_counter()
            try:
                with read_lock(source.slide, source.lock):
                    with self._cond:
                        if generation != self._generation or source.slide is None:
                            continue
                    pixels = self._read(source, key)
                image = pixels_to_qimage(pixels)
            except Exception as exc:  # a bad tile must not kill the worker
                error = f"{type(exc).__name__}: {exc}"
                log.warning("tile %s could not be read: %s", key, error)
            read_seconds = time.perf_counter() - started
            with self._cond:
                if generation != self._generation:
                    continue
                self._in_flight.discard(key)
            try:
                self.tileReady.emit(
                    LoadedTile(generation, key, image, error, requested_at, read_seconds)
                )
            except RuntimeError:  # the loader's Qt object is gone: the view was destroyed
                return

    @staticmethod
    def _read(source: _Source, key: TileKey) -> np.ndarray[Any, Any]:
        slide = source.slide
        assert slide is not None
        if key == OVERVIEW_KEY:
            width, height = slide.dimensions
            ds = overview_downsample(width, height)
            size = (max(1, round(width / ds)), max(1, round(height / ds)))
            return np.asarray(slide.read_scaled((0.0, 0.0), ds, size))
        level = source.levels[key.level]
        return read_tile(slide, level, source.tile_size, key.col, key.row)
