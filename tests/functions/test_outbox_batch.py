"""Routes that deliver many owed events in one go: what is due goes as one batch per source (up to
the limit), each entry keeps its own outcome (delivered, retried, dead), a batch not delivered is
retried whole under the same id, a refused batch is sent again one by one, entries claimed by a
process killed mid-attempt are delivered by its successor, and a linger gathers a steady stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from functions.emit import Emitter
from functions.outbox import (
    SINK,
    Batched,
    Batching,
    Entry,
    Outbox,
    OutboxSettings,
    Outcome,
    Verdict,
    batched_sink_route,
)
from tests.functions.test_emit import Sink
from tests.functions.test_outbox import TOKEN, run_until_killed, sink, wait_until

__all__ = ["sink"]  # the fixture, shared with test_outbox

ONE = "io.tollgate.test.v1"
MANY = "io.tollgate.tests.v1"
OTHER = "io.tollgate.other.v1"


def pack(entries: Sequence[Entry]) -> dict[str, Any]:
    return {"items": [{"id": e.id, "data": e.data} for e in entries]}


def batching(limit: int = 4) -> dict[str, Batching]:
    return {ONE: Batching(MANY, limit, pack)}


def outbox(directory: Path, url: str, limit: int = 4, **kwargs: Any) -> Outbox:
    route = batched_sink_route(Emitter(url, TOKEN), batching(limit))
    return Outbox(directory, {SINK: route}, name="batch", first_backoff_s=0.05, **kwargs)


def owe(box: Outbox, source: str, ids: range | list[int], type: str = ONE) -> None:
    """Owed later than the test looks (``deliver_due`` with an infinite horizon takes them now),
    so the delivery thread leaves them to the test."""
    for i in ids:
        box.put(type, source, {"n": i}, id=f"{source}-{i}", delay_s=60)


def test_what_is_due_goes_in_batches_per_source_up_to_the_limit(tmp_path: Path, sink: Sink) -> None:
    box = outbox(tmp_path, sink.url, limit=4)
    owe(box, "/a", range(10))
    owe(box, "/b", range(3))
    owe(box, "/a", range(10, 12), type=OTHER)  # not a batched type: alone
    assert box.deliver_due(horizon=float("inf")) == 15
    assert box.counts() == {"delivered": 15}
    batches = [e for e in sink.received if e.type == MANY]
    assert [(e.source, [i["id"] for i in e.data["items"]]) for e in batches] == [
        ("/a", [f"/a-{i}" for i in range(4)]),
        ("/a", [f"/a-{i}" for i in range(4, 8)]),
        ("/a", ["/a-8", "/a-9"]),
        ("/b", ["/b-0", "/b-1", "/b-2"]),
    ]
    assert batches[0].data["items"][1]["data"] == {"n": 1}
    assert sorted(e.id for e in sink.received if e.type == OTHER) == ["/a-10", "/a-11"]
    assert len({e.id for e in batches}) == 4  # each batch its own id
    box.close()


def test_a_batch_not_delivered_is_retried_whole_under_the_same_id(
    tmp_path: Path, sink: Sink
) -> None:
    sink.statuses[:] = [503]
    box = outbox(tmp_path, sink.url)
    owe(box, "/a", range(3))
    box.deliver_due(horizon=float("inf"))
    assert box.counts() == {"pending": 3}
    box.deliver_due(horizon=float("inf"))
    assert box.counts() == {"delivered": 3}
    first, again = sink.received
    assert first.id == again.id and first.data == again.data
    box.close()


def test_a_refused_batch_is_sent_again_one_by_one_each_with_its_own_verdict(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    # A receiver that does not take the batch type yet (404), then each entry's own answer.
    sink.statuses[:] = [404, 202, 400, 202]
    box = outbox(tmp_path, sink.url)
    owe(box, "/a", range(3))
    with caplog.at_level(logging.WARNING):
        box.deliver_due(horizon=float("inf"))
    assert box.counts() == {"delivered": 2, "dead": 1}
    assert [e.type for e in sink.received] == [MANY, ONE, ONE, ONE]
    assert [e.id for e in sink.received[1:]] == ["/a-0", "/a-1", "/a-2"]
    assert "one by one" in caplog.text and "/a-1" in caplog.text  # the dead letter, loudly
    box.close()


def test_a_batched_route_records_each_entry_outcome(tmp_path: Path) -> None:
    verdicts = {"e-0": Verdict.DELIVERED, "e-1": Verdict.RETRY, "e-2": Verdict.REFUSED}
    calls: list[list[str]] = []

    def deliver(entries: Sequence[Entry]) -> list[Outcome]:
        calls.append([e.id for e in entries])
        if len(calls) == 1:
            return [Outcome(verdicts[e.id], "as told") for e in entries]
        return [Outcome(Verdict.DELIVERED)] * len(entries)

    box = Outbox(tmp_path, {SINK: Batched(deliver)}, name="outcomes", first_backoff_s=0.05)
    for i in range(3):
        box.put(ONE, "/t", {}, id=f"e-{i}", delay_s=60)
    box.deliver_due(horizon=float("inf"))
    assert box.counts() == {"delivered": 1, "pending": 1, "dead": 1}
    box.deliver_due(horizon=float("inf"))
    assert calls == [["e-0", "e-1", "e-2"], ["e-1"]]  # only the retried one, again
    assert box.counts() == {"delivered": 2, "dead": 1}
    box.close()


@pytest.mark.parametrize("bug", ["raises", "miscounts"])
def test_a_batched_routes_bug_retries_every_entry(
    tmp_path: Path, bug: str, caplog: pytest.LogCaptureFixture
) -> None:
    def deliver(entries: Sequence[Entry]) -> list[Outcome]:
        if bug == "raises":
            raise RuntimeError("route bug")
        return [Outcome(Verdict.DELIVERED)]  # one outcome for several entries

    box = Outbox(tmp_path, {SINK: Batched(deliver)}, name="buggy")
    for i in range(3):
        box.put(ONE, "/t", {}, id=f"e-{i}", delay_s=60)
    with caplog.at_level(logging.ERROR):
        box.deliver_due(horizon=float("inf"))
    assert box.counts() == {"pending": 3}  # none lost, none marked delivered
    assert "route bug" in caplog.text or "answered 1 outcomes for 3 entries" in caplog.text
    box.close()


CLAIM_AND_DIE = """
import os, signal, sys
from functions.outbox import SINK, Batched, Outbox
def die(entries):  # killed between the claim and the record of its outcomes
    os.kill(os.getpid(), signal.SIGKILL)
