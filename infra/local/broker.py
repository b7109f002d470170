"""The local broker behind ``tollgate up``: Knative Broker/Trigger semantics on one machine.

- ``POST /`` takes a CloudEvent (binary or structured) and answers 202 once it is durably queued
  for every trigger whose filter it matches (exact match on each filter attribute); a duplicate
  (same source + id) is accepted and dropped.
- Each queued delivery is POSTed in binary mode to its trigger's subscriber by a bounded worker
  pool. 2xx is done (a reply event in the response is published back into the broker, as
  Knative's Trigger does); 4xx other than 429 is never retried; 5xx, 429, timeouts and refused
  connections are retried with the trigger's backoff. Given up, the event goes to the
  dead-letter sink with the ``knativeerrordest``/``knativeerrorcode``/``knativeerrordata``
  extensions Knative adds.
- Delivery is at least once and unordered, as on Knative: a crash mid-delivery redelivers.
- Senders are checked as Knative's broker ingress checks them with ``authentication-oidc`` and
  ``default-authorization-mode: deny-all``: no valid token for the broker's audience is 401, a
  sender no event policy allows to send that event is 403. Each delivery carries a token of its
  trigger's identity for the subscriber's audience, and a subscriber's reply is published as that
  trigger (a reply no policy allows fails the delivery, as Knative's would).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import requests
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    from_structured_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from functions.app import register_error_handlers
from functions.auth.senders import Senders
from functions.errors import BadRequest
from infra.local.broker_faults import DeliveryFaults
from infra.local.broker_queue import BrokerQueue, PendingDelivery

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT_S = 30.0
# Knative truncates the failed response it attaches to a dead letter; so do we.
ERROR_DATA_BYTES = 1024
# The dispatcher re-reads the queue at least this often, whatever it was told.
MAX_IDLE_S = 1.0
PRUNE_EVERY_S = 3600.0
_STRUCTURED = {"content-type": "application/cloudevents+json"}


@dataclass(frozen=True)
class DeliveryPolicy:
    """A Trigger's ``spec.delivery``."""

    retry: int
    backoff_policy: Literal["exponential", "linear"] = "exponential"
    backoff_delay_s: float = 0.5
    dead_letter_sink: str | None = None
    dead_letter_audience: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * retry_number
        return float(self.backoff_delay_s * 2**retry_number)


@dataclass(frozen=True)
class BrokerTrigger:
    """A Trigger: which events (exact-match attribute filter) go to which subscriber URL."""

    name: str
    filter: Mapping[str, str]
    subscriber: str
    delivery: DeliveryPolicy
    account: str = ""  # the trigger's ServiceAccount: who its deliveries and replies come from
    audience: str = ""  # the subscriber's

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(key) == value for key, value in self.filter.items())


@dataclass(frozen=True)
class _Outcome:
    code: int | None  # None: no HTTP answer at all (refused, timed out)
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def retriable(self) -> bool:
        return self.code is None or self.code == 429 or self.code >= 500


