"""Waking cold tiers: a warm-up call to an infer function, asynchronous and deduplicated.

The ingress wakes the cold cluster a decision names (policy.Decision.wake) while the request is
served elsewhere; the warm-keeper (router_fn/warmth.py) wakes what demand says must stay warm.
A warm-up is ``POST <infer url>/v1/warmup`` (events/warmup.py): on Knative it goes through the
activator, which scales the revision from zero as a request would, and infer loads its model
without generating; under ``tollgate up`` the infer process (or the local activator in front of
it) does the same. Nothing waits for it: calls run on a small pool, at most one in flight per
endpoint, and an endpoint woken less than ``cooldown_s`` ago is not called again.

What a warm-up teaches is recorded in the shared tier state: the endpoint is warm now, and the
cold start it caused (the longer of what infer measured and the call's own time less the RTT,
which on Knative includes the pod's start) joins the endpoint's learned window."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from events.warmup import WARMUP_PATH, WarmedUp
from router_fn.tierstate import TierStates

log = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 900.0  # a 70B model on vLLM takes minutes to load
CONNECT_TIMEOUT_S = 3.0

Clock = Callable[[], float]


class Waker:
    def __init__(
        self,
        states: TierStates,
        *,
        cooldown_s: float = 10.0,
        workers: int = 4,
        session: requests.Session | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.states = states
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.session = session or requests.Session()
        self.session.trust_env = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="waker")
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._in_flight: set[tuple[str, str]] = set()

    def wake(self, cluster: str, model: str, url: str, rtt_ms: int = 0) -> bool:
        """Start waking (cluster, model) unless it is being woken or was woken lately; True if
        a warm-up call was started."""
        key = (cluster, model)
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if key in self._in_flight or (last is not None and now - last < self.cooldown_s):
                return False
            self._in_flight.add(key)
            self._last[key] = now
        self._pool.submit(self._warm_up, cluster, model, url, rtt_ms)
        return True

    def _warm_up(self, cluster: str, model: str, url: str, rtt_ms: int) -> None:
        started = time.perf_counter()
        try:
            answer = self.session.post(
                url.rstrip("/") + WARMUP_PATH, timeout=(CONNECT_TIMEOUT_S, WARMUP_TIMEOUT_S)
            )
            answer.raise_for_status()
            warmed = WarmedUp.model_validate(answer.json())
            elapsed_ms = round((time.perf_counter() - started) * 1000) - rtt_ms
            self.states.report_warm(cluster, model)
            if warmed.cold_start_ms is not None:
                sample = max(warmed.cold_start_ms, elapsed_ms)
                self.states.record_cold_starts(cluster, model, [sample])
            log.info("woke %s/%s (cold start %s ms)", cluster, model, warmed.cold_start_ms)
        except Exception as exc:  # a failed warm-up costs nothing but the warmth: log, go on
            log.warning("warm-up of %s/%s failed: %s", cluster, model, exc)
        finally:
            with self._lock:
                self._in_flight.discard((cluster, model))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()
