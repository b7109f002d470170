"""The local autoscaler's loop: each infer service's replicas follow the KPA's decision.

``tick`` runs on ``tollgate up``'s main thread, from the loop that also restarts crashed
children (the supervisor is that thread's alone, and a child is told to die with the thread that
started it). The loop ticks every ``TICK_S``, and at once when an activator pokes ``wake`` (a
request waiting at zero, a drained replica idle). Each tick, per service:

- the Autoscaler gets the activator's in-flight integral since the last tick; new replicas start
  through the supervisor; surplus ones drain (no new requests);
- a drained replica is retired (SIGTERM) once it has nothing in flight and its durable outbox
  owes nothing: what it metered is delivered before it goes, and a replica whose outbox cannot
  deliver yet (the broker down) stays, taking no requests, until it can;
- started replicas are readied when their ``/readyz`` answers 200. A crashed replica takes no
  requests and is restarted by the supervisor on its own back-off (CrashLoopBackOff) with the
  same identity and outbox, so it delivers what it owed; the other replicas keep serving. One
  that exits before it was ever ready, or is not ready within the progress deadline, fails the
  requests waiting for it (503, so the ingress fails over).

At start, an outbox left owing by an earlier run (a replica killed with the platform) is picked
up again: that replica starts drained, delivers, and is retired.

A thread scrapes each ready replica's ``/metrics`` every ``SCRAPE_EVERY_S``: whether its engine
holds the model and its speed, which the activator reports to the router's prober.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from functions import outbox
from infra.local.activator import LOADED, TOKENS_PER_SECOND, Activator, ActivatorSpec, Replica
from infra.local.autoscaler import Autoscaler
from infra.local.platform import BUFFER_TIMEOUT_S, InferService, free_port
from infra.local.supervisor import Child, Restarts, Supervisor

log = logging.getLogger(__name__)

TICK_S = 0.25
SCRAPE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 0.5


@dataclass
class _Scaled:
    """A service, its activator and autoscaler, and what the last tick saw."""

    service: InferService
    activator: Activator
    autoscaler: Autoscaler
    last_tick: float
    last_integral: float = 0.0
    desired: int = 0
    index: dict[str, int] = field(default_factory=dict)  # replica name -> its index
    retired: dict[int, Child] = field(default_factory=dict)  # index -> replica stopping


class Scaler:
    def __init__(
        self,
        supervisor: Supervisor,
        services: Sequence[InferService],
        restarts: Restarts,
        *,
        clock: Callable[[], float] = time.monotonic,
        port: Callable[[], int] = free_port,
        owed: Callable[[Path], int] = outbox.owed,
    ) -> None:
        self.supervisor = supervisor
        self.restarts = restarts
        self.wake = threading.Event()
        self._clock = clock
        self._port = port
        self._owed = owed
        self._stopped = threading.Event()
        self._session = requests.Session()
        self._session.trust_env = False
        now = clock()
        self.services = [
            _Scaled(
                s,
                Activator(
                    ActivatorSpec(
                        cluster=s.env["TOLLGATE_CLUSTER"],
                        model=s.model,
                        concurrency=s.scaling.concurrency,
                        max_replicas=s.scaling.max_scale,
                        buffer_size=s.buffer_size,
                        buffer_timeout_s=BUFFER_TIMEOUT_S,
                    ),
                    self.wake.set,
                    clock=clock,
                ),
                Autoscaler(s.scaling),
                now,
            )
            for s in services
        ]
        self._scraper = threading.Thread(target=self._scrape, name="local-scraper", daemon=True)

    def activators(self) -> list[Activator]:
        return [s.activator for s in self.services]

    def start(self) -> None:
        """Pick up outboxes left owing, and start scraping (call from the ticking thread)."""
        for scaled in self.services:
            service = scaled.service
            for index in range(1, service.scaling.max_scale + 1):
                owes = self._owed(service.outbox_dir(index))
                if owes:
                    log.warning(
                        "%s owes %d events from before: started to deliver them",
                        service.replica_name(index),
                        owes,
                    )
                    name = self._launch(scaled, index)
                    scaled.activator.drain(name)
        self._scraper.start()

    def stop(self) -> None:
        """Stop scraping (the supervisor stops the replicas with every other child)."""
        self._stopped.set()
        self._scraper.join(5)
        self._session.close()

    # -- one tick ---------------------------------------------------------------------------------

    def tick(self) -> None:
        for scaled in self.services:
            try:
                self._tick(scaled)
            except Exception:  # one service's trouble must not stop the others scaling
                log.exception("scaling infer-%s failed", scaled.service.tier)
        self.supervisor.reap()

    def _tick(self, scaled: _Scaled) -> None:
        now = self._clock()
        activator = scaled.activator
        integral = activator.request_seconds()
        scaled.autoscaler.observe(now, now - scaled.last_tick, integral - scaled.last_integral)
        scaled.last_tick, scaled.last_integral = now, integral
        for replica in activator.replicas():
            self._check(scaled, replica, now)
        replicas = activator.replicas()
        ready = sum(1 for r in replicas if r.ready and not r.draining)
        buffered, _ = activator.waiting()
        decision = scaled.autoscaler.decide(now, ready, activating=buffered > 0 and not ready)
        if decision.desired != scaled.desired:
            log.info(
                "infer-%s: %d -> %d replicas (concurrency %.2f stable, %.2f panic%s)",
                scaled.service.tier,
                scaled.desired,
                decision.desired,
                decision.stable_concurrency,
                decision.panic_concurrency,
                ", panicking" if decision.panicking else "",
            )
            scaled.desired = decision.desired
        self._reconcile(scaled, [r for r in replicas if not r.draining], decision.desired)
        for replica in activator.replicas():
            if replica.draining and replica.in_flight == 0:
                self._retire_if_delivered(scaled, replica.name)
        self._pick_up(scaled)

    def _pick_up(self, scaled: _Scaled) -> None:
        """A retired replica that exited still owing (a request its caller left was metered
        after the replica went idle here, and the broker did not take it in the stop's drain
        time) starts again, drained, to deliver it."""
        for index, child in list(scaled.retired.items()):
            if child.process.poll() is None:
                continue
            del scaled.retired[index]
            owes = self._owed(scaled.service.outbox_dir(index))
            if owes:
                name = scaled.service.replica_name(index)
                log.warning("%s stopped owing %d events: started to deliver them", name, owes)
                self._launch(scaled, index)
                scaled.activator.drain(name)

    def _check(self, scaled: _Scaled, replica: Replica, now: float) -> None:
        """Ready a started replica; notice a dead or stuck one."""
        child = self.supervisor.find(replica.name)
        activator = scaled.activator
        if child is None:  # retired
            activator.remove(replica.name)
            return
        code = child.process.poll()
        if code is not None:
            activator.set_ready(replica.name, False)  # the supervisor restarts it
            if not replica.ever_ready:
                activator.fail(f"{replica.name} exited with status {code}; see {child.log_path}")
            return
        if replica.ready or replica.draining:
            return
        if self._answers(replica.url + "/readyz"):
            activator.set_ready(replica.name, True)
        elif now - child.started > scaled.service.progress_deadline_s:
            activator.fail(
                f"{replica.name} not ready within {scaled.service.progress_deadline_s:g} s "
                f"(the progress deadline); see {child.log_path}"
            )
            activator.drain(replica.name)

    def _reconcile(self, scaled: _Scaled, active: list[Replica], desired: int) -> None:
        if desired > len(active):
            taken = {r.name for r in scaled.activator.replicas()}
            taken.update(scaled.service.replica_name(i) for i in scaled.retired)
            index = 1
            for _ in range(desired - len(active)):
                while scaled.service.replica_name(index) in taken:
                    index += 1
                taken.add(self._launch(scaled, index))
            return
        # Surplus: replicas not ready yet go first, then the least busy.
        surplus = sorted(active, key=lambda r: (r.ready, r.in_flight, r.name))
        for replica in surplus[: len(active) - desired]:
            scaled.activator.drain(replica.name)

    def _launch(self, scaled: _Scaled, index: int) -> str:
        spec = scaled.service.replica(index, self._port())
        scaled.index[spec.name] = index
        scaled.activator.add(spec.name, spec.url)
        self.supervisor.start(spec)
        return spec.name

    def _retire_if_delivered(self, scaled: _Scaled, name: str) -> None:
        """Retire a drained, idle replica once its outbox owes nothing. A dead one that still
        owes is left to its restart (same outbox), which delivers."""
        owes = self._owed(scaled.service.outbox_dir(scaled.index[name]))
        if owes:
            return
        scaled.activator.remove(name)
        index = scaled.index.pop(name)
        self.restarts.forget(name)
        child = self.supervisor.find(name)
        if child is not None:
            self.supervisor.retire(child)
            scaled.retired[index] = child

    def _answers(self, url: str) -> bool:
        try:
            return self._session.get(url, timeout=PROBE_TIMEOUT_S).status_code == 200
        except requests.RequestException:
            return False

    # -- what the replicas say ------------------------------------------------------------------

    def _scrape(self) -> None:
        session = requests.Session()
        session.trust_env = False
        while not self._stopped.wait(SCRAPE_EVERY_S):
            for scaled in self.services:
                for replica in scaled.activator.replicas():
                    if replica.ready:
                        self._scrape_one(session, scaled.activator, replica)
        session.close()

    def _scrape_one(
        self, session: requests.Session, activator: Activator, replica: Replica
    ) -> None:
        try:
            text = session.get(replica.url + "/metrics", timeout=PROBE_TIMEOUT_S).text
            values = {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                if family.name in (LOADED, TOKENS_PER_SECOND)
                for sample in family.samples
            }
        except (requests.RequestException, ValueError):
            return  # busy or gone: keep what it said last
        activator.report(
            replica.name,
            loaded=values.get(LOADED, 0.0) >= 1,
            tokens_per_second=values.get(TOKENS_PER_SECOND) or None,
        )
