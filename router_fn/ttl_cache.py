"""A small thread-safe cache whose entries live a fixed time (API keys -> callers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
MAX_ENTRIES = 10_000


class TTLCache(Generic[K, V]):
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = load()  # outside the lock: a slow load must not block other keys
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # bounded memory; a burst of misses refills it
            self._entries[key] = (now, value)
        return value
