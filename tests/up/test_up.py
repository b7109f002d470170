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

from infra.local.broker import DEFAULT_TIMEOUT_S
from infra.local.demo import ACCOUNT, CREDITS
from infra.local.platform import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.slow


@contextmanager
def tollgate_up(
    state_dir: Path, port: int, env: dict[str, str], template: Path = ROOT / "template.yaml"
) -> Iterator[dict[str, Any]]:
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
            str(template),
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
            "output": Path(log.name),
            "state": str(state_dir),
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


def printed(endpoints: dict[str, Any], text: str, timeout_s: float = 30.0) -> str:
    """What `tollgate up` has printed, once it contains ``text``."""
    deadline = time.monotonic() + timeout_s
    while True:
        output = endpoints["output"].read_text(errors="replace")
        if text in output:
            return str(output)
        assert time.monotonic() < deadline, f"{text!r} not printed:\n{output[-4000:]}"
        time.sleep(0.2)


def printed_command(output: str, prefix: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(prefix)).removeprefix(
        prefix
    )


def admin(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def test_up_starts_everything_stops_cleanly_and_keeps_balances(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"TOLLGATE_ADMIN_TOKEN": ""}  # generated and kept in the state dir
    with tollgate_up(state, free_port(), env) as endpoints:
        assert set(endpoints) >= {"ingress", "admin", "console", "broker", "events", "infer"}
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
        # Only the model the local infer processes run is served (and listed), here as on
        # every cluster hosting it; the template's vLLM models are not, and it says why.
        assert local["clusters"]["edge-lyon-5g-1"] == {"smollm2-135m": edge}
        assert set(local["unserved"]) == {"llama31-8b", "llama33-70b"}
        output = printed(endpoints, "Endpoints for tools")
        assert (
            "Not served locally: meta-llama/Llama-3.1-8B-Instruct (llama31-8b): it runs on vLLM "
            "with 1 GPU(s) (20 GiB); this machine serves only smollm2-135m on the CPU" in output
        )
        key = (state / "demo-api-key").read_text().strip()
        user = {"Authorization": f"Bearer {key}"}
        models = requests.get(endpoints["ingress"] + "/v1/models", headers=user, timeout=10)
        assert [m["id"] for m in models.json()["data"]] == ["SmolLM2-135M-Instruct"]
        llama = requests.post(
            endpoints["ingress"] + "/v1/chat/completions",
            headers=user,
            json={
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "messages": [{"role": "user", "content": "hi"}],
            },
            timeout=10,
        )
        assert llama.status_code == 404
        assert "declared but not served on this platform" in llama.json()["error"]["message"]
        # The balance command reads the generated token from its file (no secret is printed)
        # and works as printed.
        command = printed_command(output, "Balance: ")
        assert token not in output and endpoints["admin_token_file"] in command
        answer = subprocess.run(["bash", "-c", command], capture_output=True, timeout=30, text=True)
        assert json.loads(answer.stdout)["account_id"] == ACCOUNT
        prices = requests.get(endpoints["ingress"] + "/v1/prices", timeout=10).json()
        assert prices["credit"]["credits_per_unit"] == 1_000_000
        assert {row["model"] for v in prices["versions"] for row in v["prices"]} == {
            "SmolLM2-135M-Instruct"
        }
        children = endpoints["children"]
        # Infer replicas start with the first request (every infer service scales from zero).
        assert len(children) == len(
            (
                "broker", "ledger", "ledger-admin", "deadletters", "route", "ingress",
                "ingress-edge-lyon-5g-1",  # the edge site's own ingress
            )
        )  # fmt: skip
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
        # Each tier scaled from zero: its first replica loaded the model, and the terminal said so.
        output = printed(endpoints, "model loaded in")
        for tier in ("edge", "regional", "cloud"):
            loading = f"infer-{tier}-1: SmolLM2-135M-Instruct: loading the model (cold start)"
            assert loading in output
        # Settled requests are no news at INFO (the broker drops their replies quietly).
        assert "no trigger matches" not in output
        # The token came from the environment: the printed command names the variable.
        command = printed_command(output, "Balance: ")
        assert "$TOLLGATE_ADMIN_TOKEN" in command and "test-admin" not in command
        answer = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            timeout=30,
            text=True,
            env={**os.environ, "TOLLGATE_ADMIN_TOKEN": "test-admin"},
        )
        assert json.loads(answer.stdout)["spent"] == charged
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


# A child told its parent died (SIGTERM) finishes what is in flight: the broker waits for its
# deliveries (each bounded by the delivery timeout, 30 s), a function for its requests and what
# it owes. Past that bound plus a margin, a child still alive is an orphan.
ORPHAN_TIMEOUT_S = DEFAULT_TIMEOUT_S + 30


def test_children_die_with_a_killed_tollgate_up(tmp_path: Path) -> None:
    with tollgate_up(tmp_path / "state", free_port(), {}) as endpoints:
        os.kill(endpoints["pid"], signal.SIGKILL)
        deadline = time.monotonic() + ORPHAN_TIMEOUT_S
        while any(alive(pid) for pid in endpoints["children"]):
            assert time.monotonic() < deadline, "orphans left behind"
            time.sleep(0.2)


def test_a_crashing_child_is_restarted_with_its_own_back_off_while_the_rest_serves(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with tollgate_up(state, free_port(), {"TOLLGATE_ADMIN_TOKEN": "adm"}) as endpoints:

        def pids() -> dict[str, int]:
            children: dict[str, int] = json.loads((state / "processes.json").read_text())[
                "children"
            ]
            return children

        before = pids()
        for crash in range(1, 4):
            victim = pids()["route"]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while pids()["route"] == victim:
                assert time.monotonic() < deadline, f"route not restarted after crash {crash}"
                # The rest keeps serving meanwhile.
                health = requests.get(endpoints["admin"] + "/healthz", timeout=5)
                assert health.status_code == 200
                time.sleep(0.1)
        after = pids()
        assert {k: v for k, v in after.items() if k != "route"} == {
            k: v for k, v in before.items() if k != "route"
        }
        assert alive(endpoints["pid"])
        output = endpoints["output"].read_text(errors="replace")
    assert "route exited with status -9 (crash 1 in a row); restarting now" in output
    assert "(crash 2 in a row); restarting in 1s (back-off)" in output
    assert "(crash 3 in a row); restarting in 2s (back-off)" in output
    assert output.count("restarted route (pid") == 3
