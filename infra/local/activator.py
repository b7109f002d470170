"""The activator and queue-proxy of one infer service under ``tollgate up`` (a local tier's).

Knative puts its activator in front of a revision scaled to zero and a queue-proxy beside each
replica: they count the requests in flight (what the autoscaler scales on), buffer requests
while no replica can take them, and send each to a ready replica with a free slot (at most
containerConcurrency each). Locally one object does all of it for one service, at the URL the
router's topology names for the clusters of its tier:

- every other request is forwarded untouched (headers, body, streamed answer) to the ready
  replica with the fewest requests in flight; none free: it waits in the buffer (bounded in
  size and time: beyond them 429 with Retry-After, in OpenAI's error shape) and the scaler is
  poked, so a scale from zero starts at once; a replica that refuses the connection (it
  crashed, nothing was sent) is marked not ready and the request goes to another;
- ``/healthz`` and ``/readyz`` answer for the service (it accepts requests even at zero
  replicas); ``/readyz`` fails while replicas cannot start, so the prober marks it unhealthy;
- ``/metrics`` reports the load as the router's prober reads it (``tollgate_infer_*``: queued
  = buffered here, running = sent to replicas, loaded, tokens/s, cold starts) plus the replicas,
  so the prober never wakes a replica (on Knative its /metrics would reach a pod).

The scaler (infra/local/scaler.py) starts, readies and retires the replicas; this object only
routes to them."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from urllib3.exceptions import NewConnectionError
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from events import wire
from functions.errors import FunctionError, TooManyRequests, Unavailable
from infer_fn import metrics as infer_metrics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 900.0  # Knative's timeoutSeconds of the rendered infer services
# Not forwarded: they describe one connection, not the request (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _name(gauge: Any) -> str:
    """The infer function's metric name, as its own /metrics spells it (the prober's contract)."""
    family = gauge.describe()[0]
    return str(family.name)


QUEUE_DEPTH = _name(infer_metrics.QUEUE_DEPTH)
RUNNING = _name(infer_metrics.RUNNING)
LOADED = _name(infer_metrics.LOADED)
TOKENS_PER_SECOND = _name(infer_metrics.TOKENS_PER_SECOND)
COLD_START_SECONDS = _name(infer_metrics.COLD_START_SECONDS)
REPLICAS = "tollgate_infer_replicas"


@dataclass
class Replica:
    """One infer process behind the activator."""

    name: str  # its process name under the supervisor
    url: str
    started_at: float  # monotonic
    ready: bool = False
    ever_ready: bool = False
    draining: bool = False  # no new requests; retired once idle
    in_flight: int = 0
    startup_s: float | None = None  # process start to first ready, until a cold start counts it
    loaded: bool = False  # its engine holds the model (from its /metrics)
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class ActivatorSpec:
    cluster: str
    model: str  # the template's model name
    concurrency: int  # containerConcurrency: requests one replica serves at once
    max_replicas: int
    buffer_size: int  # requests waiting here at most, beyond that 429
    buffer_timeout_s: float  # the longest one waits for a slot, then 503
    retry_after_s: int = 1


@dataclass
class _Load:
    """Counts guarded by the activator's condition."""

    buffered: int = 0
    dispatched: int = 0
    request_seconds: float = 0.0  # integral of (buffered + dispatched) over time
    since: float = field(default_factory=time.monotonic)


