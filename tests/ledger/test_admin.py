"""The admin HTTP API: accounts, keys, grants, balances, journal pages, auth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from events.ratelimits import RateLimits
from functions.apikeys import ApiKeys
from functions.config import Settings
from functions.errors import Unauthorized
from functions.store import Store, open_store
from ledger_fn.app import create_app
from ledger_fn.cli import ledger as ledger_cli
from ledger_fn.plans import PlanGrant
from tests.ledger.helpers import senders
from tests.trust import TestIssuer

AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def client(sqlite_store: Store, issuer: TestIssuer) -> FlaskClient:
    settings = Settings(store_url="unused", admin_token="s3cret", sink=None, port=0)
    plans = {"edge-pro": PlanGrant("edge-pro", "monthlyBundle", 5000, tiers=("edge",))}
    return create_app(
        "ledger-admin", senders=senders(issuer), settings=settings, store=sqlite_store, plans=plans
    ).test_client()


def post(client: FlaskClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(path, json=body, headers={**AUTH, **headers})


def test_account_lifecycle(client: FlaskClient, sqlite_store: Store) -> None:
    created = post(
        client, "/accounts", {"account_id": "acme", "plan": "edge-pro", "slice_ids": ["slice-1"]}
    )
    assert created.status_code == 201
    assert created.get_json()["plan"] == "edge-pro"
    assert created.get_json()["next_grant"]["credits"] == 5000
    assert post(client, "/accounts", {"account_id": "b", "plan": "gold"}).status_code == 400
    taken = post(client, "/accounts", {"account_id": "b", "slice_ids": ["slice-1"]})
    assert taken.status_code == 409 and "slice-1" in taken.get_json()["error"]["message"]
    assert post(client, "/accounts", {"account_id": "acme"}).status_code == 409

    grant = post(
        client,
        "/accounts/acme/grants",
        {"amount": 1000, "expires_at": "2099-01-01T00:00:00Z", "tiers": ["edge"]},
        **{"Idempotency-Key": "g-1"},
    )
    assert grant.status_code == 201
    again = post(
        client,
        "/accounts/acme/grants",
        {"amount": 1000, "expires_at": "2099-01-01T00:00:00Z", "tiers": ["edge"]},
        **{"Idempotency-Key": "g-1"},
    )
    assert again.get_json() == grant.get_json()
    other = post(client, "/accounts/acme/grants", {"amount": 5}, **{"Idempotency-Key": "g-1"})
    assert other.status_code == 409

    balance = client.get("/accounts/acme/balance", headers=AUTH).get_json()
    assert (balance["granted"], balance["available"]) == (1000, 1000)
    assert balance["lots"][0]["expires_at"] == "2099-01-01T00:00:00Z"
    assert balance["lots"][0]["tiers"] == ["edge"]

    changed = client.patch("/accounts/acme", json={"slice_ids": ["s-2"]}, headers=AUTH)
    assert changed.get_json()["slice_ids"] == ["s-2"]

    page = client.get("/accounts/acme/journal?limit=1", headers=AUTH).get_json()
    assert page["entries"][0]["op"]["kind"] == "open" and page["next_after"] == 1
    rest = client.get("/accounts/acme/journal?after=1", headers=AUTH).get_json()
    assert [e["op"]["kind"] for e in rest["entries"]] == ["grant"]


def test_keys_are_shown_once_stored_hashed_and_revocable(
    client: FlaskClient, sqlite_store: Store
) -> None:
    post(client, "/accounts", {"account_id": "acme"})
    issued = post(client, "/accounts/acme/keys", {})
    assert issued.status_code == 201
    key, key_id = issued.get_json()["key"], issued.get_json()["key_id"]
    keys = ApiKeys(sqlite_store)
    assert keys.lookup(key).account_id == "acme"
    listed = client.get("/accounts/acme/keys", headers=AUTH).get_json()["keys"]
    assert listed == [
        {"key_id": key_id, "created": listed[0]["created"], "revoked": False, "rate_limits": None}
    ]
    assert key not in str(sqlite_store.query("ACCT#acme", "KEY#"))
    assert client.delete(f"/accounts/acme/keys/{key_id}", headers=AUTH).status_code == 200
    with pytest.raises(Unauthorized):
        keys.lookup(key)
    assert post(client, "/accounts/nobody/keys", {}).status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic x"}, 401)],
)
def test_admin_needs_the_token(client: FlaskClient, headers: dict[str, str], status: int) -> None:
    response = client.post("/accounts", json={"account_id": "x"}, headers=headers)
    assert response.status_code == status
    assert "bearer" in response.get_json()["error"]["message"].lower()


def test_admin_is_disabled_without_a_token(sqlite_store: Store, issuer: TestIssuer) -> None:
    settings = Settings(store_url="unused", admin_token=None, sink=None, port=0)
    app = create_app("ledger-admin", senders=senders(issuer), settings=settings, store=sqlite_store)
    client = app.test_client()
    response = client.get("/accounts", headers=AUTH)
    assert response.status_code == 503
    assert "TOLLGATE_ADMIN_TOKEN" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 1.5},
        {"amount": "5"},
        {"amount": 0},
        {"amount": -1},
        {"amount": 2**63},
        {"amount": 5, "expires_at": "yesterday"},
        {},
        [1],
    ],
)
def test_bad_grants_are_400_and_change_nothing(client: FlaskClient, body: Any) -> None:
    post(client, "/accounts", {"account_id": "acme"})
    response = post(client, "/accounts/acme/grants", body)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"]
    assert client.get("/accounts/acme/balance", headers=AUTH).get_json()["granted"] == 0


def test_unknown_account_and_bad_json(client: FlaskClient) -> None:
    assert client.get("/accounts/nobody/balance", headers=AUTH).status_code == 404
    assert post(client, "/accounts/nobody/grants", {"amount": 5}).status_code == 404
    response = client.post(
        "/accounts", data="{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_an_operator_sets_and_clears_a_keys_rate_limits(
    client: FlaskClient, sqlite_store: Store
) -> None:
    post(client, "/accounts", {"account_id": "acme", "plan": "edge-pro"})
    issued = post(client, "/accounts/acme/keys", {}).get_json()
    key, key_id = issued["key"], issued["key_id"]
    other = post(client, "/accounts/acme/keys", {}).get_json()["key"]
    path = f"/accounts/acme/keys/{key_id}/rate-limits"
    body = {"requestsPerMinute": 5, "concurrentRequests": 2}
    answer = client.put(path, json=body, headers=AUTH)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["rate_limits"] == body
    keys = ApiKeys(sqlite_store)
    limits = keys.lookup(key).rate_limits
    assert limits is not None and limits.wire() == body
    assert keys.lookup(other).rate_limits is None  # one key's override only
    listed = keys_by_id(client, "acme")
    assert listed[key_id]["rate_limits"] == body
    # Bad values change nothing and say what is wrong.
    for bad, fragment in (
        ({"requestsPerMinute": 0}, "requestsPerMinute"),
        ({"tokensPerMinute": "lots"}, "tokensPerMinute"),
        ({"burst": 3}, "burst"),
        ({}, "at least one of"),
    ):
        refused = client.put(path, json=bad, headers=AUTH)
        assert refused.status_code == 400, bad
        assert fragment in refused.get_json()["error"]["message"], refused.get_json()
    assert keys.lookup(key).rate_limits == limits
    missing = client.put("/accounts/acme/keys/nokey/rate-limits", json=body, headers=AUTH)
    assert missing.status_code == 404
    cleared = client.delete(path, headers=AUTH)
    assert cleared.status_code == 200 and cleared.get_json()["rate_limits"] is None
    assert keys.lookup(key).rate_limits is None
    listed = keys_by_id(client, "acme")
    assert listed[key_id]["rate_limits"] is None


def keys_by_id(client: FlaskClient, account_id: str) -> dict[str, Any]:
    listed = client.get(f"/accounts/{account_id}/keys", headers=AUTH).get_json()["keys"]
    return {k["key_id"]: k for k in listed}


def test_the_cli_sets_and_clears_a_keys_rate_limits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = open_store(url)
    key = ApiKeys(store).issue("acme")
    runner = CliRunner()
    args = ["key-limits", "acme", key["key_id"], "--store", url]
    done = runner.invoke(ledger_cli, [*args, "--requests-per-minute", "7"])
    assert done.exit_code == 0, done.output
    assert ApiKeys(store).lookup(key["key"]).rate_limits == RateLimits(requests_per_minute=7)
    refused = runner.invoke(ledger_cli, [*args, "--tokens-per-minute", "0"])
    assert refused.exit_code == 2 and "tokens_per_minute" in refused.output
    assert runner.invoke(ledger_cli, args).exit_code == 2  # neither limits nor --clear
    assert runner.invoke(ledger_cli, [*args, "--clear"]).exit_code == 0
    assert ApiKeys(store).lookup(key["key"]).rate_limits is None
