"""Serve a function's app as its Knative container would: on PORT, with a production WSGI server
sized from the template, and a graceful stop.

Limits (waitress), so no sender can hold more than the function was sized for:
- threads: what the app says it needs (infer: one per admitted or queued request, plus probes),
  else the template's ``concurrency`` (Knative's ``containerConcurrency``, given as
  ``TOLLGATE_CONTAINER_CONCURRENCY``) plus a few for probes, else 16;
- connections: at least that many, plus headroom for probes and idle keep-alives;
- request bodies: the app's own limit plus a little, so a body past it is cut off by the server
  instead of buffered whole first (waitress would buffer up to 1 GiB), while one just past it
  still gets the app's own 413;
- idle connections (a client that sends nothing) are closed after ``channel_timeout``.

SIGTERM (Knative stopping the pod, ``tollgate up`` stopping the platform) stops taking requests,
lets those in flight finish (bounded by waitress), then delivers what the function still owes
(functions/outbox.py) for up to ``TOLLGATE_DRAIN_SECONDS``; what remains stays on disk for the
next process that opens the same outbox."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from flask import Flask
from waitress.server import BaseWSGIServer, create_server

from functions import outbox

log = logging.getLogger(__name__)

DEFAULT_THREADS = 16
PROBE_THREADS = 4
CONNECTION_HEADROOM = 32
BODY_SLACK = 64 * 1024
CHANNEL_TIMEOUT_S = 30
DRAIN_S = 5.0
# An app may say how many WSGI threads it needs (the infer function: one per admitted or queued
# request, plus probes) by setting this in app.config.
THREADS_CONFIG = "TOLLGATE_SERVER_THREADS"


@dataclass(frozen=True)
class ServerLimits:
    threads: int
    connection_limit: int
    max_request_body_size: int
    channel_timeout: int

    @classmethod
    def of(cls, app: Flask, environ: Mapping[str, str] | None = None) -> ServerLimits:
        env = os.environ if environ is None else environ
        concurrency = int(env.get("TOLLGATE_CONTAINER_CONCURRENCY") or 0)  # 0: unlimited
        threads = int(
            env.get("TOLLGATE_THREADS")
            or app.config.get(THREADS_CONFIG)
            or (concurrency + PROBE_THREADS if concurrency else DEFAULT_THREADS)
        )
        body = app.config.get("MAX_CONTENT_LENGTH") or 1 << 20
        return cls(
            threads=threads,
            connection_limit=max(threads, concurrency) + CONNECTION_HEADROOM,
            max_request_body_size=int(body) + BODY_SLACK,
            channel_timeout=int(env.get("TOLLGATE_CHANNEL_TIMEOUT_SECONDS") or CHANNEL_TIMEOUT_S),
        )


def build_server(app: Flask, port: int, host: str = "0.0.0.0") -> BaseWSGIServer:
    limits = ServerLimits.of(app)
    # waitress streams chunked bodies as they are produced (SSE is not buffered).
    return create_server(
        app,
        host=host,
        port=port,
        ident="tollgate",
        threads=limits.threads,
        connection_limit=limits.connection_limit,
        max_request_body_size=limits.max_request_body_size,
        channel_timeout=limits.channel_timeout,
    )


STOP_HOOKS = "tollgate.stop_hooks"


def on_stop(app: Flask, hook: Callable[[], None]) -> None:
    """Run ``hook`` when the server stops, after in-flight requests and before the outboxes
    drain (e.g. the ingress returns its credit leases through its outbox)."""
    app.extensions.setdefault(STOP_HOOKS, []).append(hook)


def serve(app: Flask, port: int | None = None, host: str = "0.0.0.0") -> None:
    port = port if port is not None else int(os.environ.get("PORT", "8080"))
    server = build_server(app, port, host)
    signal.signal(signal.SIGTERM, _stop)
    server.run()  # until SIGTERM: then in-flight requests finish (waitress waits up to 5 s)
    for hook in app.extensions.get(STOP_HOOKS, ()):
        hook()
    owed = outbox.drain_all(float(os.environ.get("TOLLGATE_DRAIN_SECONDS") or DRAIN_S))
    if owed:
        log.warning("stopping with %d events still owed; the next process delivers them", owed)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)
