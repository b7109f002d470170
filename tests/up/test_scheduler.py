"""PingSource emulation: cron slots (UTC), Knative's ping event shape, double fires deduped."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cloudevents.core.v1.event import CloudEvent

from infra.local.broker import BrokerTrigger, DeliveryPolicy
from infra.local.broker_queue import BrokerQueue
from infra.local.scheduler import Scheduler, fires_at, ping_event
from infra.template.catalog import PING_EVENT_TYPE
from infra.template.schema import Ping
from tests.trust import TestIssuer
from tests.up.subscriber import Subscriber, running, wait_until
from tests.up.test_broker import new_broker

SWEEP = Ping(name="holds-sweep", schedule="* * * * *", type="io.tollgate.holds.sweep.v1")
MONTHLY = Ping(
    name="monthly-grants",
    schedule="0 0 1 * *",
    type="io.tollgate.credits.grant.v1",
    data={"plans": "due"},
)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("schedule", "matching", "not_matching"),
    [
        ("* * * * *", "2026-12-01T10:07", None),
        ("*/15 * * * *", "2026-12-01T10:45", "2026-12-01T10:46"),
        ("5/20 8-9 * * *", "2026-12-01T09:45", "2026-12-01T10:05"),
        ("0 0 1 * *", "2026-12-01T00:00", "2026-12-02T00:00"),
        ("0 12 * * 1-5", "2026-12-04T12:00", "2026-12-05T12:00"),  # Friday yes, Saturday no
        ("0 0 * * 7", "2026-12-06T00:00", "2026-12-07T00:00"),  # 7 is Sunday
        # Both day fields restricted: either matches (the 15th, or any Monday).
        ("0 0 15 * 1", "2026-12-07T00:00", "2026-12-08T00:00"),
        ("@hourly", "2026-12-01T03:00", "2026-12-01T03:01"),
        ("0,30 * * 6,12 *", "2026-12-01T03:30", "2026-11-01T03:30"),
    ],
)
def test_cron_matches_the_validated_subset(
    schedule: str, matching: str, not_matching: str | None
) -> None:
    assert fires_at(schedule, at(matching))
    if not_matching:
        assert not fires_at(schedule, at(not_matching))


def test_a_ping_is_the_event_knatives_pingsource_sends() -> None:
    slot = at("2026-12-01T00:00")
    event = ping_event("tollgate", MONTHLY, slot)
    attributes = event.get_attributes()
    assert attributes["type"] == PING_EVENT_TYPE
    assert attributes["source"] == "/apis/v1/namespaces/tollgate/pingsources/monthly-grants"
    assert attributes["tollgatetype"] == "io.tollgate.credits.grant.v1"
    assert attributes["time"] == slot
    data = event.get_data()
    assert isinstance(data, bytes) and json.loads(data) == {"plans": "due"}
    # The id is the slot's: a second firing of the same slot is the same event.
    assert event.get_id() == ping_event("tollgate", MONTHLY, slot).get_id()
    assert event.get_id() != ping_event("tollgate", MONTHLY, at("2027-01-01T00:00")).get_id()


def test_one_ping_per_slot_and_none_for_the_past() -> None:
    clock = Clock(at("2026-11-30T23:57:30"))
    sent: list[CloudEvent] = []
    scheduler = Scheduler("tollgate", [SWEEP, MONTHLY], sent.append, clock=clock)
    assert scheduler.tick() == []  # the current minute began before we started
    clock.now = at("2026-12-01T00:00:10")
    scheduler.tick()
    scheduler.tick()  # a second tick within the same minute fires nothing more
    slots = [(e.get_attributes()["tollgatetype"], e.get_attributes()["time"]) for e in sent]
    assert slots == [
        ("io.tollgate.holds.sweep.v1", at("2026-11-30T23:58")),
        ("io.tollgate.holds.sweep.v1", at("2026-11-30T23:59")),
        ("io.tollgate.holds.sweep.v1", at("2026-12-01T00:00")),
        ("io.tollgate.credits.grant.v1", at("2026-12-01T00:00")),
    ]


def test_a_send_failure_does_not_stop_the_schedule() -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    calls: list[CloudEvent] = []

    def flaky(event: CloudEvent) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise ConnectionError("broker not up yet")

    scheduler = Scheduler("tollgate", [SWEEP], flaky, clock=clock)
    clock.now = at("2026-12-01T10:02:00")
    assert len(scheduler.tick()) == 1
    assert len(calls) == 2


def test_a_slot_fired_twice_is_delivered_once(tmp_path: Path, issuer: TestIssuer) -> None:
    subscriber = Subscriber()
    with running(subscriber):
        broker = new_broker(
            BrokerQueue(tmp_path / "broker.db"),
            [
                BrokerTrigger(
                    "sweep-ping",
                    {"type": PING_EVENT_TYPE, "tollgatetype": SWEEP.type},
                    subscriber.url,
                    DeliveryPolicy(retry=1, backoff_delay_s=0.05),
                )
            ],
            issuer,
        )
        broker.start()
        try:
            clock = Clock(at("2026-12-01T10:00:30"))
            # Two schedulers (say, a restart within the minute) fire the same slot.
            first = Scheduler("tollgate", [SWEEP], broker.publish, clock=clock)
            second = Scheduler("tollgate", [SWEEP], broker.publish, clock=clock)
            clock.now = at("2026-12-01T10:01:05")
            first.tick()
            second.tick()
            wait_until(lambda: len(subscriber.received) == 1)
            wait_until(lambda: broker.queue.counts() == {})
            assert len(subscriber.received) == 1
        finally:
            broker.stop()
