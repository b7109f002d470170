"""PingSource emulation for ``tollgate up``: template pings fired on their cron schedule (UTC).

Each firing is POSTed to the broker exactly as Knative's PingSource sends it: type
``dev.knative.sources.ping``, source ``/apis/v1/namespaces/<ns>/pingsources/<name>``, the Tollgate
type in the ``tollgatetype`` extension, the ping's data as JSON. The event id is derived from the
ping and its minute, so a slot fired twice is deduplicated by the broker. Like PingSource, slots
missed while nothing was running are not made up.

Schedules are read by croniter, as the template's validation reads them: Vixie cron's rules, so
when both day fields are restricted a day matching either fires, and 7 is Sunday too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence

import requests
from cloudevents.core.v1.event import CloudEvent
from croniter import croniter

from functions.cloudevent import to_binary
from infra.template.catalog import PING_EVENT_TYPE, PING_TYPE_EXTENSION
from infra.template.schema import Ping

log = logging.getLogger(__name__)

_ID_NAMESPACE = uuid.UUID("0b7e2f38-2d0e-4c8e-9a51-6f3f1f0f6c21")
POST_TIMEOUT_S = 5.0


def fires_at(schedule: str, minute: dt.datetime) -> bool:
    """Whether a ping on ``schedule`` fires in ``minute`` (UTC, as PingSource reads schedules)."""
    return bool(croniter.match(schedule, minute.astimezone(dt.UTC), day_or=True))


def ping_event(namespace: str, ping: Ping, slot: dt.datetime) -> CloudEvent:
    """The event Knative's PingSource sends for ``ping`` at ``slot``, with a slot-derived id."""
    return CloudEvent(
        {
            "type": PING_EVENT_TYPE,
            "source": f"/apis/v1/namespaces/{namespace}/pingsources/{ping.name}",
            "id": str(uuid.uuid5(_ID_NAMESPACE, f"{namespace}/{ping.name}#{slot.isoformat()}")),
            "time": slot,
            "datacontenttype": "application/json",
            PING_TYPE_EXTENSION: ping.type,
        },
        ping.payload.encode(),
    )


def _minute(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(second=0, microsecond=0)


class Scheduler:
    """Fires every ping whose schedule matches a minute that passed since the last tick."""

    def __init__(
        self,
        namespace: str,
        pings: Sequence[Ping],
        send: Callable[[CloudEvent], object],
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._namespace = namespace
        self._pings = tuple(pings)
        self._send = send
        self._clock = clock
        # Slots up to and including this minute were handled; the current one is still to come.
        self._done = _minute(clock())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def tick(self) -> list[CloudEvent]:
        """Send the pings of every minute in (last tick, now]; returns what was sent."""
        now = _minute(self._clock())
        sent: list[CloudEvent] = []
        slot = self._done + dt.timedelta(minutes=1)
        while slot <= now:
            for ping in self._pings:
                if fires_at(ping.schedule, slot):
                    event = ping_event(self._namespace, ping, slot)
                    try:
                        self._send(event)
                    except Exception as exc:  # the broker is local: log and keep the schedule
                        log.error("ping %s at %s not sent: %s", ping.name, slot, exc)
                    else:
                        sent.append(event)
            self._done = slot
            slot += dt.timedelta(minutes=1)
        return sent

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            now = self._clock()
            # Wake just after the next minute boundary.
            wait = 60.0 - now.second - now.microsecond / 1e6 + 0.05
            if self._stop.wait(wait):
                return
            self.tick()


def http_sender(url: str, token: Callable[[str], str]) -> Callable[[CloudEvent], None]:
    """Send pings over HTTP, as PingSource reaches a Broker: with a token of the PingSource's
    own identity (``token(ping name)``)."""
    session = requests.Session()

    def send(event: CloudEvent) -> None:
        message = to_binary(event)
        ping = event.get_source().rsplit("/", 1)[-1]
        headers = {**message.headers, "Authorization": f"Bearer {token(ping)}"}
        response = session.post(url, headers=headers, data=message.body, timeout=POST_TIMEOUT_S)
        response.raise_for_status()

    return send
