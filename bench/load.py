"""Serving under load: concurrent streaming clients against `tollgate up` and against one infer
process directly, in one run.

For each level (8, 16 and 32 clients by default) every client sends its requests one after the
other with the official ``openai`` client (streamed, usage included, its own retries on): first
all against one ``tollgate serve infer`` process (the local model, the template's concurrency),
each request with a capability signed as the ingress would (infer serves nothing else); then all
through `tollgate up`'s ingress (route, hold, capability, activators scaling each tier's replicas
0..maxScale as Knative's autoscaler does, settle). Before each, one uncounted request warms the
target (the model loaded in the process; one replica up on the platform, whose other replicas
then scale as the load makes them). Printed per level
and target: the share of requests per tier, time to first token p50/p99, aggregate completion
tokens per second, the 429s the client saw (and retried) and the requests that failed.
Afterwards the demo account must reconcile exactly: nothing held, and what it spent equals the
sum of every settle's capture in its journal.

    .venv/bin/python bench/load.py [--clients 8 16 32] [--requests 3] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import requests
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from events import wire  # noqa: E402
from events.capability import Capability, sign  # noqa: E402
from functions.auth import keys, senders  # noqa: E402
from infra.local.demo import ACCOUNT  # noqa: E402
from infra.local.platform import free_port  # noqa: E402
from infra.template.load import load_template  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
ADMIN = "bench-load-admin"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about Lyon in two sentences."}
]
START_TIMEOUT_S = 300.0
DIRECT_CLUSTER = "bench-direct"


@dataclass
class Outcome:
    """What one level against one target produced."""

    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # 429s the client saw (it retries them by itself)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(
    base_url: str, key: str, outcome: Outcome, vouch: Vouch | None, max_tokens: int
) -> openai.OpenAI:
    def count(response: Any) -> None:
        if response.status_code == 429:
            with outcome.lock:
                outcome.refused += 1

    def sign(request: Any) -> None:
        # Each attempt its own capability, as the ingress signs one per attempt (the client's
        # retries of a 429 would otherwise replay one: 409).
        if vouch is not None:
            request.headers.update(vouch.headers(max_tokens))

    http = openai.DefaultHttpxClient(event_hooks={"request": [sign], "response": [count]})
    return openai.OpenAI(base_url=base_url, api_key=key, http_client=http, timeout=600)


class Vouch:
    """Capabilities for requests sent straight to an infer process, signed as the ingress signs
    them (one per attempt)."""

    def __init__(self, directory: Path) -> None:
        keys.rotate(directory)
        self._key = keys.SigningKey(directory)
        self._count = 0
        self._lock = threading.Lock()

    def headers(self, max_tokens: int) -> dict[str, str]:
        with self._lock:
            self._count += 1
            n = self._count
        capability = Capability(
            hold_id=f"bench:{n}",
            account_id="bench",
            model=MODEL,
            cluster=DIRECT_CLUSTER,
            tier="edge",
            max_tokens=max_tokens,
            engine_ms=600_000,
            deadline=int(time.time()) + 600,
            attempt=f"bench:{n}#1",
        )
        return {wire.CAPABILITY: sign(capability, self._key.get())}


def one_client(
    base_url: str,
    key: str,
    requests_each: int,
    max_tokens: int,
    out: Outcome,
    vouch: Vouch | None,
) -> None:
    api = client(base_url, key, out, vouch, max_tokens)
    for _ in range(requests_each):
        started = time.perf_counter()
        try:
            raw = api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            tier = raw.headers.get(wire.TIER, "direct")
            first: float | None = None
            tokens = 0
            for chunk in raw.parse():
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        except openai.APIError as exc:
            with out.lock:
                out.failed.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        with out.lock:
            out.ttft.append(first if first is not None else time.perf_counter() - started)
            out.tokens += tokens
            out.tiers[tier] += 1
    api.close()


def level(
    base_url: str,
    key: str,
    clients: int,
    requests_each: int,
    max_tokens: int,
    vouch: Vouch | None = None,
) -> Outcome:
    out = Outcome()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(one_client, base_url, key, requests_each, max_tokens, out, vouch)
    out.seconds = time.perf_counter() - started
    return out


class Replicas:
    """The most infer replicas each tier ran while a level ran (from processes.json)."""

    def __init__(self, processes_json: Path) -> None:
        self.path = processes_json
        self.most: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Replicas:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                children = json.loads(self.path.read_text())["children"]
            except (OSError, ValueError):
                continue  # being rewritten
            now = Counter(n.rsplit("-", 1)[0].removeprefix("infer-") for n in children)
            for tier in ("edge", "regional", "cloud"):
                self.most[tier] = max(self.most[tier], now[tier])

    def __str__(self) -> str:
        return ", ".join(f"{t} {n}" for t, n in self.most.items())


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for(check: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; see {log}")
        time.sleep(0.3)


def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def reconcile(endpoints: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The demo account once every hold resolved, and the sum of its journal's captures."""
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {ADMIN}"
    url = f"{endpoints['admin']}/accounts/{ACCOUNT}"
    deadline = time.monotonic() + 120
    balance: dict[str, Any] = admin.get(url + "/balance", timeout=10).json()
    while balance["open_holds"] and time.monotonic() < deadline:
        time.sleep(0.5)
        balance = admin.get(url + "/balance", timeout=10).json()
    captured, after = 0, 0
    while True:
        page = admin.get(url + "/journal", params={"after": after, "limit": 100}, timeout=10)
        body = page.json()
        captured += sum(
            e["result"]["captured"] for e in body["entries"] if e["op"]["kind"] == "settle"
        )
        if body["next_after"] is None:
            return balance, captured
        after = body["next_after"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    console = Console(width=140)
    console.print(f"[bold]machine[/]: {describe()}")
    template = load_template(ROOT / "template.yaml")
    smol = template.model(MODEL)
    serving = template.infer_serving(smol)
    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-load-"))
    up_port, direct_port = free_port(), free_port()
    up_argv = [sys.executable, "-m", "infra.cli", "up", "--port", str(up_port)]
    up_argv += ["--state-dir", str(work / "state"), "--template", str(ROOT / "template.yaml")]
    vouch = Vouch(work / "direct-keys")
    direct_env = {
        "PORT": str(direct_port),
        "TOLLGATE_CONCURRENCY": str(serving.concurrency),
        "TOLLGATE_N_CTX": str(smol.context_length),
        "TOLLGATE_MODEL_NAME": MODEL,
        "TOLLGATE_CLUSTER": DIRECT_CLUSTER,
        keys.KEYS_ENV: str(work / "direct-keys"),
        "TOLLGATE_OUTBOX_DIR": str(work / "direct-outbox"),
        "K_SINK": "",
    }
    direct_argv = [sys.executable, "-m", "infra.cli", "serve", "infer", "--host", "127.0.0.1"]
    with ExitStack() as running:
        up = running.enter_context(
            process(up_argv, {"TOLLGATE_ADMIN_TOKEN": ADMIN}, work / "up.log")
        )
        endpoints_file = work / "state" / "endpoints.json"
        wait_for(endpoints_file.is_file, "tollgate up", up, work / "up.log")
        endpoints = json.loads(endpoints_file.read_text())
        # The lone process checks event senders as every function does: by the platform's
        # issuer and trust file (it takes no events; only capabilities matter here).
        direct_env[senders.DISCOVERY_ENV] = endpoints["issuer"]
        direct_env[senders.TRUST_ENV] = str(work / "state" / "trust.json")
        direct_env[senders.AUDIENCE_ENV] = f"serving.knative.dev/service/tollgate/{DIRECT_CLUSTER}"
        direct = running.enter_context(process(direct_argv, direct_env, work / "direct.log"))
        direct_url = f"http://127.0.0.1:{direct_port}"
        wait_for(lambda: healthy(direct_url), "the infer process", direct, work / "direct.log")
        key = (work / "state" / "demo-api-key").read_text().strip()
        console.print(
            f"one infer process: concurrency {serving.concurrency} (the template's); "
            f"tollgate up: {len(endpoints['infer'])} tiers, each one infer service scaling "
            f"0..{serving.max_scale} replicas of {serving.concurrency}; "
            f"{args.requests} streamed requests per client, max_tokens {args.max_tokens}"
        )
        table = Table(title="Concurrent streaming clients (official openai client, retries on)")
        for column in (
            "clients",
            "target",
            "ok",
            "failed",
            "429s",
            "TTFT p50",
            "TTFT p99",
            "tokens/s",
            "share per tier",
            "replicas (most)",
        ):
            left = column in ("share per tier", "replicas (most)")
            table.add_column(column, justify="left" if left else "right")
        for clients in args.clients:
            for name, url, api_key, vouched in (
                ("one infer process", direct_url + "/v1", "none", vouch),
                ("tollgate up", endpoints["ingress"] + "/v1", key, None),
            ):
                # One request first, not counted: the model loaded in the process, a replica up
                # on the platform; the rest scale as they would.
                level(url, api_key, 1, 1, 4, vouched)
                with Replicas(work / "state" / "processes.json") as replicas:
                    out = level(url, api_key, clients, args.requests, args.max_tokens, vouched)
                total = sum(out.tiers.values())
                share = ", ".join(
                    f"{t} {n * 100 // max(total, 1)}%" for t, n in sorted(out.tiers.items())
                )
                table.add_row(
                    str(clients),
                    name,
                    str(total),
                    str(len(out.failed)),
                    str(out.refused),
                    f"{percentile(out.ttft, 50):.2f} s",
                    f"{percentile(out.ttft, 99):.2f} s",
                    f"{out.tokens / out.seconds:.1f}",
                    share if name == "tollgate up" else "-",
                    str(replicas) if name == "tollgate up" else "1 process",
                )
                for failure in out.failed[:3]:
                    console.print(f"  {name}, {clients} clients: {failure}", markup=False)
                console.print(
                    f"{clients} clients, {name}: {total} ok in {out.seconds:.1f} s", markup=False
                )
        console.print(table)
        balance, captured = reconcile(endpoints)
        exact = (
            balance["open_holds"] == 0
            and balance["held"] == 0
            and balance["spent"] == captured
            and balance["granted"]
            == sum(balance[k] for k in ("available", "held", "spent", "expired"))
        )
        console.print(
            f"account {ACCOUNT}: spent {balance['spent']}, sum of captures {captured}, "
            f"held {balance['held']} in {balance['open_holds']} open holds: "
            + ("[green]reconciles exactly[/]" if exact else "[red]does NOT reconcile[/]")
        )
        console.print(f"logs: {work}")
        console.print(f"[bold]machine after[/]: {describe()}")
        if not exact:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
