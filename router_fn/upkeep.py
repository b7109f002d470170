"""A background worker that runs one ``tick`` every interval, or at once when poked, and
outlives any one failure (the next tick retries): the upkeep of credit leases and rate-limit
shares, off the request path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(self, name: str, tick: Callable[[], None], interval_s: float) -> None:
        self.name = name
        self._tick = tick
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stopped = False
        self._worker: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        if self._worker is None:
            with self._starting:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._worker.start()

    def poke(self) -> None:
        """Tick now rather than at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop ticking (the tick under way finishes, for at most 5 s)."""
        self._stopped = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(5)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self._tick()
            except Exception:  # the worker must outlive any one failure; the next tick retries
                log.exception("%s upkeep failed", self.name)
