"""A concurrency limit with a bounded wait queue: beyond both, the request is refused at once."""

from __future__ import annotations

import threading


class QueueFull(Exception):
    """No slot and no room (or no slot in time) to wait for one; answered 429 with Retry-After."""


class Admission:
    def __init__(self, concurrency: int, queue_size: int, timeout: float) -> None:
        self._concurrency = concurrency
        self._queue_size = queue_size
        self._timeout = timeout
        self._cond = threading.Condition()
        self._running = 0
        self._waiting = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def acquire(self) -> None:
        with self._cond:
            if self._running < self._concurrency and self._waiting == 0:
                self._running += 1
                return
            if self._waiting >= self._queue_size:
                raise QueueFull(
                    f"{self._running} requests running and {self._waiting} queued (the limit)"
                )
            self._waiting += 1
            try:
                if not self._cond.wait_for(
                    lambda: self._running < self._concurrency, self._timeout
                ):
                    raise QueueFull(f"no slot freed within {self._timeout:g}s")
                self._running += 1
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify()
