"""The durable outbox against a real HTTP sink and real processes: delivered until acknowledged,
refusals kept as dead letters, owed events surviving a SIGKILL, bounded, shared safely."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.emit import Emitter
from functions.outbox import (
    SINK,
    Entry,
    Outbox,
    OutboxSettings,
    Outcome,
    Verdict,
    sink_route,
)
from tests.functions.test_emit import Sink
from tests.trust import token_file

ROOT = Path(__file__).resolve().parents[2]

# The test sinks check no token; the emitter still needs one to send at all.
TOKEN = token_file(Path(tempfile.mkdtemp(prefix="tollgate-test-token-")))


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink([])
    yield s
    s.server.shutdown()


def wait_until(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def outbox(directory: Path, url: str, **kwargs: object) -> Outbox:
    return Outbox(
        directory,
        {SINK: sink_route(Emitter(url, TOKEN))},
        name="test",
        first_backoff_s=0.05,
        max_backoff_s=0.2,
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_owed_event_is_delivered_once_acknowledged_and_kept_as_a_record(
    tmp_path: Path, sink: Sink
) -> None:
    sink.statuses[:] = [503, 500]  # the broker is down twice, then takes it
    box = outbox(tmp_path, sink.url)
    box.put("io.tollgate.test.v1", "/t", {"n": 1}, id="e-1")
    box.put("io.tollgate.test.v1", "/t", {"n": 1}, id="e-1")  # owed once
    wait_until(lambda: box.counts() == {"delivered": 1})
    assert [e.id for e in sink.received] == ["e-1"] * 3  # retried with the same id
    assert box.pending == 0
    box.close()


def test_a_refusal_is_a_local_dead_letter_never_retried(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.statuses[:] = [409]
    box = outbox(tmp_path, sink.url)
    with caplog.at_level(logging.ERROR):
        box.put("io.tollgate.test.v1", "/t", {}, id="e-2")
        wait_until(lambda: box.counts() == {"dead": 1})
    time.sleep(0.3)
    assert len(sink.received) == 1
    assert "refused for good" in caplog.text and "e-2" in caplog.text
    box.close()


def test_an_unreachable_sink_is_retried_until_it_comes_back(tmp_path: Path, sink: Sink) -> None:
    box = outbox(tmp_path, "http://127.0.0.1:9/")
    box.put("io.tollgate.test.v1", "/t", {"n": 2}, id="e-3")
    time.sleep(0.5)
    assert box.counts() == {"pending": 1}
    box.close()
    # Pointed at a sink that answers (a new process would read the same file).
    again = outbox(tmp_path, sink.url)
    wait_until(lambda: again.counts() == {"delivered": 1})
    assert [e.data for e in sink.received] == [{"n": 2}]
    again.close()


OWE_AND_DIE = """
import os, signal, sys
from functions.emit import Emitter
from functions.outbox import Outbox, SINK, sink_route
route = {SINK: sink_route(Emitter("http://127.0.0.1:9/", None))}
box = Outbox(sys.argv[1], route, name="child", claim_s=1.0)
for i in range(5):
    box.put("io.tollgate.test.v1", "/child", {"i": i}, id=f"c-{i}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_until_killed(script: str, directory: Path) -> None:
    """Run ``script`` (given ``directory`` as its argument) in a child that SIGKILLs itself."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(directory)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


def test_events_owed_by_a_killed_process_are_delivered_by_its_successor(
    tmp_path: Path, sink: Sink
) -> None:
    run_until_killed(OWE_AND_DIE, tmp_path)
    successor = outbox(tmp_path, sink.url)  # it starts delivering what it finds
    wait_until(lambda: successor.counts() == {"delivered": 5})
    assert sorted(e.id for e in sink.received) == [f"c-{i}" for i in range(5)]
    successor.close()


def test_bounded_with_a_loud_warning_before_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = outbox(tmp_path, "http://127.0.0.1:9/", max_pending=4, warn_fraction=0.5)
    with caplog.at_level(logging.ERROR):
        box.put("io.tollgate.test.v1", "/t", {}, id="f-0")
        assert "undelivered" not in caplog.text
        box.put("io.tollgate.test.v1", "/t", {}, id="f-1")
        assert "2 undelivered events (limit 4)" in caplog.text
    assert not box.full
    box.put("io.tollgate.test.v1", "/t", {}, id="f-2")
    box.put("io.tollgate.test.v1", "/t", {}, id="f-3")
    assert box.full
    box.put("io.tollgate.test.v1", "/t", {}, id="f-4")  # the work was done: still owed
    assert box.pending == 5
    box.close()


def test_two_processes_sharing_a_file_deliver_each_event_once(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def count(entry: Entry) -> Outcome:
        with lock:
            seen[entry.id] += 1
        time.sleep(0.001)
        return Outcome(Verdict.DELIVERED)

    boxes = [Outbox(tmp_path, {SINK: count}, name=f"share-{i}") for i in range(2)]
    for i in range(200):
        boxes[i % 2].put("io.tollgate.test.v1", "/t", {"i": i}, id=f"s-{i}")
    wait_until(
        lambda: sum(seen.values()) >= 200 and all(b.counts() == {"delivered": 200} for b in boxes)
    )
    time.sleep(0.2)
    assert len(seen) == 200 and set(seen.values()) == {1}
    for box in boxes:
        box.close()


def test_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        "TOLLGATE_OUTBOX_DIR": str(tmp_path),
        "TOLLGATE_OUTBOX_MAX_PENDING": "7",
        "TOLLGATE_OUTBOX_KEEP_SECONDS": "3600",
    }
    settings = OutboxSettings.from_env("infer", env)
    assert (settings.directory, settings.max_pending, settings.keep_seconds) == (tmp_path, 7, 3600)
    assert OutboxSettings.from_env("infer", {}).directory == Path(".tollgate/outbox/infer")
    with pytest.raises(ValueError, match="TOLLGATE_OUTBOX_"):
        OutboxSettings.from_env("infer", {"TOLLGATE_OUTBOX_MAX_PENDING": "many"})
    assert os.environ.get("TOLLGATE_OUTBOX_MAX_PENDING") is None
