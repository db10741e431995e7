"""An LRU cache of decoded tiles, bounded by the bytes the tiles hold."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class TileCache(Generic[Value]):
    """Least-recently-used tiles within a byte budget. Used from the UI thread only.

    A tile larger than the whole budget is not kept. ``get`` marks a tile as recently used;
    ``peek`` does not (for looking around without disturbing the order).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"tile cache budget must be positive, got {max_bytes} bytes")
        self._max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self._bytes = 0

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Value | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def peek(self, key: Hashable) -> Value | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Value, nbytes: int) -> None:
        """Store a tile of ``nbytes``, evicting the least recently used ones to fit."""
        if nbytes < 0:
            raise ValueError(f"tile size must be >= 0 bytes, got {nbytes}")
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if nbytes > self._max_bytes:
            return
        self._items[key] = (value, nbytes)
        self._bytes += nbytes
        while self._bytes > self._max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted

    def set_max_bytes(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"tile cache budget must be positive, got {max_bytes} bytes")
        self._max_bytes = max_bytes
        while self._bytes > self._max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
