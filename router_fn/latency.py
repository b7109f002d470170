"""The ingress's part of the latency promise, around each request and never in its way:

- **wake**: a decision that names a cold cluster which would meet the budget once warm
  (policy.Decision.wake) starts a warm-up of it (router_fn/waker.py) while the request is served
  by the best cluster that can serve it now;
- **learn**: each answer teaches the shared tier state (router_fn/learning.py) when the endpoint
  last served, the cold start it reported and the prefill it took; a plan with a latency target
  marks its traffic for the warm-keeper;
- **measure**: each request that carries a budget (header or plan target) has its time to first
  token as the client saw it (router_fn/ttft.py) recorded for the account's month
  (functions/sla.py), after its response is closed: the client never waits for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from events import wire
from events.sla import period_of
from functions.sla import Observation, record
from functions.store import Store, StoreUnavailable
from router_fn.learning import Learner
from router_fn.policy import Decision
from router_fn.topology import PlanSpec, Topology
from router_fn.ttft import FirstToken, header_int
from router_fn.waker import Waker

log = logging.getLogger(__name__)

RECORD_ATTEMPTS = 3


@dataclass(frozen=True)
class Served:
    """One answered request, as the ingress saw it."""

    account_id: str
    plan: PlanSpec | None
    model: str
    cluster: str
    budget_ms: int | None
    prompt_tokens: int
    request_id: str
    infer_headers: Mapping[str, str]  # infer's answer headers (cold start, prefill)


class LatencyPromise:
    def __init__(
        self,
        topology: Topology,
        store: Store,
        waker: Waker,
        learner: Learner,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        recorder: Callable[[str, str, Observation], object] | None = None,
    ) -> None:
        """``recorder``: where SLA observations go (account, period, observation); default the
        store (a site ingress's go to the home's, router_fn/site.py)."""
        self.topology = topology
        self.store = store
        self.waker = waker
        self.learner = learner
        self.clock = clock
        self.sleep = sleep
        self._record_one = recorder or partial(record, store)

    def wake(self, decision: Decision) -> None:
        for sleeper in decision.wake:
            rtt = self.topology.cluster(sleeper.cluster).rtt_ms
            self.waker.wake(sleeper.cluster, decision.model, sleeper.url, rtt)

    def observe(self, served: Served, first_token: FirstToken) -> None:
        """After the response closed: learn from it, and record its SLA observation."""
        headers = served.infer_headers
        cold = header_int(headers.get(wire.COLD_START_MS))
        prefill_ms = headers.get(wire.PREFILL_MS)
        prefill = None
        if prefill_ms is not None and served.prompt_tokens:
            prefill = (served.prompt_tokens, header_int(prefill_ms))
        self.learner.served(served.cluster, served.model, cold_start_ms=cold, prefill=prefill)
        plan = served.plan
        if plan is not None and plan.latency_target_ms is not None:
            self.learner.plan_traffic(plan.name, served.model)
        if served.budget_ms is not None:
            self._record(served, first_token.ms())

    def _record(self, served: Served, ttft_ms: int) -> None:
        now = self.clock()
        observation = Observation(
            request_id=served.request_id,
            budget_ms=served.budget_ms or 0,
            ttft_ms=ttft_ms,
            cluster=served.cluster,
            model=served.model,
            at=int(now),
        )
        for attempt in range(RECORD_ATTEMPTS):
            try:
                self._record_one(served.account_id, period_of(now), observation)
                return
            except StoreUnavailable as exc:
                if attempt == RECORD_ATTEMPTS - 1:
                    log.error(
                        "SLA observation of request %s for %s lost: %s",
                        served.request_id,
                        served.account_id,
                        exc,
                    )
                    return
                self.sleep(0.05 * 2**attempt)
