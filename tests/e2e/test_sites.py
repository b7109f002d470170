"""The site ingress of `tollgate up` (an edge cluster's own ingress, its own process and store):
applications there are served and charged on the home ledger exactly, from a credit lease of
the site's own; what it asks the home ingress's ledger relay, nobody else may."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from events import types
from functions.apikeys import key_digest
from functions.cloudevent import make_event, to_binary
from infra.local.demo import ACCOUNT
from tests.e2e.conftest import issuer, process_token
from tests.e2e.test_attacks import BROKER, COMMANDS
from tests.e2e.test_platform import MODEL, admin, balance, invariant, new_account

pytestmark = [pytest.mark.model, pytest.mark.slow]

SITE = "edge-lyon-5g-1"
SITE_PROCESS = f"ingress-{SITE}"


def at_site(p: dict[str, Any], key: str, **headers: str) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6}
    auth = {"Authorization": f"Bearer {key}", **headers}
    url = p["site_ingresses"][SITE] + "/v1/chat/completions"
    return requests.post(url, json=body, headers=auth, timeout=120)


def journal(p: dict[str, Any], account: str) -> list[dict[str, Any]]:
    url = f"{p['admin']}/accounts/{account}/journal?limit=200"
    entries: list[dict[str, Any]] = admin().get(url, timeout=10).json()["entries"]
    return entries


def test_a_request_at_the_site_is_served_and_charged_on_the_home_ledger(
    platform: dict[str, Any],
) -> None:
    key = new_account(platform, "site-user", 10_000_000)
    answers = [at_site(platform, key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3, answers[0].text
    site_holds = {a.headers["x-tollgate-hold-id"] for a in answers}
    # The same key at the home ingress: served from the home ingress's own lease.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6}
    home = requests.post(
        platform["ingress"] + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert home.status_code == 200 and home.headers["x-tollgate-hold-id"] not in site_holds
    deadline = time.monotonic() + 60  # leases go back once idle; captures arrive via the broker
    while True:
        entries = journal(platform, "site-user")
        kinds = [e["op"]["kind"] for e in entries]
        b = balance(platform, "site-user")
        if (kinds.count("capture") == 4 and not b["open_holds"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert kinds.count("capture") == 4 and "settle" not in kinds, kinds  # one per request
    opened = {
        (e.get("result") or {}).get("hold_id")
        for e in entries
        if e["op"]["kind"] == "authorize" and e["op"]["args"].get("lease")
    }
    assert site_holds <= opened  # leases the site opened through the relay, not the home's
    charged = sum(int(a.headers["x-tollgate-credits-charged"]) for a in [*answers, home])
    assert b["spent"] == charged, b  # exactly what each answer said it charged
    assert (b["held"], b["open_holds"]) == (0, 0)
    invariant(b)


def test_only_the_site_ingress_may_use_the_ledger_relay(platform: dict[str, Any]) -> None:
    url = platform["ingress"] + "/sites/ledger"
    minting = issuer(platform)
    before = balance(platform, ACCOUNT)
    entries_before = journal(platform, ACCOUNT)
    site = process_token(platform, SITE_PROCESS, "ledger-relay")
    authorize = COMMANDS["authorize"][1]
    cases: dict[str, tuple[str, dict[str, Any], str | None, int]] = {
        "no token": (types.HOLD_AUTHORIZE, authorize, None, 401),
        "a token for another audience": (
            types.HOLD_AUTHORIZE,
            authorize,
            minting.mint(SITE_PROCESS, BROKER),
            401,
        ),
        "an expired token": (
            types.HOLD_AUTHORIZE,
            authorize,
            minting.mint(SITE_PROCESS, url, 600, now=time.time() - 3600),
            401,
        ),
        "the home ingress's own identity": (
            types.HOLD_AUTHORIZE,
            authorize,
            minting.mint("ingress", url),
            403,
        ),
        "infer": (types.HOLD_AUTHORIZE, authorize, minting.mint("infer-edge-1", url), 403),
        "a key lookup by the route function": (
            types.CALLER_LOOKUP,
            {"key_sha256": key_digest(platform["key"])},
            minting.mint("route", url),
            403,
        ),
        "the site granting credits": (types.CREDITS_GRANT, COMMANDS["grant"][1], site, 403),
        "the site refunding settled credits": (
            types.HOLD_REFUND,
            {"hold_id": f"{ACCOUNT}:1", "amount": 1},
            site,
            403,
        ),
    }
    for what, (event_type, data, token, status) in cases.items():
        message = to_binary(make_event(event_type, "/attacker", data))
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        headers = {**message.headers, **auth}
        answer = requests.post(url, headers=headers, data=message.body, timeout=10)
        assert answer.status_code == status, (what, answer.text)
    time.sleep(1)
    assert balance(platform, ACCOUNT) == before and journal(platform, ACCOUNT) == entries_before
