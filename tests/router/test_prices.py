"""The published price book over real HTTP: ``GET /v1/prices`` without a key, and quotes by the
version in effect when each request arrives (a real ledger function on sqlite keeps the quote
on the hold, and settles by it after a newer version has taken effect)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from events.prices import CreditUnit, PriceBook, PriceRow, PriceVersion
from functions.apikeys import ApiKeys
from functions.store import Store
from ledger_fn.ledger import Ledger
from router_fn.ingress_app import create_app as ingress_app
from router_fn.tierstate import TierStates
from router_fn.topology import ClusterSpec, ModelSpec, Topology
from tests.clock import Clock
from tests.http_server import serving
from tests.ledger.helpers import ledger_function, senders
from tests.router.test_ingress import Upstream, ledger_client
from tests.trust import CapabilityKeys, TestIssuer

EUR = CreditUnit(currency="EUR", decimals=2, per_unit=1_000_000)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _version(name: str, at: datetime, rate: int, note: str | None = None) -> PriceVersion:
    rows = (
        PriceRow(
            model="tiny",
            served_name="Tiny-1",
            tier="edge",
            input_per_million=rate,
            output_per_million=rate,
            per_engine_second=rate // 20_000,
        ),
        # Priced but served nowhere here: never published as something to call.
        PriceRow(
            model="big",
            served_name="Big-70B",
            tier="edge",
            input_per_million=9 * rate,
            output_per_million=9 * rate,
        ),
    )
    return PriceVersion(version=name, effective_from=at, note=note, prices=rows)


BOOK = PriceBook(
    credit=EUR,
    versions=(
        _version("2026-10.1", OCT, 3_080_000),
        _version("2026-11.1", NOV, 3_130_000, note="ECB rate of 30 Oct"),
        _version("2026-12.1", DEC, 4_000_000),
    ),
)


@dataclass
class Platform:
    url: str
    key: str
    ledger: Ledger
    clock: Clock


def _topology(edge_url: str) -> Topology:
    cluster = ClusterSpec("edge-a", "edge", "FR", 8, 13 * 10**9, {"tiny": edge_url})
    return Topology(
        (cluster,),
        {"tiny": ModelSpec("tiny", "Tiny-1", 135_000_000, 4096)},
        {},
        price_book=BOOK,
        unserved={"big": "no GPU here", "Big-70B": "no GPU here"},
    )


@pytest.fixture
def platform(
    sqlite_store: Store, issuer: TestIssuer, cap_keys: CapabilityKeys, tmp_path: Path
) -> Iterator[Platform]:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme")
    ledger.execute("acme", "grant", {"amount": 10_000_000})
    key = ApiKeys(sqlite_store).issue("acme")["key"]
    clock = Clock(NOV.timestamp() + 3600)
    with ExitStack() as stack:
        ledger_url = stack.enter_context(serving(ledger_function(ledger, issuer, cap_keys)))
        edge_url = stack.enter_context(serving(Upstream().app()))
        app = ingress_app(
            _topology(edge_url),
            sqlite_store,
            ledger_client(ledger_url, issuer, tmp_path),
            senders=senders(issuer),
            signing_key=cap_keys.signing,
            states=TierStates(sqlite_store),
            clock=clock,
        )
        yield Platform(stack.enter_context(serving(app)), key, ledger, clock)


def _prices(p: Platform) -> dict[str, Any]:
    r = requests.get(p.url + "/v1/prices", timeout=10)  # no key: the price book is public
    assert r.status_code == 200, r.text
    assert "max-age" in r.headers["Cache-Control"]
    body: dict[str, Any] = r.json()
    return body


def _chat(p: Platform, model: str = "Tiny-1") -> requests.Response:
    return requests.post(
        p.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
        headers={"Authorization": f"Bearer {p.key}"},
        timeout=30,
    )


def test_the_price_book_is_published_with_its_history(platform: Platform) -> None:
    book = _prices(platform)
    assert book["credit"] == {
        "currency": "EUR",
        "credits_per_unit": 1_000_000,
        "definition": "1 credit = 0.000001 EUR; 1,000,000 credits = 1 EUR",
    }
    assert book["current_version"] == "2026-11.1"
    versions = book["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        ("2026-12.1", "upcoming"),  # published before it is charged
        ("2026-11.1", "current"),
        ("2026-10.1", "superseded"),
    ]
    assert versions[0]["effective_from"] == "2026-12-01T09:30:00Z"
    assert versions[1]["note"] == "ECB rate of 30 Oct"
    (row,) = versions[1]["prices"]  # only what this platform serves, by the id to send
    assert row == {
        "model": "Tiny-1",
        "tier": "edge",
        "input_per_million": 3_130_000,
        "output_per_million": 3_130_000,
        "per_engine_second": 156,
        "eur": {
            "input_per_million": "3.13",
            "output_per_million": "3.13",
            "per_engine_second": "0.000156",
        },
    }


def test_a_request_is_quoted_by_the_version_in_effect_when_it_arrives(
    platform: Platform,
) -> None:
    first = _chat(platform)
    assert first.status_code == 200, first.text
    # 11 prompt + 5 completion tokens at 3,130,000 credits per million, rounded up.
    assert first.headers["x-tollgate-credits-charged"] == str(-(-16 * 3_130_000 // 10**6))
    platform.clock.now = DEC.timestamp() - 1  # the December version is still only published
    assert _chat(platform).headers["x-tollgate-credits-charged"] == "51"
    platform.clock.now = DEC.timestamp()
    assert _prices(platform)["current_version"] == "2026-12.1"
    third = _chat(platform)
    assert third.headers["x-tollgate-credits-charged"] == str(16 * 4_000_000 // 10**6)
    # The first hold settles by its own quote, after the newer version took effect.
    state = platform.ledger.state("acme")
    quotes = {h.id: h.quote for h in state.holds.values()}
    assert quotes[first.headers["x-tollgate-hold-id"]].price_book == "2026-11.1"  # type: ignore[union-attr]
    assert quotes[third.headers["x-tollgate-hold-id"]].price_book == "2026-12.1"  # type: ignore[union-attr]
    usage = {"prompt_tokens": 11, "completion_tokens": 5}
    settled = platform.ledger.execute(
        "acme", "settle", {"hold_id": first.headers["x-tollgate-hold-id"], "usage": usage}
    )
    assert settled["captured"] == 51


def test_before_the_first_version_nothing_is_priced_so_nothing_runs(platform: Platform) -> None:
    platform.clock.now = OCT.timestamp() - 60
    assert _prices(platform)["current_version"] is None
    r = _chat(platform)
    assert r.status_code == 503
    assert "no price for tiny on tier edge" in r.json()["error"]["message"]
    assert platform.ledger.balance("acme")["held"] == 0


def test_a_declared_model_not_served_here_is_404_with_the_reason(platform: Platform) -> None:
    r = _chat(platform, "Big-70B")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found"
    assert "'Big-70B' is declared but not served on this platform: no GPU here" in error["message"]
    models = requests.get(
        platform.url + "/v1/models", headers={"Authorization": f"Bearer {platform.key}"}, timeout=10
    ).json()
    assert [m["id"] for m in models["data"]] == ["Tiny-1"]
