"""The broker's chaos-only delivery faults, over real HTTP: off unless configured; each kind does
what a faulty network does, and at-least-once delivery still holds; every fault is logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.local.broker import BrokerTrigger, DeliveryPolicy
from infra.local.broker_faults import ENV, DeliveryFaults, FaultSpec
from infra.local.broker_queue import BrokerQueue
from tests.trust import TestIssuer
from tests.up.subscriber import Subscriber, running, wait_until
from tests.up.test_broker import BROKER, SENDER, T1, TestBrokerServer, new_broker, post

FAST = DeliveryPolicy(retry=5, backoff_policy="linear", backoff_delay_s=0.05, timeout_s=5)


def test_no_faults_unless_the_chaos_run_names_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert DeliveryFaults.from_env() is None


@pytest.mark.parametrize(
    ("kind", "deliveries"),
    [("drop", 1), ("lose_reply", 2), ("duplicate", 2), ("delay", 1), ("reorder", 1)],
)
def test_each_fault_and_delivery_still_happens(
    tmp_path: Path, kind: str, deliveries: int, issuer: TestIssuer
) -> None:
    log = tmp_path / "faults.log"
    settings: dict[str, Any] = {"max_faults": 1, "reorder_max_s": 1.2, "delay_max_s": 0.2}
    settings[kind] = 1.0
    spec = FaultSpec(log=log, **settings)
    subscriber = Subscriber()
    with running(subscriber):
        server = TestBrokerServer(
            new_broker(
                BrokerQueue(tmp_path / "broker.db"),
                [BrokerTrigger("one", {"type": T1}, subscriber.url, FAST)],
                issuer,
                faults=DeliveryFaults(spec),
            ),
            0,
        )
        server.bearer = issuer.bearer(SENDER, BROKER)
        server.start()
        try:
            event_id = post(server, T1)
            wait_until(lambda: len(subscriber.received) >= deliveries)
            assert subscriber.ids() == [event_id] * deliveries
            wait_until(lambda: server.broker.queue.counts() == {})  # done: nothing kept
        finally:
            server.stop()
    [line] = log.read_text().splitlines()
    assert json.loads(line)["kind"] == kind
