"""Commands apply once for as long as the dedupe window, whatever the traffic in between; grants
and refunds also once per business reference. Proven on sqlite and DynamoDB Local, with real
threads and processes racing the same command."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from events import types
from functions.accounts import account_pk
from functions.config import Settings
from functions.errors import Conflict
from functions.store import Condition, Item, Store, StoreUnavailable, open_store
from functions.store.sqlite import SqliteStore
from ledger_fn.app import create_app
from ledger_fn.claims import key_claim
from ledger_fn.config import DAY_S
from ledger_fn.ledger import Ledger
from tests.clock import Clock
from tests.ledger.helpers import funded, invariant, send, senders, signed
from tests.trust import shared_issuer

GRANT = {"account_id": "acme", "amount": 500, "origin": "top-up"}


@pytest.fixture
def ledger(real_store: Store, clock: Clock) -> Ledger:
    return funded(real_store, clock, amount=1_000_000)


def grant_function(store: Store, ledger: Ledger) -> FlaskClient:
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app(
        "ledger", senders=senders(shared_issuer()), settings=settings, store=store, ledger=ledger
    )
    return signed(app, shared_issuer())


def busy(ledger: Ledger, commands: int) -> None:
    """Traffic on the account: authorize + settle pairs, each under its own key."""
    for n in range(commands // 2):
        held = ledger.execute("acme", "authorize", {"amount": 1, "ttl_seconds": 60}, key=f"a{n}")
        ledger.execute("acme", "settle", {"hold_id": held["hold_id"], "amount": 1}, key=f"s{n}")


def test_a_grant_redelivered_30_s_later_after_2000_other_commands_is_granted_once(
    real_store: Store, ledger: Ledger, clock: Clock
) -> None:
    # DynamoDB Local takes ~150 ms a command here: the same proof with fewer in between.
    traffic = 2000 if isinstance(real_store, SqliteStore) else 40
    client = grant_function(real_store, ledger)
    first = send(client, types.CREDITS_GRANT, GRANT, id="grant-1")
    assert first.status_code == 200
    busy(ledger, traffic)
    clock.advance(30)
    again = send(client, types.CREDITS_GRANT, GRANT, id="grant-1")  # its reply was lost
    assert again.status_code == 200 and again.get_data() == first.get_data()
    b = invariant(ledger, "acme")
    assert b["granted"] == 1_000_000 + 500
    assert b["spent"] == traffic // 2


def test_the_window_lasts_its_configured_time_then_ends(sqlite_store: Store, clock: Clock) -> None:
    ledger = Ledger(sqlite_store, clock=clock, dedupe_s=2 * DAY_S)
    ledger.open_account("acme")
    first = ledger.execute("acme", "grant", {"amount": 5}, key="k")
    ledger.execute("acme", "grant", {"amount": 1})  # "k" is no longer the journal's head
    clock.advance(2 * DAY_S - 1)
    assert ledger.execute("acme", "grant", {"amount": 5}, key="k") == first
    clock.advance(1)  # the window is over: the key is a new command (documented)
    assert ledger.execute("acme", "grant", {"amount": 5}, key="k")["lot_id"] != first["lot_id"]
    assert invariant(ledger, "acme")["granted"] == 11


def test_the_same_reference_under_other_event_ids_grants_once(
    real_store: Store, ledger: Ledger
) -> None:
    client = grant_function(real_store, ledger)
    grant = {**GRANT, "reference": "promo-7"}
    replies = [send(client, types.CREDITS_GRANT, grant, id=f"e{n}") for n in range(3)]
    assert [r.status_code for r in replies] == [200] * 3
    assert len({r.get_data() for r in replies}) == 1  # the same granted fact, every time
    other = send(client, types.CREDITS_GRANT, {**grant, "amount": 900}, id="e9")
    assert other.status_code == 409
    assert "promo-7" in other.get_json()["error"]["message"]
    assert invariant(ledger, "acme")["granted"] == 1_000_000 + 500


def test_the_same_refund_id_under_other_event_ids_refunds_once(
    real_store: Store, ledger: Ledger
) -> None:
    client = grant_function(real_store, ledger)
    held = ledger.execute("acme", "authorize", {"amount": 300, "ttl_seconds": 60})
    ledger.execute("acme", "settle", {"hold_id": held["hold_id"], "amount": 300})
    refund = {"hold_id": held["hold_id"], "amount": 100, "refund_id": "bss-42"}
    statuses = [send(client, types.HOLD_REFUND, refund, id=f"r{n}").status_code for n in range(3)]
    assert statuses == [200] * 3
    b = invariant(ledger, "acme")
    assert (b["refunded"], b["spent"]) == (100, 300)


def test_racing_deliveries_of_one_grant_apply_it_once(real_store: Store, ledger: Ledger) -> None:
    """16 threads: half deliver the same event, half the same reference under ids of their own."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def deliver(n: int) -> None:
        own = Ledger(real_store)
        key = "same-event" if n % 2 else f"event-{n}"
        start.wait()
        try:
            args = {"amount": 77, "reference": "tu-race"}
            results.append(own.execute("acme", "grant", args, key=key))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({r["lot_id"] for r in results}) == 1
    assert invariant(ledger, "acme")["granted"] == 1_000_077
    assert Ledger(real_store).verify().ok


def _grant_from_a_process(url: str, n: int) -> None:
    Ledger(open_store(url)).execute(
        "acme", "grant", {"amount": 13, "reference": "tu-proc"}, key=f"proc-{n}"
    )


def test_racing_processes_grant_a_reference_once(real_store_url: str, ledger: Ledger) -> None:
    ctx = multiprocessing.get_context("fork")
    processes = [
        ctx.Process(target=_grant_from_a_process, args=(real_store_url, n)) for n in range(4)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0] * 4
    assert invariant(ledger, "acme")["granted"] == 1_000_013


class _IndexDown:
    """A store whose claim index writes fail while ``down`` (the journal's still succeed)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put(self, item: Item, condition: Condition | None = None) -> None:
        if self.down and item.sk.startswith("K#"):
            raise StoreUnavailable("index write lost")
        self.store.put(item, condition)


def test_an_index_write_lost_after_commit_is_not_an_error_and_is_repaired(
    real_store: Store, clock: Clock
) -> None:
    flaky = _IndexDown(real_store)
    ledger = Ledger(flaky, clock=clock)
    ledger.open_account("acme")
    first = ledger.execute("acme", "grant", {"amount": 5}, key="k")  # committed, not indexed
    assert real_store.get(account_pk("acme"), key_claim("k")) is None
    assert Ledger(real_store, clock=clock).execute("acme", "grant", {"amount": 5}, key="k") == first
    flaky.down = False
    ledger.execute("acme", "grant", {"amount": 1}, key="next")  # indexes "k" before it commits
    assert real_store.get(account_pk("acme"), key_claim("k")) is not None
    assert Ledger(real_store, clock=clock).execute("acme", "grant", {"amount": 5}, key="k") == first
    assert invariant(ledger, "acme")["granted"] == 6


def test_a_replay_with_other_data_is_refused_for_the_whole_window(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.execute("acme", "grant", {"amount": 5}, key="k")
    busy(ledger, 10)
    clock.advance(3 * DAY_S)
    with pytest.raises(Conflict, match="different data"):
        ledger.execute("acme", "grant", {"amount": 6}, key="k")
