"""The router's live view of each cluster, shared through the store (function instances are
stateless, so every route, ingress and prober instance reads and writes the same items).

Layout: one partition, so a snapshot is one query. One item per concern, so a prober writing
load never races a network event writing degradation:
- ``TIERS`` / ``<cluster>#HEALTH#<model>``: the model's infer function answers /readyz or not;
- ``TIERS`` / ``<cluster>#LOAD#<model>``: its last scraped load;
- ``TIERS`` / ``<cluster>#DEGRADED``: degradations by source (network events), each with its own
  expiry, so a lost "restored" event cannot strand a site and one source cannot clear another's;
- ``TIERS`` / ``<cluster>#COLD#<model>``: the last ``COLD_SAMPLES`` measured cold starts (what
  infer reported for a load a request or a warm-up caused), the policy's learned estimate;
- ``TIERS`` / ``<cluster>#SERVED#<model>``: when it last answered (a request or a warm-up), and
  the prefill speed learned from its answers.
Read-modify-writes are versioned (``update_item``): a conflict re-reads and re-applies.

Old evidence is not trusted: load older than ``load_stale_s`` and health older than
``health_stale_s`` read as unknown (None), never as "empty queue" or "down forever". Cold-start
samples older than ``COLD_MAX_AGE_S`` are dropped (a new image or GPU changes them)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from functions.store import Store, StoreUnavailable, query_all, update_item
from functions.store.versioned import Change, Expiry

log = logging.getLogger(__name__)

PK = "TIERS"
HEALTH = "HEALTH"
LOAD = "LOAD"
DEGRADED = "DEGRADED"
COLD = "COLD"
SERVED = "SERVED"
COLD_SAMPLES = 16  # the window of recent loads the estimate is taken over
COLD_PERCENTILE = 90  # a high percentile: a budget is a promise, plan for the slow loads
COLD_MAX_AGE_S = 7 * 86_400
MAX_DETAIL = 200  # a probe's error text, kept short: it travels in route reasons

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Load:
    queue_depth: int
    running: int
    warm: bool
    cold_start_ms: int | None  # the last observed load-on-demand time; None: never seen
    updated_at: float
    tokens_per_second: float | None = None
    # Ready replicas behind the endpoint, when it says (an activator balancing over several;
    # a Knative pod's own metrics describe that pod only): None reads as one.
    replicas: int | None = None


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    since: float  # when it last changed between healthy and unhealthy
    checked_at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Degradation:
    source: str  # who said so (the network event's source), the key a restore names
    cause: str
    since: float
    until: float


@dataclass(frozen=True, slots=True)
class ColdStarts:
    """Measured cold starts of one endpoint, oldest first (ms)."""

    samples: tuple[int, ...]

    @property
    def estimate_ms(self) -> int:
        """The ``COLD_PERCENTILE`` th percentile (nearest rank) of the window."""
        ordered = sorted(self.samples)
        rank = -(-COLD_PERCENTILE * len(ordered) // 100)  # ceil, integers only
        return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Served:
    """The endpoint's last answer and the prefill speed learned from its answers."""

    at: float
    prefill_tokens_per_s: float | None = None
    age_s: float = 0.0  # how long ago ``at`` was when the snapshot was read


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model's infer function on one cluster; None fields are unknown (or stale)."""

    health: Health | None = None
    load: Load | None = None
    cold: ColdStarts | None = None
    served: Served | None = None


@dataclass(frozen=True, slots=True)
class ClusterState:
    name: str
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)  # by model name
    degradations: tuple[Degradation, ...] = ()  # active ones only, longest-lasting first

    @property
    def degraded(self) -> Degradation | None:
        return self.degradations[0] if self.degradations else None

    def endpoint(self, model: str) -> Endpoint:
        return self.endpoints.get(model, _UNKNOWN)


_UNKNOWN = Endpoint()


