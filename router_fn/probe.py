"""Health and load of every infer function, polled and written to the shared tier state.

Each (cluster, model) infer function is asked ``/readyz`` and ``/metrics`` with short timeouts,
all endpoints in parallel so one hung cluster cannot delay the others. One failed probe is noise;
``failures_to_unhealthy`` in a row mark the endpoint unhealthy, one success marks it healthy.
Failure counts live in the prober (each prober judges what it saw); the verdicts are shared."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

from router_fn.tierstate import TierStates
from router_fn.topology import Topology

log = logging.getLogger(__name__)

PREFIX = "tollgate_infer_"


@dataclass(frozen=True, slots=True)
class Sample:
    """What one endpoint's /metrics said."""

    queue_depth: int
    running: int
    warm: bool
    cold_start_ms: int | None
    tokens_per_second: float | None
    replicas: int | None = None  # ready replicas, from something balancing over several


@dataclass(frozen=True, slots=True)
class ProbeResult:
    cluster: str
    model: str
    ok: bool
    detail: str = ""
    sample: Sample | None = None


def parse_metrics(text: str) -> Sample:
    """The load gauges of infer_fn/metrics.py from a Prometheus text exposition."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if not sample.labels:  # labelled families (tokens by kind, requests) are not load
                values[sample.name] = sample.value
    missing = {"queue_depth", "running", "loaded"} - {k[len(PREFIX) :] for k in values}
    if missing:
        raise ValueError(f"metrics lack {', '.join(sorted(PREFIX + m for m in missing))}")
    cold_count = values.get(PREFIX + "cold_start_seconds_count", 0.0)
    cold_sum = values.get(PREFIX + "cold_start_seconds_sum", 0.0)
    tps = values.get(PREFIX + "tokens_per_second")
    replicas = values.get(PREFIX + "replicas")
    return Sample(
        queue_depth=int(values[PREFIX + "queue_depth"]),
        running=int(values[PREFIX + "running"]),
        warm=values[PREFIX + "loaded"] >= 1,
        # The mean of this process's cold starts: what its next one will likely cost.
        cold_start_ms=round(cold_sum * 1000 / cold_count) if cold_count else None,
        tokens_per_second=tps if tps else None,
        replicas=None if replicas is None else int(replicas),
    )


class Prober:
    def __init__(
        self,
        topology: Topology,
        states: TierStates,
        *,
        timeout_s: float = 1.0,
        failures_to_unhealthy: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        self.topology = topology
        self.states = states
        self.timeout_s = timeout_s
        self.failures_to_unhealthy = failures_to_unhealthy
        self.session = session or requests.Session()
        self.endpoints = sorted(
            (c.name, model, url) for c in topology.clusters for model, url in c.infer_urls.items()
        )
        self._failures: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(16, len(self.endpoints))), thread_name_prefix="probe"
        )

    def run_once(self) -> list[ProbeResult]:
        """Probe every endpoint once and record what was learnt."""
        results = list(self._pool.map(lambda e: self._probe(*e), self.endpoints))
        for result in results:
            self._record(result)
        return results

    def _probe(self, cluster: str, model: str, url: str) -> ProbeResult:
        base = url.rstrip("/")
        try:
            ready = self.session.get(f"{base}/readyz", timeout=self.timeout_s)
            if ready.status_code != 200:
                return ProbeResult(cluster, model, False, f"readyz {ready.status_code}")
            metrics = self.session.get(f"{base}/metrics", timeout=self.timeout_s)
            metrics.raise_for_status()
            return ProbeResult(cluster, model, True, sample=parse_metrics(metrics.text))
        except requests.Timeout:
            return ProbeResult(cluster, model, False, f"no answer within {self.timeout_s:g} s")
        except requests.RequestException as exc:
            return ProbeResult(cluster, model, False, f"unreachable: {type(exc).__name__}")
        except ValueError as exc:  # an unparseable /metrics is as useless as none
            return ProbeResult(cluster, model, False, f"bad metrics: {exc}")

    def _record(self, result: ProbeResult) -> None:
        key = (result.cluster, result.model)
        with self._lock:
            failures = 0 if result.ok else self._failures.get(key, 0) + 1
            self._failures[key] = failures
        if result.sample is not None:
            s = result.sample
            self.states.report_load(
                result.cluster,
                result.model,
                queue_depth=s.queue_depth,
                running=s.running,
                warm=s.warm,
                cold_start_ms=s.cold_start_ms,
                tokens_per_second=s.tokens_per_second,
                replicas=s.replicas,
            )
        if result.ok:
            self.states.report_health(result.cluster, result.model, True)
        elif failures >= self.failures_to_unhealthy:
            detail = f"{failures} probes failed, last: {result.detail}"
            self.states.report_health(result.cluster, result.model, False, detail)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.session.close()


class BackgroundProber:
    """Runs a Prober every ``interval_s`` on a daemon thread until ``stop()``."""

    def __init__(self, prober: Prober, interval_s: float = 2.0) -> None:
        self.prober = prober
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tier-prober", daemon=True)

    def start(self) -> BackgroundProber:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prober.run_once()
            except Exception:  # the store may be briefly down: keep probing, never die
                log.exception("tier probe round failed")
            self._stop.wait(self.interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.prober.close()


def start_probing(
    topology: Topology,
    states: TierStates,
    *,
    interval_s: float = 2.0,
    timeout_s: float = 1.0,
    failures_to_unhealthy: int = 3,
) -> BackgroundProber:
    """The one call a process makes to keep the tier state fresh; ``stop()`` it on shutdown."""
    prober = Prober(
        topology, states, timeout_s=timeout_s, failures_to_unhealthy=failures_to_unhealthy
    )
    return BackgroundProber(prober, interval_s).start()