def read_event(headers: Mapping[str, str], body: bytes) -> BaseCloudEvent:
    """A CloudEvent from an HTTP message in either mode; BadRequest says what is wrong."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return from_http_event(HTTPMessage(headers=lowered, body=body))
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
        raise BadRequest(
            f"not a valid CloudEvent: {exc}. Send CloudEvents 1.0 in binary mode (ce-* headers) "
            "or structured mode (Content-Type: application/cloudevents+json)."
        ) from exc


def filter_attributes(event: BaseCloudEvent) -> dict[str, str]:
    """Every attribute (extensions too) as the string a Trigger filter compares against."""
    return {k: v if isinstance(v, str) else str(v) for k, v in event.get_attributes().items()}


# (ServiceAccount, audience) -> a token of that identity for that audience.
TokenSource = Callable[[str, str], str]


class Broker:
    def __init__(
        self,
        queue: BrokerQueue,
        triggers: Sequence[BrokerTrigger],
        *,
        senders: Senders,
        tokens: TokenSource,
        namespace: str,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.time,
        faults: DeliveryFaults | None = None,
    ) -> None:
        """``faults``: chaos runs only (infra/local/broker_faults.py)."""
        self.queue = queue
        self.senders = senders
        self._tokens = tokens
        self._namespace = namespace
        self.triggers = {s.name: s for s in triggers}
        self._faults = faults
        self._workers = workers
        self._clock = clock
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="broker-delivery")
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="broker", daemon=True)
        self._sessions = threading.local()

    # -- ingest -------------------------------------------------------------------------------

    def ingest(self, headers: Mapping[str, str], body: bytes) -> None:
        """An event POSTed to the broker: its sender checked (401/403), then published."""
        sender = self.senders.authenticate(headers)
        event = read_event(headers, body)
        self.senders.authorize(sender, filter_attributes(event))
        self.publish(event)

    def publish(self, event: BaseCloudEvent) -> bool:
        """Queue ``event`` for every matching trigger; False if it is a duplicate."""
        attributes = filter_attributes(event)
        targets = [s.name for s in self.triggers.values() if s.matches(attributes)]
        body = to_structured_event(event).body
        fresh = self.queue.add(event.get_source(), event.get_id(), body, targets, self._clock())
        if fresh and targets:
            self._kick.set()
        elif fresh:
            log.debug("no trigger matches %s (%s); dropped", event.get_type(), event.get_id())
        return fresh

    # -- dispatch -----------------------------------------------------------------------------

    def start(self) -> None:
        self._dispatcher.start()

    def stop(self) -> None:
        """Stop taking deliveries and wait for those in flight (each bounded by its timeout)."""
        self._stopping.set()
        self._kick.set()
        if self._dispatcher.is_alive():
            self._dispatcher.join()
        self._pool.shutdown(wait=True)

    def _dispatch(self) -> None:
        last_prune = 0.0
        while not self._stopping.is_set():
            now = self._clock()
            if now - last_prune > PRUNE_EVERY_S:
                self.queue.prune(now)
                last_prune = now
            with self._in_flight_lock:
                busy = tuple(self._in_flight)
            free = self._workers - len(busy)
            for delivery in self.queue.due(now, free, busy) if free > 0 else ():
                with self._in_flight_lock:
                    self._in_flight.add(delivery.seq)
                self._pool.submit(self._attempt, delivery)
            self._kick.wait(self._idle_seconds(now))
            self._kick.clear()

    def _idle_seconds(self, now: float) -> float:
        """Until the next delivery is due; a new event or a finishing worker wakes us earlier."""
        with self._in_flight_lock:
            busy = tuple(self._in_flight)
        next_due = self.queue.next_due(busy) if len(busy) < self._workers else None
        if next_due is None:
            return MAX_IDLE_S
        return min(MAX_IDLE_S, max(next_due - now, 0.0))

    def _attempt(self, delivery: PendingDelivery) -> None:
        try:
            trigger = self.triggers.get(delivery.trigger)
            if trigger is None:
                # Queued under a trigger the template no longer has: keep it for an operator.
                log.error("trigger %s is gone; delivery %d kept", delivery.trigger, delivery.seq)
                self.queue.fail(delivery.seq)
            elif delivery.stage == "deadletter":
                self._to_dead_letter_sink(trigger, delivery)
            else:
                self._to_subscriber(trigger, delivery)
        except Exception:  # a bug must not kill the worker; the row stays and is retried
            log.exception("delivery %d failed unexpectedly", delivery.seq)
            with contextlib.suppress(Exception):  # later, not in a hot loop
                self.queue.retry(delivery.seq, delivery.attempt, self._clock() + MAX_IDLE_S)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(delivery.seq)
            self._kick.set()

    def _token(self, trigger: BrokerTrigger, audience: str) -> str:
        return self._tokens(trigger.account, audience)

    def _to_subscriber(self, trigger: BrokerTrigger, delivery: PendingDelivery) -> None:
        event = _stored_event(delivery.body)
        token = self._token(trigger, trigger.audience)
        outcome = self._post(trigger.subscriber, event, trigger.delivery.timeout_s, token)
        if outcome.ok:
            refused = self._publish_reply(trigger, outcome)
            if refused is not None:
                self._give_up(trigger, delivery, refused)
                return
            self.queue.done(delivery.seq)
        elif outcome.retriable and delivery.attempt < trigger.delivery.retry:
            self._retry(trigger, delivery)
        else:
            self._give_up(trigger, delivery, outcome)

    def _publish_reply(self, trigger: BrokerTrigger, outcome: _Outcome) -> _Outcome | None:
        """Publish the subscriber's reply as its trigger; an outcome to fail the delivery with
        when the broker's policy refuses the reply from that trigger."""
        headers = {k.lower(): v for k, v in outcome.headers.items()}
        structured = headers.get("content-type", "").startswith("application/cloudevents")
        if "ce-id" not in headers and not structured:
            return None  # a plain 2xx: nothing to reply
        try:
            reply = read_event(headers, outcome.body)
        except BadRequest as exc:
            log.warning("%s replied with an invalid event, ignored: %s", trigger.subscriber, exc)
            return None
        subject = f"system:serviceaccount:{self._namespace}:{trigger.account}"
        if not self.senders.policy.permits(subject, filter_attributes(reply)):
            log.error("%s may not publish its reply %s: refused", subject, reply.get_type())
            return _Outcome(403, {}, f"reply {reply.get_type()} refused by policy".encode())
        # Published before the delivery is marked done: a crash in between redelivers, and the
        # reply (its id derived from its cause) is then deduped here.
        self.publish(reply)
        return None

    def _retry(self, trigger: BrokerTrigger, delivery: PendingDelivery) -> None:
        retry_number = delivery.attempt + 1
        due = self._clock() + trigger.delivery.backoff(retry_number)
        self.queue.retry(delivery.seq, retry_number, due)
        self._kick.set()

    def _give_up(
        self, trigger: BrokerTrigger, delivery: PendingDelivery, outcome: _Outcome
    ) -> None:
        data = base64.b64encode(outcome.body[:ERROR_DATA_BYTES]).decode("ascii")
        if trigger.delivery.dead_letter_sink is None:
            log.error(
                "undeliverable to %s (HTTP %s), no dead-letter sink: kept",
                trigger.name,
                outcome.code,
            )
            self.queue.fail(delivery.seq)
            return
        log.warning("giving up on %s (HTTP %s): dead-lettering", trigger.subscriber, outcome.code)
        self.queue.dead_letter(delivery.seq, outcome.code, data, self._clock())
        self._kick.set()

    def _to_dead_letter_sink(self, trigger: BrokerTrigger, delivery: PendingDelivery) -> None:
        sink = trigger.delivery.dead_letter_sink
        assert sink is not None  # only rows of a trigger with a sink reach this stage
        extensions = {
            "knativeerrordest": trigger.subscriber,
            "knativeerrordata": delivery.error_data,
        }
        if delivery.error_code is not None:
            extensions["knativeerrorcode"] = str(delivery.error_code)
        event = _stored_event(delivery.body, extensions)
        token = self._token(trigger, trigger.delivery.dead_letter_audience)
        outcome = self._post(sink, event, trigger.delivery.timeout_s, token)
        if outcome.ok:
            self.queue.done(delivery.seq)
        elif outcome.retriable and delivery.attempt < trigger.delivery.retry:
            self._retry(trigger, delivery)
        else:
            log.error(
                "the dead-letter sink %s refused an event (HTTP %s): kept", sink, outcome.code
            )
            self.queue.fail(delivery.seq)

    def _post(self, url: str, event: BaseCloudEvent, timeout_s: float, token: str) -> _Outcome:
        if self._faults is None:
            return self._send(url, event, timeout_s, token)
        return self._faults.deliver(
            lambda: self._send(url, event, timeout_s, token),
            lambda: _Outcome(None, {}, b"lost (fault injection)"),
            f"{event.get_type()} {event.get_id()}",
        )

    def _send(self, url: str, event: BaseCloudEvent, timeout_s: float, token: str) -> _Outcome:
        message = to_binary_event(event)
        headers = {**message.headers, "Authorization": f"Bearer {token}"}
        session: requests.Session | None = getattr(self._sessions, "session", None)
        if session is None:
            # requests sessions are not shared across threads: one per delivery worker.
            session = self._sessions.session = requests.Session()
        try:
            response = session.post(url, headers=headers, data=message.body, timeout=timeout_s)
        except requests.RequestException as exc:
            return _Outcome(None, {}, f"{exc.__class__.__name__}: {exc}".encode())
        return _Outcome(response.status_code, dict(response.headers), response.content)


def _stored_event(body: bytes, extensions: Mapping[str, Any] | None = None) -> BaseCloudEvent:
    event = from_structured_event(HTTPMessage(headers=_STRUCTURED, body=body))
    if not extensions:
        return event
    return CloudEvent({**event.get_attributes(), **extensions}, event.get_data())


def broker_app(broker: Broker) -> Flask:
    app = Flask("broker")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.post("/")
    def ingest() -> tuple[str, int]:
        broker.ingest(dict(request.headers), request.get_data())
        return "", 202

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", function="broker", deliveries=broker.queue.counts())

    register_error_handlers(app)
    return app


class BrokerServer:
    """The broker and its HTTP ingress, run in threads of the calling process."""

    def __init__(self, broker: Broker, port: int, host: str = "127.0.0.1") -> None:
        self.broker = broker
        self._server: BaseWSGIServer = make_server(host, port, broker_app(broker), threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="broker-http", daemon=True
        )
        self.url = f"http://{host}:{self._server.server_port}"

    def start(self) -> None:
        self.broker.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, then finish the deliveries in flight; the queue keeps the rest."""
        self._server.shutdown()
        self._server.server_close()
        self.broker.stop()
        self.broker.queue.close()
