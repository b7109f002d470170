"""PingSource emulation for ``tollgate up``: template pings fired on their cron schedule (UTC).

Each firing is POSTed to the broker exactly as Knative's PingSource sends it: type
``dev.knative.sources.ping``, source ``/apis/v1/namespaces/<ns>/pingsources/<name>``, the Tollgate
type in the ``tollgatetype`` extension, the ping's data as JSON. The event id is derived from the
ping and its minute, so a slot fired twice is deduplicated by the broker. Like PingSource, slots
missed while nothing was running are not made up.

Schedules use the five-field subset ``infra.fields`` validates (numbers, ranges, ``*``, ``/n``
steps, lists, and the @-descriptors); a minimal matcher over that subset avoids a dependency.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests
from cloudevents.core.v1.event import CloudEvent

from functions.cloudevent import to_binary
from infra.template.catalog import PING_EVENT_TYPE, PING_TYPE_EXTENSION
from infra.template.schema import Ping

log = logging.getLogger(__name__)

_ID_NAMESPACE = uuid.UUID("0b7e2f38-2d0e-4c8e-9a51-6f3f1f0f6c21")
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
POST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    # Cron's rule: when both day fields are restricted a day matches either, else both.
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, schedule: str) -> Cron:
        fields = _DESCRIPTORS.get(schedule, schedule).split()
        if len(fields) != len(_RANGES):
            raise ValueError(f"schedule {schedule!r} does not have five fields")
        sets = [_field(text, low, high) for text, (low, high) in zip(fields, _RANGES, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, fields[2] != "*", fields[4] != "*")

    def matches(self, at: dt.datetime) -> bool:
        if at.minute not in self.minutes or at.hour not in self.hours:
            return False
        if at.month not in self.months:
            return False
        day = at.day in self.days
        weekday = (at.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day or weekday
        return day and weekday


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if spec == "*":
            start, stop = low, high
        else:
            first, _, last = spec.partition("-")
            # "5/15" means from 5 to the end in steps of 15, as in Vixie cron.
            start = int(first)
            stop = int(last) if last else (high if step_text else start)
        if not low <= start <= stop <= high:
            raise ValueError(f"{item!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


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
        self._pings = [(p, Cron.parse(p.schedule)) for p in pings]
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
            for ping, cron in self._pings:
                if cron.matches(slot):
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


def http_sender(url: str) -> Callable[[CloudEvent], None]:
    """Send pings over HTTP, as PingSource reaches a Broker."""
    session = requests.Session()

    def send(event: CloudEvent) -> None:
        message = to_binary(event)
        response = session.post(
            url, headers=message.headers, data=message.body, timeout=POST_TIMEOUT_S
        )
        response.raise_for_status()

    return send
