"""The requests this ingress sent to each infer function: unfinished ones, and recently finished.

The shared tier state holds what the prober saw on its last round, up to a probe interval ago.
Between two rounds, a burst arriving at one ingress would all be routed to the cluster that
looked free, and a cluster whose requests just ended would still look busy. So the policy
corrects the prober's view with this ingress's own requests, against the load's ``updated_at``:
the ones that arrived since are added, the ones the probe counted that have finished since are
taken away. Requests of other ingress instances show up at the next probe."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]
# Finished requests are remembered this long: longer than the tier state trusts a probe.
KEEP_FINISHED_S = 30.0


class Sent:
    """One request on its way to, or running at, a cluster; ``end()`` once it finished (any
    number of times: every way out of an attempt may call it)."""

    def __init__(self, owner: InFlightRequests, key: tuple[str, str], ticket: int) -> None:
        self._owner = owner
        self._key = key
        self._ticket = ticket

    def end(self) -> None:
        self._owner._end(self._key, self._ticket)


class InFlightRequests:
    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock  # wall clock: compared with the prober's ``updated_at``
        self._lock = threading.Lock()
        self._tickets = itertools.count()
        # Per (cluster, model): ticket -> arrived at, of the unfinished; and the finished
        # (arrived at, finished at) in the order they finished, dropped from the left as they
        # age, so neither a request nor a decision rescans what is remembered.
        self._running: dict[tuple[str, str], dict[int, float]] = {}
        self._finished: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def begin(self, cluster: str, model: str, arrives_in_s: float = 0.0) -> Sent:
        """Count a request to ``model`` on ``cluster``, sent now and reaching it in
        ``arrives_in_s`` (a probe before then cannot have seen it)."""
        key = (cluster, model)
        ticket = next(self._tickets)
        with self._lock:
            self._running.setdefault(key, {})[ticket] = self._clock() + arrives_in_s
        return Sent(self, key, ticket)

    def view(self) -> dict[tuple[str, str], tuple[tuple[float, float | None], ...]]:
        """(arrived at, finished at or None) of this ingress's requests, per (cluster, model):
        the unfinished ones first, then those finished lately in the order they finished (the
        policy's ``in_flight``)."""
        horizon = self._clock() - KEEP_FINISHED_S
        with self._lock:
            view: dict[tuple[str, str], tuple[tuple[float, float | None], ...]] = {}
            for key in self._running.keys() | self._finished.keys():
                finished = self._finished.get(key)
                while finished and finished[0][1] < horizon:
                    finished.popleft()
                running = self._running.get(key, {})
                if running or finished:
                    view[key] = (*((at, None) for at in running.values()), *(finished or ()))
            return view

    def _end(self, key: tuple[str, str], ticket: int) -> None:
        with self._lock:
            at = self._running.get(key, {}).pop(ticket, None)
            if at is not None:
                self._finished.setdefault(key, deque()).append((at, self._clock()))
