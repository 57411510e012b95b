"""A least-recently-used map bounded in bytes: caches fed by anonymous requests stay small."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLru(Generic[K, V]):
    """A least-recently-used map bounded by the bytes its entries weigh (the caller says what
    each weighs) and by a count: a few large entries cannot hold more than the budget. An entry
    heavier than the whole budget is not stored. Thread-safe."""

    def __init__(self, max_bytes: int, max_entries: int = 1_000_000) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, weight: int) -> None:
        if weight > self._max_bytes or self._max_entries <= 0:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, weight)
            self._bytes += weight
            while self._bytes > self._max_bytes or len(self._items) > self._max_entries:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
