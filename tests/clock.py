"""A settable clock for tests: they move time instead of sleeping."""

from __future__ import annotations

import threading

START = 1_800_000_000  # 2027-01-15: a fixed, timezone-free moment every test starts from


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
