"""What the ingress learns from its own traffic, gathered in memory and written to the shared
state in batches, off every request's path.

Per (cluster, model): the cold starts infer reported on responses (``x-tollgate-cold-start-ms``:
only the request whose arrival caused the load reports one, so each load is counted once, by the
replica that served that request), when it last answered (fresh evidence of warmth that needs no
probe, so nothing keeps a scale-to-zero service up just by looking at it) and the prefill
observed on whole responses. Per (plan, model): when a plan with a latency target last had
traffic, which the warm-keeper keeps its sites warm for. A flush every ``interval_s`` writes one
item per endpoint touched; a lost batch (the process killed) loses estimates, never money."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router_fn.tierstate import TierStates
from router_fn.warmth import Warmth

log = logging.getLogger(__name__)


@dataclass
class _Endpoint:
    served_at: float = 0.0
    cold_starts: list[int] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_ms: int = 0


class Learner:
    def __init__(
        self,
        states: TierStates,
        warmth: Warmth,
        *,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.states = states
        self.warmth = warmth
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._demand: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the ingress saw (cheap: a lock and a few assignments) --------------------------

    def served(
        self,
        cluster: str,
        model: str,
        *,
        cold_start_ms: int | None = None,
        prefill: tuple[int, int] | None = None,
    ) -> None:
        now = self.clock()
        with self._lock:
            seen = self._endpoints.setdefault((cluster, model), _Endpoint())
            seen.served_at = max(seen.served_at, now)
            if cold_start_ms:
                seen.cold_starts.append(cold_start_ms)
            if prefill is not None:
                seen.prefill_tokens += prefill[0]
                seen.prefill_ms += prefill[1]

    def plan_traffic(self, plan: str, model: str) -> None:
        with self._lock:
            self._demand[(plan, model)] = self.clock()

    # -- writing it out ------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            endpoints, self._endpoints = self._endpoints, {}
            demand, self._demand = self._demand, {}
        for (cluster, model), seen in endpoints.items():
            try:
                if seen.cold_starts:
                    self.states.record_cold_starts(cluster, model, seen.cold_starts)
                prefill = (seen.prefill_tokens, seen.prefill_ms) if seen.prefill_tokens else None
                self.states.record_served(cluster, model, at=seen.served_at, prefill=prefill)
            except Exception:  # the store is briefly down: the next answers teach it again
                log.exception("could not record what %s/%s taught", cluster, model)
        for (plan, model), at in demand.items():
            try:
                self.warmth.record_demand(plan, model, at)
            except Exception:
                log.exception("could not record %s's traffic on %s", plan, model)

    def start(self) -> Learner:
        self._thread = threading.Thread(target=self._run, name="ingress-learner", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()
