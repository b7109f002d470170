"""Usage reported in batches (``inference.usage``): each report is taken as its own
``inference.completed`` — the same charges as the singles, one journal record per request, charged
once however it is redelivered (again in a batch, alone, or in another batch); a report refused
for good is a dead letter and does not hold back the others; a store down mid-batch fails the
batch, whose retry ends exact. Bad batches are 400 and change nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from events import types
from events.ledger import MAX_USAGE_REPORTS, InferenceCompleted, usage_batch
from events.quote import Usage
from functions.deadletters import DeadLetters
from functions.store import Condition, Item, Store, StoreUnavailable
from ledger_fn.ledger import PAGE, Ledger
from ledger_fn.metrics import USAGE_REPORTS
from tests.clock import Clock
from tests.ledger.helpers import funded, invariant, ledger_function, send, signed
from tests.ledger.test_lease import QUOTE
from tests.trust import CapabilityKeys, TestIssuer

SOURCE = "/tollgate/infer/edge/test-1"
BOUND = 100
Report = tuple[str, dict[str, Any]]


@pytest.fixture
def ledger(real_store: Store, clock: Clock) -> Ledger:
    ledger = funded(real_store, clock, "acme", 100_000)
    ledger.open_account("beta")
    ledger.execute("beta", "grant", {"amount": 100_000})
    return ledger


@pytest.fixture
def client(ledger: Ledger, issuer: TestIssuer, cap_keys: CapabilityKeys) -> FlaskClient:
    return signed(ledger_function(ledger, issuer, cap_keys), issuer)


def open_lease(ledger: Ledger, account: str) -> str:
    args = {"amount": 20_000, "ttl_seconds": 600, "quote": QUOTE, "lease": {"min_amount": 50}}
    hold: str = ledger.execute(account, "authorize", args)["hold_id"]
    return hold


def report(cap_keys: CapabilityKeys, hold: str, n: int, **change: Any) -> Report:
    """Request ``n`` of the lease ``hold``, as infer reports it (its id: the request's)."""
    account = hold.split(":")[0]
    attempt = f"{hold}#attempt-{n}"
    capability = cap_keys.capability(hold, account, attempt=attempt, credits=BOUND)
    done = InferenceCompleted(
        hold_id=hold,
        account_id=account,
        model="smollm2",
        tier="edge",
        cluster="test-1",
        usage=Usage(prompt_tokens=10 + n, completion_tokens=n % 7 + 1),
        capability=capability,
    )
    return f"req-{account}-{n}", {**done.model_dump(mode="json"), **change}


def charge(n: int) -> int:
    return (10 + n) + 2 * (n % 7 + 1)  # QUOTE: 1 credit per prompt token, 2 per completion


def post_batch(client: FlaskClient, reports: list[Report], id: str = "batch-1") -> Any:
    return send(client, types.INFERENCE_USAGE, usage_batch(reports), id=id, source=SOURCE)


def captures(ledger: Ledger, account: str) -> list[str]:
    """The request of every capture record in the account's journal, in order."""
    entries = ledger.journal(account, limit=PAGE)
    return [e["op"]["args"]["request"] for e in entries if e["op"]["kind"] == "capture"]


def test_a_batch_charges_what_the_same_reports_sent_alone_charge(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    alone, batched = open_lease(ledger, "acme"), open_lease(ledger, "beta")
    for n in range(12):
        identifier, data = report(cap_keys, alone, n)
        response = send(client, types.INFERENCE_COMPLETED, data, id=identifier, source=SOURCE)
        assert response.status_code == 200, response.get_json()
    response = post_batch(client, [report(cap_keys, batched, n) for n in range(12)])
    assert response.status_code == 204, response.get_json()
    single, batch = invariant(ledger, "acme"), invariant(ledger, "beta")
    assert batch["spent"] == single["spent"] == sum(charge(n) for n in range(12))
    assert batch["held"] == single["held"]
    assert captures(ledger, "beta") == [f"{batched}#attempt-{n}" for n in range(12)]
    assert len(captures(ledger, "acme")) == 12
    assert ledger.verify().ok


def test_reports_redelivered_alone_or_in_other_batches_are_charged_once(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    hold = open_lease(ledger, "acme")
    reports = [report(cap_keys, hold, n) for n in range(16)]
    assert post_batch(client, reports[:10]).status_code == 204
    assert post_batch(client, reports[:10]).status_code == 204  # the same batch, redelivered
    for identifier, data in reports[3:6]:  # and some of its reports alone
        response = send(client, types.INFERENCE_COMPLETED, data, id=identifier, source=SOURCE)
        assert response.status_code == 200  # the first result, not a second charge
    # Another batch, overlapping the first: only its new reports charge.
    assert post_batch(client, reports[8:], id="batch-2").status_code == 204
    assert invariant(ledger, "acme")["spent"] == sum(charge(n) for n in range(16))
    assert captures(ledger, "acme") == [f"{hold}#attempt-{n}" for n in range(16)]
    assert ledger.verify().ok


def test_a_report_refused_for_good_is_a_dead_letter_and_the_others_are_charged(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys, caplog: pytest.LogCaptureFixture
) -> None:
    hold = open_lease(ledger, "acme")
    reports = [report(cap_keys, hold, n) for n in range(6)]
    other = open_lease(ledger, "beta")
    # Report 2 claims acme's hold with a capability for beta's: whoever knows a hold id cannot
    # charge it. Report 4 names the hold of another account than its own.
    forged = report(cap_keys, other, 2, hold_id=hold, account_id="acme")
    reports[2] = (reports[2][0], forged[1])
    reports[4] = (reports[4][0], {**reports[4][1], "account_id": "beta"})
    refused_before = USAGE_REPORTS.labels("refused")._value.get()
    response = post_batch(client, reports)
    assert response.status_code == 204, response.get_json()
    assert invariant(ledger, "acme")["spent"] == sum(charge(n) for n in (0, 1, 3, 5))
    assert invariant(ledger, "beta")["spent"] == 0
    assert captures(ledger, "acme") == [f"{hold}#attempt-{n}" for n in (0, 1, 3, 5)]
    # Visible as a refused single event is: kept with Knative's error extensions, logged, counted.
    dead = {d["id"]: d for d in DeadLetters(ledger.store).list()}
    assert set(dead) == {"req-acme-2", "req-acme-4"}
    assert dead["req-acme-2"]["type"] == types.INFERENCE_COMPLETED
    assert dead["req-acme-2"]["source"] == SOURCE
    assert dead["req-acme-2"]["data"] == reports[2][1]
    extensions = dead["req-acme-2"]["extensions"]
    assert (extensions["knativeerrorcode"], extensions["tollgatebatch"]) == ("403", "batch-1")
    said = json.loads(base64.b64decode(extensions["knativeerrordata"]))
    assert "capability is for hold" in said["error"]["message"]
    assert dead["req-acme-4"]["extensions"]["knativeerrorcode"] in ("400", "403")
    assert USAGE_REPORTS.labels("refused")._value.get() == refused_before + 2
    assert "req-acme-2" in caplog.text and "dead letter" in caplog.text
    # Redelivered, the batch charges nothing more and keeps each dead letter once.
    assert post_batch(client, reports).status_code == 204
    assert invariant(ledger, "acme")["spent"] == sum(charge(n) for n in (0, 1, 3, 5))
    assert len(DeadLetters(ledger.store).list()) == 2


class _DownAfter:
    """A store that goes down after ``writes`` more successful writes (reads still work)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writes: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put(self, item: Item, condition: Condition | None = None) -> None:
        if self.writes is not None:
            if self.writes <= 0:
                raise StoreUnavailable("the store is down")
            self.writes -= 1
        self.store.put(item, condition)


def test_a_store_down_mid_batch_fails_it_and_its_retry_is_exact(
    real_store: Store, clock: Clock, issuer: TestIssuer, cap_keys: CapabilityKeys
) -> None:
    flaky = _DownAfter(real_store)
    ledger = funded(flaky, clock, "acme", 100_000)
    client = signed(ledger_function(ledger, issuer, cap_keys), issuer)
    hold = open_lease(ledger, "acme")
    reports = [report(cap_keys, hold, n) for n in range(10)]
    flaky.writes = 7  # a few reports' records, then down
    response = post_batch(client, reports)
    assert response.status_code == 503  # the broker (or infer's outbox) retries it
    done = len(captures(ledger, "acme"))
    assert 0 < done < 10
    flaky.writes = None
    assert post_batch(client, reports).status_code == 204
    assert invariant(ledger, "acme")["spent"] == sum(charge(n) for n in range(10))
    assert captures(ledger, "acme") == [f"{hold}#attempt-{n}" for n in range(10)]
    assert DeadLetters(real_store).list() == []
    assert ledger.verify().ok


def _bad_batches(good: list[Report]) -> dict[str, dict[str, Any]]:
    one = usage_batch(good[:1])["reports"][0]
    return {
        "no reports": {"reports": []},
        "too many": usage_batch([(f"r{i}", good[0][1]) for i in range(MAX_USAGE_REPORTS + 1)]),
        "an id twice": usage_batch([good[0], (good[0][0], good[1][1])]),
        "a failed report": {"reports": [{**one, "kind": "failed"}]},
        "a stand-in": {"reports": [{**one, "data": {**one["data"], "stand_in": True}}]},
        "an id too long": {"reports": [{**one, "id": "é" * 200}]},
        "no capability": {"reports": [one, {**one, "id": "x", "data": {"hold_id": "acme:1"}}]},
        "float usage": usage_batch([(good[0][0], {**good[0][1], "usage": {"prompt_tokens": 1.5}})]),
        "unknown field": {"reports": [one], "extra": 1},
    }


def test_a_bad_batch_is_400_and_changes_nothing(
    client: FlaskClient, ledger: Ledger, cap_keys: CapabilityKeys
) -> None:
    hold = open_lease(ledger, "acme")
    good = [report(cap_keys, hold, n) for n in range(2)]
    before = (ledger.balance("acme"), ledger.journal("acme", limit=PAGE))
    for what, data in _bad_batches(good).items():
        response = send(client, types.INFERENCE_USAGE, data, id=what, source=SOURCE)
        assert response.status_code == 400, what
        assert (
            "invalid io.tollgate.inference.usage.v1 data" in response.get_json()["error"]["message"]
        )
    assert (ledger.balance("acme"), ledger.journal("acme", limit=PAGE)) == before
    assert DeadLetters(ledger.store).list() == []
