"""The chaos run, short (bench/chaos.py runs the long one on both stores): against `tollgate up`
with the real model on sqlite, kills of the ledger, infer, the broker and the ingress, broker
delivery faults, a stopped store and old events redelivered; then every credit is tallied. And
the tally itself is checked: it must see a double charge, a free inference, a capture that is not
the metered usage, and credits from nothing, when they are there."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, Hold, Outcome, Tally, _check_capture, _per_request, run
from events.quote import Quote, Usage

SHORT = ChaosConfig(
    requests=60,
    clients=4,
    accounts=3,
    kills=3,
    kill_every_s=4.0,
    store_stops=1,
    store_stop_s=(0.5, 1.5),
    max_broker_faults=30,
    redeliveries=10,
    hold_ttl_s=20,
    settle_timeout_s=180.0,
    seed=11,
)


@pytest.mark.model
@pytest.mark.slow
def test_a_short_chaos_run_loses_and_creates_no_credit(tmp_path: Path) -> None:
    t = run("sqlite", SHORT, tmp_path)
    assert t.requests == SHORT.requests
    assert sum(n for kind, n in t.faults.items() if kind.startswith("SIGKILL")) == SHORT.kills
    assert t.faults["store stopped for seconds"] == SHORT.store_stops
    assert sum(n for kind, n in t.outcomes.items() if "with content" in kind) > 0
    assert t.verify_ok, t.verify
    assert t.ok, "\n".join(t.problems)


QUOTE = Quote(price_book="t", input_per_million=1_000_000, output_per_million=1_000_000)


def test_the_tally_sees_double_charges_and_free_inferences() -> None:
    t = Tally("test")
    holds = {
        "a:1": Hold("r1", 100, QUOTE, captured=10),
        "a:2": Hold("r1", 100, QUOTE, captured=12),  # the same request captured twice
        "a:3": Hold("r2", 100, QUOTE, captured=5, refunded=5),  # r2's content came free
        "a:4": Hold("r3", 100, QUOTE, captured=8),
    }
    outcomes = [
        Outcome("r2", "a:3", 200, True, True, "ok"),
        Outcome("r3", "a:4", 200, False, True, "ok"),
    ]
    _per_request(holds, outcomes, t)
    assert (t.double, t.free) == (1, 1)


def test_the_tally_checks_each_capture_against_its_record() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    record = {"data": {"usage": usage, "timings": {"engine_ms": 5}}, "state": "delivered"}
    metered = {"/tollgate/infer/edge/c#chatcmpl-1": record}
    t = Tally("test")
    right = Hold("r", 100, QUOTE, captured=7, settle_key="/tollgate/infer/edge/c#chatcmpl-1")
    right.settle_usage = Usage.model_validate(usage)
    _check_capture("a:1", right, metered, t)
    assert (t.mismatched, t.unrecorded) == (0, 0)
    wrong = Hold("r", 100, QUOTE, captured=9, settle_key="/tollgate/infer/edge/c#chatcmpl-1")
    wrong.settle_usage = Usage.model_validate(usage)
    _check_capture("a:2", wrong, metered, t)
    nobody = Hold("r", 100, QUOTE, captured=9, settle_key="/e2e#forged")
    nobody.settle_usage = Usage.model_validate(usage)
    _check_capture("a:3", nobody, metered, t)
    assert (t.mismatched, t.unrecorded) == (1, 1)
    assert not t.ok