class TierStates:
    """Reads (cached for ``cache_s``) and writes of the shared live state."""

    def __init__(
        self,
        store: Store,
        clock: Clock = time.time,
        *,
        cache_s: float = 0.25,
        load_stale_s: float = 15.0,
        health_stale_s: float = 60.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cache_s = cache_s
        self.load_stale_s = load_stale_s
        self.health_stale_s = health_stale_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, ClusterState]] | None = None

    # -- reads -------------------------------------------------------------------------------

    def snapshot(self) -> Mapping[str, ClusterState]:
        """Every cluster with any state, by name; clusters never reported are absent.

        If the store cannot be read, the last snapshot is returned while there is one: routing
        on a slightly old view beats refusing traffic, and the ingress fails over anyway."""
        now = self.clock()
        with self._lock:
            cached = self._cached
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        try:
            states = self._read(now)
        except StoreUnavailable:
            if cached is None:
                raise
            age = now - cached[0]
            log.warning("tier state unreadable, routing on the view of %.1f s ago", age)
            return cached[1]
        with self._lock:
            self._cached = (now, states)
        return states

    def _read(self, now: float) -> dict[str, ClusterState]:
        endpoints: dict[str, dict[str, Endpoint]] = {}
        degradations: dict[str, tuple[Degradation, ...]] = {}
        for item in query_all(self.store, PK):
            cluster, kind, model = _parse_sk(item.sk)
            if kind == DEGRADED:
                degradations[cluster] = _active(item.data, now)
                continue
            current = endpoints.setdefault(cluster, {}).get(model, _UNKNOWN)
            if kind == HEALTH:
                health = _health(item.data)
                fresh = now - health.checked_at <= self.health_stale_s
                current = replace(current, health=health if fresh else None)
            elif kind == LOAD:
                load = _load(item.data)
                fresh = now - load.updated_at <= self.load_stale_s
                current = replace(current, load=load if fresh else None)
            else:
                current = _learned(current, kind, item.data, now)
            endpoints[cluster][model] = current
        names = sorted(endpoints.keys() | degradations.keys())
        return {n: ClusterState(n, endpoints.get(n, {}), degradations.get(n, ())) for n in names}

    # -- writes ------------------------------------------------------------------------------

    def report_health(self, cluster: str, model: str, healthy: bool, detail: str = "") -> Health:
        """Record a health verdict; ``since`` only moves when the verdict changes."""
        now = self.clock()

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            since = now
            if data is not None and data["healthy"] == healthy:
                since = data["since"]
            return {
                "healthy": healthy,
                "since": since,
                "checked_at": now,
                "detail": detail[:MAX_DETAIL],
            }

        return _health(self._update(f"{cluster}#{HEALTH}#{model}", change))

    def report_load(
        self,
        cluster: str,
        model: str,
        *,
        queue_depth: int,
        running: int,
        warm: bool,
        cold_start_ms: int | None = None,
        tokens_per_second: float | None = None,
        replicas: int | None = None,
    ) -> Load:
        """Record a load observation; a cold-start time is kept until a newer one is seen."""
        now = self.clock()

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            kept = cold_start_ms
            if kept is None and data is not None:
                kept = data.get("cold_start_ms")
            return {
                "queue_depth": queue_depth,
                "running": running,
                "warm": warm,
                "cold_start_ms": kept,
                "tokens_per_second": tokens_per_second,
                "replicas": replicas,
                "updated_at": now,
            }

        return _load(self._update(f"{cluster}#{LOAD}#{model}", change))

    def record_cold_starts(self, cluster: str, model: str, samples_ms: list[int]) -> ColdStarts:
        """Add measured cold starts to the endpoint's window (the oldest fall out)."""
        now = self.clock()

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            kept = _recent_samples(data, now)
            kept.extend([now, int(ms)] for ms in samples_ms)
            return {"samples": kept[-COLD_SAMPLES:]}

        data = self._update(f"{cluster}#{COLD}#{model}", change)
        return ColdStarts(tuple(ms for _, ms in data["samples"]))

    def record_served(
        self,
        cluster: str,
        model: str,
        *,
        at: float,
        prefill: tuple[int, int] | None = None,
    ) -> Served:
        """The endpoint answered at ``at``; ``prefill`` (prompt tokens, ms) observed since the
        last record updates its prefill speed (an average weighted towards the recent)."""

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            speed = None if data is None else data.get("prefill_tokens_per_s")
            if prefill is not None and prefill[0] > 0:
                tokens, ms = prefill
                seen = tokens * 1000 / max(ms, 1)
                speed = seen if speed is None else 0.7 * speed + 0.3 * seen
            latest = max(at, data["at"]) if data is not None else at
            return {"at": latest, "prefill_tokens_per_s": speed}

        data = self._update(f"{cluster}#{SERVED}#{model}", change)
        return Served(data["at"], data.get("prefill_tokens_per_s"))

    def report_warm(self, cluster: str, model: str) -> None:
        """A warm-up answered: the model is loaded now, whatever the last probe said (its queue
        and load figures stay until the next probe replaces them)."""
        now = self.clock()

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            base = data or {"queue_depth": 0, "running": 0, "cold_start_ms": None}
            return {**base, "warm": True, "updated_at": now}

        self._update(f"{cluster}#{LOAD}#{model}", change)

    def degrade(self, cluster: str, cause: str, until: float, source: str) -> Degradation:
        """Mark the cluster degraded by ``source`` until ``until`` (epoch seconds). A renewal
        from the same source extends it (never shortens it) and keeps its ``since``."""
        now = self.clock()

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            entries = _live_entries(data, now)
            previous = entries.get(source)
            entries[source] = {
                "cause": cause,
                "since": previous["since"] if previous else now,
                "until": max(until, previous["until"]) if previous else until,
            }
            return {"sources": entries}

        data = self._update(f"{cluster}#{DEGRADED}", change, expires_at=_expiry)
        entry = data["sources"][source]
        return Degradation(source, entry["cause"], entry["since"], entry["until"])

    def restore(self, cluster: str, source: str) -> bool:
        """Lift ``source``'s degradation of the cluster; False if it had none (a duplicate or
        late restore is harmless). Other sources' degradations stay."""
        now = self.clock()
        lifted = False

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            nonlocal lifted
            entries = _live_entries(data, now)
            lifted = entries.pop(source, None) is not None
            return {"sources": entries}

        self._update(f"{cluster}#{DEGRADED}", change, expires_at=_expiry)
        return lifted

    def _update(
        self,
        sk: str,
        change: Change,
        expires_at: Expiry | None = None,
    ) -> dict[str, Any]:
        item = update_item(self.store, PK, sk, change, expires_at=expires_at)
        with self._lock:
            self._cached = None  # this instance sees its own writes at once
        return item.data