box = Outbox(sys.argv[1], {SINK: Batched(die)}, name="child", claim_s=1.0)
for i in range(5):
    box.put("io.tollgate.test.v1", "/child", {"i": i}, id=f"c-{i}", delay_s=60)
box.deliver_due(horizon=float("inf"))
"""


def test_entries_claimed_by_a_killed_process_are_delivered_by_its_successor(
    tmp_path: Path, sink: Sink
) -> None:
    run_until_killed(CLAIM_AND_DIE, tmp_path)
    successor = outbox(tmp_path, sink.url, limit=8)
    assert successor.deliver_due() == 0  # still claimed by the dead attempt (claim_s)...
    time.sleep(1.1)
    successor.deliver_due(horizon=float("inf"))  # ...then one batch carries them all
    assert successor.counts() == {"delivered": 5}
    [batch] = sink.received
    assert [i["id"] for i in batch.data["items"]] == [f"c-{i}" for i in range(5)]
    successor.close()


def test_a_linger_gathers_a_steady_stream_into_fewer_batches(tmp_path: Path) -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def deliver(entries: Sequence[Entry]) -> list[Outcome]:
        with lock:
            sizes.append(len(entries))
        return [Outcome(Verdict.DELIVERED)] * len(entries)

    box = Outbox(tmp_path, {SINK: Batched(deliver)}, name="linger", linger_s=0.5)
    box.put(ONE, "/t", {}, id="first")
    wait_until(lambda: sizes == [1])  # the first after a quiet spell goes at once
    for i in range(5):  # owed during the linger: they go together
        box.put(ONE, "/t", {}, id=f"next-{i}")
    wait_until(lambda: box.counts() == {"delivered": 6})
    assert sizes == [1, 5]
    box.close()
    assert OutboxSettings.from_env("infer", {"TOLLGATE_OUTBOX_LINGER_MS": "20"}).linger_s == 0.02
