"""A small thread-safe LRU for things that are slow to build (models rebuilt from checkpoints, evaluations)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value for `key`, built by `build()` on a miss."""
        value = self.peek(key)
        if value is None:
            # Built outside the lock: a slow build must not hold up hits on other keys.
            value = build()
            self.put(key, value)
        return value

    def peek(self, key: Hashable) -> V | None:
        """The value for `key` if it is cached, else None (which is never a value)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def discard(self, where: Callable[[Hashable], bool]) -> None:
        """Drop every item whose key satisfies `where`."""
        with self._lock:
            for key in [k for k in self._items if where(k)]:
                del self._items[key]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_size:
                self._items.popitem(last=False)
