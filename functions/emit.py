"""Emitting events to ``K_SINK`` (the Broker on Knative, the local broker under ``tollgate up``),
with this workload's token for the sink's audience as the bearer (functions/auth/tokens.py)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import urllib3

from functions.auth.tokens import SINK, TokenFile, TokenMissing
from functions.cloudevent import make_event, to_binary

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
FIRST_BACKOFF_S = 0.1
TIMEOUT_S = 5.0


class EmitFailed(Exception):
    """The sink refused the event or stayed unreachable after every retry."""


@dataclass(frozen=True)
class Sent:
    """What one POST of an event got: an HTTP status, or none at all (``problem`` says why)."""

    status: int | None
    problem: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and self.status < 300

    @property
    def refused(self) -> bool:
        """The receiver will never accept this event: retrying cannot help (4xx but 408/429)."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in (408, 429)


class Emitter:
    """POSTs binary-mode CloudEvents to one sink, retrying transient failures with backoff.

    Retries reuse the event id, so a sink that got the event but whose answer was lost dedupes
    the retry (at-least-once delivery, as Knative gives it)."""

    def __init__(
        self,
        sink: str | None,
        token: TokenFile | None,
        *,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.sink = sink
        self.token = token
        # urllib3 itself, kept alive, as the ingress calls infer: requests' per-call preparation
        # was about half of what sending one event cost (a metering event per inference).
        # No retries here: ``emit`` and the outbox retry with their own back-off.
        self._pool = pool or urllib3.PoolManager(
            maxsize=8, retries=False, timeout=urllib3.Timeout(TIMEOUT_S)
        )

    @classmethod
    def from_env(cls) -> Emitter:
        """K_SINK and the workload's token for it ($TOLLGATE_TOKEN_DIR/sink)."""
        return cls(os.environ.get("K_SINK") or None, TokenFile.from_env(SINK))

    def emit(
        self,
        type: str,
        source: str,
        data: dict[str, Any],
        *,
        id: str | None = None,
        subject: str | None = None,
        caused_by: str | None = None,
    ) -> None:
        if self.sink is None:
            log.info("K_SINK is not set; not emitting %s", type)
            return
        if self.token is None:  # no retry makes a token appear
            raise EmitFailed(f"no token for {self.sink}: the sink refuses anonymous events")
        backoff = FIRST_BACKOFF_S
        sent = Sent(None)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sent = self.send(type, source, data, id=id, subject=subject, caused_by=caused_by)
            if sent.delivered:
                return
            if sent.refused:
                break  # the sink will never accept this event; retrying cannot help
            if attempt < MAX_ATTEMPTS:
                time.sleep(backoff)
                backoff *= 2
        raise EmitFailed(f"could not deliver {type} to {self.sink}: {sent.problem}")

    def send(
        self,
        type: str,
        source: str,
        data: dict[str, Any],
        *,
        id: str | None = None,
        subject: str | None = None,
        caused_by: str | None = None,
    ) -> Sent:
        """One POST of the event to the sink, no retry: the one place an event leaves a function
        (``emit`` retries it briefly; the durable outbox, functions/outbox.py, until done)."""
        if self.sink is None:
            return Sent(None, "K_SINK is not set")
        if self.token is None:
            return Sent(None, f"no token for {self.sink}: the sink refuses anonymous events")
        message = to_binary(
            make_event(type, source, data, id=id, subject=subject, caused_by=caused_by)
        )
        try:
            # Read per send: a rotated token is picked up by the next one.
            headers = {**message.headers, **self.token.bearer()}
            response = self._pool.request("POST", self.sink, headers=headers, body=message.body)
        except TokenMissing as exc:
            return Sent(None, str(exc))
        except urllib3.exceptions.HTTPError as exc:
            return Sent(None, f"{exc.__class__.__name__}: {exc}")
        if response.status < 300:
            return Sent(response.status)
        text = response.data.decode(errors="replace")[:200]
        return Sent(response.status, f"HTTP {response.status}: {text}")
