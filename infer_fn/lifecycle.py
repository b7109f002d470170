"""Scale to zero inside the process: load the engine on the first request, unload it when idle.

Knative scales the pod to zero between bursts; within a pod the same happens to the model, so a
warm pod that sits idle gives its memory back. Every request holds a `Lease` from admission to the
end of its response (a stream ends long after the view returns); the engine is never unloaded
while a lease is out."""

from __future__ import annotations

import logging
import threading
import time

from infer_fn import metrics
from infer_fn.admission import Admission
from infer_fn.engines.base import Engine

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, host: EngineHost, cold_start_seconds: float | None) -> None:
        self._host = host
        self._released = False
        self.cold_start_seconds = cold_start_seconds

    def release(self) -> None:
        """Idempotent: called both by a finished stream and by the server closing the response."""
        if not self._released:
            self._released = True
            self._host._release()


class EngineHost:
    def __init__(self, engine: Engine, admission: Admission, *, idle_seconds: float) -> None:
        self.engine = engine
        self.admission = admission
        self._idle_seconds = idle_seconds
        # Guards loading, unloading and the in-flight count together, so the reaper can never
        # unload between a request's admission and its use of the engine.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_used = time.monotonic()
        self._stopped = threading.Event()
        if idle_seconds > 0:
            threading.Thread(target=self._reap, name="infer-idle-reaper", daemon=True).start()

    def acquire(self) -> Lease:
        """Admit the request (raises QueueFull) and make sure the engine is loaded."""
        self.admission.acquire()
        try:
            with self._lock:
                cold = self._load_locked()
                self._in_flight += 1
        except BaseException:
            self.admission.release()
            raise
        return Lease(self, cold)

    def warm_up(self) -> float | None:
        """Load the engine now without serving anything (a router woke this tier ahead of its
        traffic); the seconds the load took, or None if it was loaded already. Counts as use,
        so the idle reaper keeps it for a full idle period."""
        with self._lock:
            cold = self._load_locked()
            self._last_used = time.monotonic()
        return cold

    def _load_locked(self) -> float | None:
        """Load the engine unless loaded (the caller holds the lock): the seconds it took."""
        if self.engine.loaded:
            return None
        # Said before and after: a load can take minutes (vLLM), and whoever watches the log
        # (`tollgate up` echoes these lines) should know why requests wait.
        log.info("%s: loading the model (cold start); requests wait", self._name())
        started = time.perf_counter()
        self.engine.load()
        cold = time.perf_counter() - started
        metrics.COLD_STARTS.inc()
        metrics.COLD_START_SECONDS.observe(cold)
        log.info("%s: model loaded in %.2f s", self._name(), cold)
        return cold

    def unload_if_idle(self) -> bool:
        with self._lock:
            idle = time.monotonic() - self._last_used
            if self.engine.loaded and self._in_flight == 0 and idle >= self._idle_seconds:
                self.engine.unload()
                metrics.UNLOADS.inc()
                log.info("%s: model unloaded after %.0f s idle", self._name(), idle)
                return True
        return False

    def _name(self) -> str:
        return ", ".join(self.engine.models())

    def stop(self) -> None:
        """Stop the idle reaper and unload (process shutdown, tests)."""
        self._stopped.set()
        with self._lock:
            if self.engine.loaded:
                self.engine.unload()

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_used = time.monotonic()
        self.admission.release()

    def _reap(self) -> None:
        period = min(max(self._idle_seconds / 4, 0.05), 5.0)
        while not self._stopped.wait(period):
            self.unload_if_idle()
