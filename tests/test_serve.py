"""`tollgate serve <function>` as Knative runs it: a real process, real HTTP, real CloudEvents."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from events import types
from functions.auth.keys import KEYS_ENV
from functions.auth.policy import SenderPolicy, SenderRule, Trust
from functions.auth.senders import AUDIENCE_ENV, DISCOVERY_ENV, TRUST_ENV
from functions.cloudevent import make_event, parse_http, to_binary, to_structured
from tests.trust import TestIssuer, capability_keys, sub

LEDGER = "serving.knative.dev/service/tollgate/ledger"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(function: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", function],
        env={**os.environ, "PORT": str(port), **env},
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"tollgate serve {function} exited with {proc.returncode}"
        try:
            requests.get(url + "/healthz", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"tollgate serve {function} did not start")


def identity(issuer: TestIssuer, tmp_path: Path) -> dict[str, str]:
    """What a function is given to check its senders: the issuer, its audience, the policies."""
    trust = Trust({LEDGER: SenderPolicy(LEDGER, (SenderRule("tests", (sub("tester"),)),))})
    (tmp_path / "trust.json").write_text(json.dumps(trust.to_json()), encoding="utf-8")
    return {
        DISCOVERY_ENV: issuer.url,
        AUDIENCE_ENV: LEDGER,
        TRUST_ENV: str(tmp_path / "trust.json"),
        KEYS_ENV: str(capability_keys(tmp_path / "keys").directory),
    }


@pytest.fixture
def ledger_urls(tmp_path: Path, issuer: TestIssuer) -> Iterator[tuple[str, str]]:
    """The ledger's event functions and its admin API, each its own process."""
    env = {
        "TOLLGATE_STORE": f"sqlite:///{tmp_path}/t.db",
        "TOLLGATE_ADMIN_TOKEN": "tok",
        **identity(issuer, tmp_path),
    }
    events, events_url = start("ledger", env)
    admin, admin_url = start("ledger-admin", env)
    yield events_url, admin_url
    for proc in (events, admin):
        proc.terminate()
        proc.wait(timeout=10)


def post_event(
    url: str, type: str, data: dict[str, object], bearer: str, structured: bool = False
) -> requests.Response:
    event = make_event(type, "/tests/serve", data)
    message = to_structured(event) if structured else to_binary(event)
    headers = {**message.headers, "Authorization": f"Bearer {bearer}"}
    return requests.post(url + "/", headers=headers, data=message.body, timeout=10)


def test_ledger_over_http(ledger_urls: tuple[str, str], issuer: TestIssuer) -> None:
    ledger_url, admin_url = ledger_urls
    auth = {"Authorization": "Bearer tok"}
    assert (
        requests.post(
            admin_url + "/accounts", json={"account_id": "acme"}, headers=auth, timeout=10
        ).status_code
        == 201
    )
    assert (
        requests.post(
            admin_url + "/accounts/acme/grants", json={"amount": 900}, headers=auth, timeout=10
        ).status_code
        == 201
    )
    assert requests.get(ledger_url + "/accounts", headers=auth, timeout=10).status_code == 404
    token = issuer.token("tester", LEDGER)
    command = {"account_id": "acme", "amount": 400}
    assert post_event(ledger_url, types.HOLD_AUTHORIZE, command, "forged").status_code == 401
    response = post_event(ledger_url, types.HOLD_AUTHORIZE, command, token)
    assert response.status_code == 200
    authorized = parse_http(dict(response.headers), response.content)
    assert authorized.type == types.HOLD_AUTHORIZED
    response = post_event(
        ledger_url,
        types.HOLD_SETTLE,
        {"hold_id": authorized.data["hold_id"], "amount": 150},
        token,
        structured=True,
    )
    settled = parse_http(dict(response.headers), response.content)
    assert settled.data["captured"] == 150
    balance = requests.get(admin_url + "/accounts/acme/balance", headers=auth, timeout=10).json()
    assert (balance["available"], balance["spent"], balance["held"]) == (750, 150, 0)
    assert requests.get(ledger_url + "/readyz", timeout=10).status_code == 200
    assert "tollgate_events_total" in requests.get(ledger_url + "/metrics", timeout=10).text


def test_a_store_that_is_down_answers_503_so_knative_retries(
    issuer: TestIssuer, tmp_path: Path
) -> None:
    dead = f"dynamodb://127.0.0.1:{free_port()}/tollgate"
    proc, url = start("authorize", {"TOLLGATE_STORE": dead, **identity(issuer, tmp_path)})
    try:
        assert requests.get(url + "/readyz", timeout=60).status_code == 503
        command = {"account_id": "acme", "amount": 5}
        token = issuer.token("tester", LEDGER)
        response = post_event(url, types.HOLD_AUTHORIZE, command, token)
        assert response.status_code == 503
        assert "retry" in response.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("cluster", ["regional-paris-1", "edge-lyon-5g-1"])
def test_every_ingress_is_its_clusters_gateway_and_only_home_serves_the_relay(
    cluster: str, tmp_path: Path, issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tollgate serve ingress` as render configures it at home and at a site."""
    from infra.knative.render import render
    from infra.serve import build_app
    from infra.template.load import load_template

    shipped = Path(__file__).resolve().parents[1] / "template.yaml"
    manifests = {
        (m["kind"], m["metadata"]["name"]): m for m in render(load_template(str(shipped)))[cluster]
    }
    container = manifests[("Service", "ingress")]["spec"]["template"]["spec"]["containers"][0]
    rendered = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    trust = json.loads(manifests[("ConfigMap", "tollgate-template")]["data"]["trust.json"])
    (tmp_path / "trust.json").write_text(json.dumps(trust), encoding="utf-8")
    (tmp_path / "tokens").mkdir()
    env = {
        **rendered,
        "TOLLGATE_TEMPLATE": str(shipped),
        "TOLLGATE_TRUST": str(tmp_path / "trust.json"),
        "TOLLGATE_TOKEN_DIR": str(tmp_path / "tokens"),
        "TOLLGATE_OIDC_DISCOVERY_URL": issuer.url,
        "TOLLGATE_OIDC_CA_FILE": "",
        "TOLLGATE_OIDC_TOKEN_FILE": "",
        "TOLLGATE_CAPABILITY_KEYS": str(capability_keys(tmp_path / "keys").directory),
        "TOLLGATE_OUTBOX_DIR": str(tmp_path / "outbox"),
        "TOLLGATE_STORE": f"sqlite:///{tmp_path}/t.db",
        "TOLLGATE_LEASES": "off",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TOLLGATE_LOCAL_ENDPOINTS", raising=False)
    routes = {rule.rule for rule in build_app("ingress").url_map.iter_rules()}
    assert "/v1/chat/completions" in routes
    assert "/infer/<model>/v1/chat/completions" in routes  # other ingresses reach its infer
    home = cluster == "regional-paris-1"
    assert ("/sites/ledger" in routes) == home and ("/events/clusters" in routes) == home
    assert any(r.startswith("/events") for r in routes) == home
