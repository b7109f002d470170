"""``tollgate up`` as a user runs it: a real process tree, stopped with Ctrl-C, restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local.demo import ACCOUNT, CREDITS
from infra.local.platform import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.slow


@contextmanager
def tollgate_up(state_dir: Path, port: int, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Run `tollgate up` until its endpoints.json appears; yield it with "pid" and "children"."""
    log = (state_dir.parent / f"up-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "up",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            "--template",
            str(ROOT / "template.yaml"),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoints_file = state_dir / "endpoints.json"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not endpoints_file.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = Path(log.name).read_text(errors="replace")
                raise AssertionError(f"tollgate up did not start:\n{output[-4000:]}")
            time.sleep(0.2)
        endpoints = json.loads(endpoints_file.read_text())
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        yield {
            **endpoints,
            "pid": process.pid,
            "children": [int(c) for c in children],
            "state": str(state_dir),
            "up_log": log.name,
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            log.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def admin(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def test_up_starts_everything_stops_cleanly_and_keeps_balances(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"TOLLGATE_ADMIN_TOKEN": ""}  # generated and kept in the state dir
    with tollgate_up(state, free_port(), env) as endpoints:
        assert set(endpoints) >= {"ingress", "admin", "broker", "events", "infer"}
        assert set(endpoints["infer"]) == {"edge", "regional", "cloud"}
        token = Path(endpoints["admin_token_file"]).read_text().strip()
        session = admin(token)
        balance = session.get(f"{endpoints['admin']}/accounts/{ACCOUNT}/balance", timeout=10)
        assert balance.status_code == 200, balance.text
        assert balance.json()["available"] == CREDITS
        grant = session.post(
            f"{endpoints['admin']}/accounts/{ACCOUNT}/grants",
            json={"amount": 1234},
            timeout=10,
        )
        assert grant.status_code == 201, grant.text
        for url in [endpoints["broker"], *endpoints["infer"].values()]:
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
        local = json.loads((state / "local-endpoints.json").read_text())
        assert local["emulated"] is True
        edge = endpoints["infer"]["edge"]
        assert local["clusters"]["edge-lyon-5g-1"] == {"smollm2-135m": edge, "llama31-8b": edge}
        children = endpoints["children"]
        assert len(children) == len(
            ("ledger", "ledger-admin", "deadletters", "route", "ingress")
        ) + len(endpoints["infer"])
        # Every process listens on the loopback only.
        assert all(url.startswith("http://127.0.0.1:") for url in endpoints["processes"].values())
    # SIGINT: every child is gone and the endpoints file with it.
    assert not any(alive(pid) for pid in [*children, endpoints["pid"]])
    assert not (state / "endpoints.json").exists()
    assert (state / "logs" / "ledger.log").is_file()

    with tollgate_up(state, free_port(), env) as again:
        assert Path(again["admin_token_file"]).read_text().strip() == token
        session = admin(token)
        balance = session.get(f"{again['admin']}/accounts/{ACCOUNT}/balance", timeout=10)
        assert balance.json()["available"] == CREDITS + 1234  # kept, demo not granted twice
        accounts = session.get(f"{again['admin']}/accounts", timeout=10).json()["accounts"]
        assert accounts.count(ACCOUNT) == 1


def test_a_child_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    busy = free_port()
    # The ingress port is taken: if the ingress exists it fails; either way up must not hang.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "infra.cli",
                "up",
                "--port",
                str(busy),
                "--state-dir",
                str(state),
                "--startup-timeout",
                "60",
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
    assert process.returncode == 1
    assert b"ingress" in process.stdout


@pytest.mark.model
def test_the_openai_client_spends_credits_on_every_tier(tmp_path: Path) -> None:
    """The real model behind each tier (loaded three times), through ingress, ledger, broker."""
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    state = tmp_path / "state"
    with tollgate_up(state, free_port(), {"TOLLGATE_ADMIN_TOKEN": "test-admin"}) as endpoints:
        key = (state / "demo-api-key").read_text().strip()
        client = OpenAI(base_url=endpoints["ingress"] + "/v1", api_key=key, max_retries=0)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
        charged = 0
        for tier in ("edge", "regional", "cloud"):
            raw = client.chat.completions.with_raw_response.create(
                model="SmolLM2-135M-Instruct",
                messages=messages,
                max_tokens=8,
                extra_headers={"x-tollgate-tier": tier},
            )
            assert raw.headers["x-tollgate-tier"] == tier
            assert raw.parse().choices[0].message.content
            charged += int(raw.headers["x-tollgate-credits-charged"])
        session = admin("test-admin")
        url = f"{endpoints['admin']}/accounts/{ACCOUNT}/balance"

        def settled() -> dict[str, Any]:
            # settle runs asynchronously, through the broker: wait for every hold to resolve.
            deadline = time.monotonic() + 30
            while True:
                balance: dict[str, Any] = session.get(url, timeout=10).json()
                if not balance["open_holds"] or time.monotonic() > deadline:
                    return balance
                time.sleep(0.2)

        balance = settled()
        assert balance["open_holds"] == 0 and balance["held"] == 0
        assert balance["spent"] == charged  # exactly what the responses said
        assert balance["available"] == CREDITS - charged
        stream = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        balance = settled()
        assert balance["open_holds"] == 0 and balance["spent"] >= charged
        assert balance["granted"] == sum(
            balance[k] for k in ("available", "held", "spent", "expired")
        )


def test_children_die_with_a_killed_tollgate_up(tmp_path: Path) -> None:
    with tollgate_up(tmp_path / "state", free_port(), {}) as endpoints:
        os.kill(endpoints["pid"], signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(alive(pid) for pid in endpoints["children"]):
            assert time.monotonic() < deadline, "orphans left behind"
            time.sleep(0.2)
