"""`tollgate serve <function>` as Knative runs it: a real process, real HTTP, real CloudEvents."""

from __future__ import annotations

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
from functions.cloudevent import make_event, parse_http, to_binary, to_structured


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


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    proc, url = start(
        "ledger", {"TOLLGATE_STORE": f"sqlite:///{tmp_path}/t.db", "TOLLGATE_ADMIN_TOKEN": "tok"}
    )
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def post_event(
    url: str, type: str, data: dict[str, object], structured: bool = False
) -> requests.Response:
    event = make_event(type, "/tests/serve", data)
    message = to_structured(event) if structured else to_binary(event)
    return requests.post(url + "/", headers=message.headers, data=message.body, timeout=10)


def test_ledger_over_http(ledger_url: str) -> None:
    auth = {"Authorization": "Bearer tok"}
    assert (
        requests.post(
            ledger_url + "/accounts", json={"account_id": "acme"}, headers=auth, timeout=10
        ).status_code
        == 201
    )
    assert (
        requests.post(
            ledger_url + "/accounts/acme/grants", json={"amount": 900}, headers=auth, timeout=10
        ).status_code
        == 201
    )
    response = post_event(ledger_url, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 400})
    assert response.status_code == 200
    authorized = parse_http(dict(response.headers), response.content)
    assert authorized.type == types.HOLD_AUTHORIZED
    response = post_event(
        ledger_url,
        types.HOLD_SETTLE,
        {"hold_id": authorized.data["hold_id"], "amount": 150},
        structured=True,
    )
    settled = parse_http(dict(response.headers), response.content)
    assert settled.data["captured"] == 150
    balance = requests.get(ledger_url + "/accounts/acme/balance", headers=auth, timeout=10).json()
    assert (balance["available"], balance["spent"], balance["held"]) == (750, 150, 0)
    assert requests.get(ledger_url + "/readyz", timeout=10).status_code == 200
    assert "tollgate_events_total" in requests.get(ledger_url + "/metrics", timeout=10).text


def test_a_store_that_is_down_answers_503_so_knative_retries() -> None:
    dead = f"dynamodb://127.0.0.1:{free_port()}/tollgate"
    proc, url = start("authorize", {"TOLLGATE_STORE": dead})
    try:
        assert requests.get(url + "/readyz", timeout=60).status_code == 503
        response = post_event(url, types.HOLD_AUTHORIZE, {"account_id": "acme", "amount": 5})
        assert response.status_code == 503
        assert "retry" in response.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
