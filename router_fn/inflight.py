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
        # (cluster, model) -> ticket -> [arrived at, finished at or None]
        self._sent: dict[tuple[str, str], dict[int, tuple[float, float | None]]] = {}

    def begin(self, cluster: str, model: str, arrives_in_s: float = 0.0) -> Sent:
        """Count a request to ``model`` on ``cluster``, sent now and reaching it in
        ``arrives_in_s`` (a probe before then cannot have seen it)."""
        key = (cluster, model)
        ticket = next(self._tickets)
        with self._lock:
            self._sent.setdefault(key, {})[ticket] = (self._clock() + arrives_in_s, None)
        return Sent(self, key, ticket)

    def view(self) -> dict[tuple[str, str], tuple[tuple[float, float | None], ...]]:
        """(arrived at, finished at or None) of this ingress's requests, per (cluster, model):
        the unfinished ones and those finished lately (the policy's ``in_flight``)."""
        horizon = self._clock() - KEEP_FINISHED_S
        with self._lock:
            for sent in self._sent.values():
                old = [t for t, (_, done) in sent.items() if done is not None and done < horizon]
                for ticket in old:
                    del sent[ticket]
            return {key: tuple(sent.values()) for key, sent in self._sent.items() if sent}

    def _end(self, key: tuple[str, str], ticket: int) -> None:
        with self._lock:
            sent = self._sent.get(key, {})
            record = sent.get(ticket)
            if record is not None and record[1] is None:
                sent[ticket] = (record[0], self._clock())