class Activator:
    def __init__(
        self,
        spec: ActivatorSpec,
        poke: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        self.spec = spec
        self._poke = poke
        self._clock = clock
        self._cond = threading.Condition()
        self._replicas: dict[str, Replica] = {}
        self._load = _Load(since=clock())
        self._failure: str | None = None  # why replicas cannot start, while none is ready
        self._session = session or requests.Session()
        self._session.trust_env = False
        slots = spec.concurrency * spec.max_replicas + 4
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=spec.max_replicas, pool_maxsize=slots
        )
        self._session.mount("http://", adapter)
        self._registry = CollectorRegistry()
        self._outcomes = Counter(
            "tollgate_activator_requests",
            "Requests forwarded, by outcome (ok, failed, unreachable, rejected, timeout).",
            ["outcome"],
            registry=self._registry,
        )
        self._cold_starts = Histogram(
            COLD_START_SECONDS,
            "Time from a replica's start to its model loaded, for the request that waited on it.",
            buckets=_COLD_START_BUCKETS,
            registry=self._registry,
        )
        self._gauges()

    # -- what the scaler reads and changes ----------------------------------------------------

    def request_seconds(self) -> float:
        """Requests in flight here (buffered or at a replica) integrated over time so far."""
        with self._cond:
            return self._advance()

    def waiting(self) -> tuple[int, int]:
        """(buffered, dispatched) now."""
        with self._cond:
            return self._load.buffered, self._load.dispatched

    def replicas(self) -> list[Replica]:
        """Copies: the scaler decides on them outside the activator's lock."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._replicas.values()]

    def add(self, name: str, url: str) -> None:
        with self._cond:
            self._replicas[name] = Replica(name, url, self._clock())

    def set_ready(self, name: str, ready: bool) -> None:
        with self._cond:
            replica = self._replicas.get(name)
            if replica is None or replica.ready == ready:
                return
            replica.ready = ready
            if ready:
                if not replica.ever_ready:
                    replica.ever_ready = True
                    replica.startup_s = self._clock() - replica.started_at
                self._failure = None
                self._cond.notify_all()

    def report(self, name: str, *, loaded: bool, tokens_per_second: float | None) -> None:
        with self._cond:
            replica = self._replicas.get(name)
            if replica is not None:
                replica.loaded = loaded
                replica.tokens_per_second = tokens_per_second or replica.tokens_per_second

    def drain(self, name: str) -> None:
        with self._cond:
            if name in self._replicas:
                self._replicas[name].draining = True

    def remove(self, name: str) -> None:
        with self._cond:
            self._replicas.pop(name, None)

    def fail(self, reason: str) -> None:
        """Replicas cannot start: requests waiting with no replica ready get a 503 at once."""
        with self._cond:
            if not any(r.ready for r in self._replicas.values()):
                self._failure = reason
                self._cond.notify_all()

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- HTTP ------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._answer(request)
        except FunctionError as error:
            response = _error(error)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/healthz":
            return _json(200, b'{"status": "ok"}')
        if request.method == "GET" and request.path == "/readyz":
            with self._cond:
                failure = self._failure
            if failure is not None:
                raise Unavailable(f"replicas of {self._label()} cannot start: {failure}")
            return _json(200, b'{"status": "ready"}')
        if request.method == "GET" and request.path == "/metrics":
            body = generate_latest(self._registry)
            return Response(body, status=200, content_type="text/plain; version=0.0.4")
        return self._forward(request)

    def _forward(self, request: Request) -> Response:
        body = request.get_data()  # before waiting: a slot is not held while the body arrives
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        # A replica that refuses the connection never saw the request (it crashed; the
        # supervisor restarts it): not ready any more, and the request goes to another.
        for _ in range(self.spec.max_replicas + 1):
            replica = self._acquire()
            try:
                upstream = self._session.request(
                    request.method,
                    replica.url + request.full_path.rstrip("?"),
                    data=body,
                    headers=headers,
                    stream=True,
                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                )
                break
            except requests.RequestException as exc:
                self._release(replica, "unreachable")
                if not _refused(exc):
                    raise Unavailable(
                        f"{self._label()}: replica {replica.name} unreachable "
                        f"({type(exc).__name__})"
                    ) from exc
                self.set_ready(replica.name, False)
        else:
            raise Unavailable(f"{self._label()}: every replica refused the connection")
        self._observe_cold_start(replica, upstream)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                upstream.close()
                self._release(replica, "ok" if upstream.status_code < 500 else "failed")

        response = Response(
            _relay(upstream, release),
            status=upstream.status_code,
            headers=[(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP],
            direct_passthrough=True,
        )
        if "content-length" in upstream.headers:
            response.headers["Content-Length"] = upstream.headers["content-length"]
        response.call_on_close(release)  # a client gone before the body started
        return response

    def _acquire(self) -> Replica:
        """A ready replica with a free slot, waiting in the buffer for one if need be."""
        spec = self.spec
        with self._cond:
            self._advance()
            replica = self._free()
            if replica is None:
                if self._load.buffered >= spec.buffer_size:
                    self._count("rejected")
                    raise TooManyRequests(
                        f"{self._label()} has {self._load.buffered} requests waiting (its "
                        "limit); retry later",
                        code="queue_full",
                        headers={"Retry-After": str(spec.retry_after_s)},
                    )
                self._load.buffered += 1
                self._poke()
                deadline = self._clock() + spec.buffer_timeout_s
                try:
                    while (replica := self._free()) is None:
                        if self._failure is not None and not self._any_ready():
                            self._count("failed")
                            raise Unavailable(
                                f"replicas of {self._label()} cannot start: {self._failure}"
                            )
                        left = deadline - self._clock()
                        if left <= 0:
                            self._count("timeout")
                            raise Unavailable(
                                f"no replica of {self._label()} took the request within "
                                f"{spec.buffer_timeout_s:g} s"
                            )
                        self._cond.wait(min(left, 1.0))
                finally:
                    self._advance()
                    self._load.buffered -= 1
            replica.in_flight += 1
            self._load.dispatched += 1
            return replica

    def _release(self, replica: Replica, outcome: str) -> None:
        with self._cond:
            self._advance()
            self._load.dispatched -= 1
            current = self._replicas.get(replica.name)
            if current is not None:
                current.in_flight -= 1
            self._count(outcome)
            self._cond.notify_all()
        if current is not None and current.draining and current.in_flight == 0:
            self._poke()  # the scaler retires it

    def _free(self) -> Replica | None:
        """The ready, not draining replica with the fewest requests in flight and a free slot."""
        free = [
            r
            for r in self._replicas.values()
            if r.ready and not r.draining and r.in_flight < self.spec.concurrency
        ]
        return min(free, key=lambda r: (r.in_flight, r.name)) if free else None

    def _any_ready(self) -> bool:
        return any(r.ready for r in self._replicas.values())

    def _advance(self) -> float:
        """Bring the in-flight integral up to now (under the condition)."""
        now = self._clock()
        load = self._load
        load.request_seconds += (load.buffered + load.dispatched) * (now - load.since)
        load.since = now
        return load.request_seconds

    def _count(self, outcome: str) -> None:
        self._outcomes.labels(outcome).inc()

    def _observe_cold_start(self, replica: Replica, upstream: requests.Response) -> None:
        """A replica's first load of the model: its process start plus the engine's load (the
        infer function says how long in a header) is what a request waited from zero."""
        loaded_ms = upstream.headers.get(wire.COLD_START_MS, "")
        if not loaded_ms.isdigit() or int(loaded_ms) == 0:  # "0": the engine was loaded already
            return
        with self._cond:
            current = self._replicas.get(replica.name)
            startup = current.startup_s if current is not None else None
            if current is not None:
                current.loaded = True
                current.startup_s = None  # later loads (after idling) are not process starts
        self._cold_starts.observe((startup or 0.0) + int(loaded_ms) / 1000)

    def _label(self) -> str:
        return f"infer {self.spec.model} on {self.spec.cluster}"

    def _gauges(self) -> None:
        """The load as the prober reads it, computed when /metrics is scraped."""

        def ready() -> list[Replica]:
            return [r for r in self._replicas.values() if r.ready]

        def speed() -> float:
            speeds = [r.tokens_per_second for r in ready() if r.tokens_per_second]
            return sum(speeds) / len(speeds) if speeds else 0.0

        for name, doc, read in (
            (
                QUEUE_DEPTH,
                "Requests buffered here, waiting for a slot.",
                lambda: self._load.buffered,
            ),
            (RUNNING, "Requests at a replica.", lambda: self._load.dispatched),
            (
                LOADED,
                "1 when a ready replica holds the model.",
                lambda: any(r.loaded for r in ready()),
            ),
            (TOKENS_PER_SECOND, "Mean of the ready replicas' last speeds.", speed),
            (REPLICAS, "Ready replicas.", lambda: len(ready())),
            ("tollgate_activator_replicas", "Replicas, ready or not.", lambda: len(self._replicas)),
        ):
            Gauge(name, doc, registry=self._registry).set_function(partial(self._read, read))

    def _read(self, read: Callable[[], float | int | bool]) -> float:
        with self._cond:
            return float(read())


def _relay(upstream: requests.Response, release: Callable[[], None]) -> Iterator[bytes]:
    """The replica's bytes as they come (undecoded: they are forwarded as sent)."""
    try:
        yield from upstream.raw.stream(None, decode_content=False)
    except Exception as exc:  # urllib3's errors: the replica died mid-answer; the client sees
        log.warning("replica stream broke: %s", exc)  # the stream end short
    finally:
        release()


def _refused(exc: requests.RequestException) -> bool:
    """The connection was never made (nothing was sent)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _json(status: int, body: bytes) -> Response:
    return Response(body, status=status, content_type="application/json")


def _error(error: FunctionError) -> Response:
    response = _json(error.status, json.dumps(error.body()).encode())
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


class ActivatorServer:
    """An activator on its own loopback port, served by threads of the calling process."""

    def __init__(self, activator: Activator, port: int, host: str = "127.0.0.1") -> None:
        self.activator = activator
        self._server: BaseWSGIServer = make_server(host, port, activator, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name=f"activator-{activator.spec.cluster}-{activator.spec.model}",
            daemon=True,
        )
        self.url = f"http://{host}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.activator.wake_all()