def _parse_sk(sk: str) -> tuple[str, str, str]:
    cluster, _, rest = sk.partition("#")
    kind, _, model = rest.partition("#")
    return cluster, kind, model


def _health(data: dict[str, Any]) -> Health:
    return Health(data["healthy"], data["since"], data["checked_at"], data.get("detail", ""))


def _load(data: dict[str, Any]) -> Load:
    return Load(
        queue_depth=data["queue_depth"],
        running=data["running"],
        warm=data["warm"],
        cold_start_ms=data.get("cold_start_ms"),
        updated_at=data["updated_at"],
        tokens_per_second=data.get("tokens_per_second"),
        replicas=data.get("replicas"),
    )


def _learned(current: Endpoint, kind: str, data: dict[str, Any], now: float) -> Endpoint:
    if kind == COLD:
        samples = tuple(ms for _, ms in _recent_samples(data, now))
        return replace(current, cold=ColdStarts(samples) if samples else None)
    if kind == SERVED:
        served = Served(data["at"], data.get("prefill_tokens_per_s"), max(0.0, now - data["at"]))
        return replace(current, served=served)
    return current  # a kind this version does not know: written by a newer one, ignored


def _recent_samples(data: dict[str, Any] | None, now: float) -> list[list[Any]]:
    samples: list[list[Any]] = (data or {}).get("samples", [])
    return [list(s) for s in samples if now - s[0] <= COLD_MAX_AGE_S]


def _live_entries(data: dict[str, Any] | None, now: float) -> dict[str, dict[str, Any]]:
    """The unexpired degradations of an item (expired ones are dropped on every write)."""
    sources: dict[str, dict[str, Any]] = (data or {}).get("sources", {})
    return {s: dict(e) for s, e in sources.items() if e["until"] > now}


def _active(data: dict[str, Any], now: float) -> tuple[Degradation, ...]:
    entries = [
        Degradation(s, e["cause"], e["since"], e["until"])
        for s, e in _live_entries(data, now).items()
    ]
    return tuple(sorted(entries, key=lambda d: (-d.until, d.source)))


def _expiry(data: dict[str, Any]) -> int | None:
    """Let the store drop a degradation item a day after its last entry ended (DynamoDB TTL);
    reads never rely on it, they compare ``until`` with the clock."""
    untils = [e["until"] for e in data["sources"].values()]
    return int(max(untils)) + 86_400 if untils else None
