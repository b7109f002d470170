"""What the token path adds: the ingress (key, route, quote, authorize over HTTP to the ledger
function) in front of a fast upstream, against calling that upstream directly, in one run.

Run: `.venv/bin/python bench/gateway.py`. Starts, as separate processes on loopback, a fast
canned upstream (bench/fast_upstream.py), `tollgate serve ledger` and `tollgate serve ingress`
(sqlite store in a temp dir), then measures sequential request latency (p50/p99) and requests per
second with 8 concurrent clients, direct vs through the ingress, and the route decision time.
Aims (issue 4): added p50 <= 2 ms, p99 <= 5 ms; route decision p99 < 100 us. Compare within one
run: these machines are small and noisy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The ledger signs its journal (ledger_fn/keys.py); a bench key unless one is given.
os.environ.setdefault("TOLLGATE_LEDGER_KEYS", "bench:tollgate-bench-ledger-key-0123456789")

from bench.machine import describe  # noqa: E402
from bench.route import timed  # noqa: E402
from events import wire  # noqa: E402
from functions.apikeys import ApiKeys  # noqa: E402
from functions.store import open_store  # noqa: E402
from infra.template.load import load_template  # noqa: E402
from infra.wiring import topology  # noqa: E402
from ledger_fn.ledger import Ledger  # noqa: E402
from router_fn.policy import RouteRequest, decide  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
CLIENTS = 8
BODY = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env, "PORT": str(port)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


def latencies(url: str, headers: dict[str, str], n: int) -> list[float]:
    session = requests.Session()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.post(url, json=BODY, headers=headers, timeout=30)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def throughput(url: str, headers: dict[str, str], n: int) -> float:
    def run() -> None:
        latencies(url, headers, n // CLIENTS)

    threads = [threading.Thread(target=run) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (n // CLIENTS * CLIENTS) / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def route_decision_us() -> tuple[float, float]:
    """p50/p99 of one decision on the shipped topology (the full mix is in bench/route.py)."""
    topo = topology(load_template(ROOT / "template.yaml"))
    spec = topo.model("SmolLM2-135M-Instruct")
    assert spec is not None
    request = RouteRequest(model=spec, latency_budget_ms=30, prompt_tokens=40, max_tokens=16)
    return timed(5000, lambda i: decide(request, topo, {}, None))


def main() -> None:
    console = Console()
    console.print(f"[bold]bench/gateway.py[/] on {describe()}; {REQUESTS} requests per figure")
    tmp = Path(tempfile.mkdtemp())
    store_url = f"sqlite:///{tmp}/gw.db"
    store = open_store(store_url)
    ledger = Ledger(store)
    ledger.open_account("bench")
    ledger.execute("bench", "grant", {"amount": 10**15})
    key = ApiKeys(store).issue("bench")["key"]
    store.close()

    upstream_port, ledger_port, ingress_port = free_port(), free_port(), free_port()
    ledger_url = f"http://127.0.0.1:{ledger_port}"
    endpoints = tmp / "endpoints.json"
    template = load_template(ROOT / "template.yaml")
    upstream = f"http://127.0.0.1:{upstream_port}"
    # Not emulated: no tier RTT is added, so the figures are the gateway's own cost.
    clusters = {c.name: {m: upstream for m in c.models} for c in template.clusters}
    endpoints.write_text(json.dumps({"clusters": clusters, "emulated": False}))
    env = {"TOLLGATE_STORE": store_url, "TOLLGATE_ADMIN_TOKEN": "bench"}
    procs = [
        start([sys.executable, "-m", "infra.cli", "serve", "ledger"], env, ledger_port),
        start(
            [sys.executable, "bench/fast_upstream.py", str(upstream_port)],
            {"K_SINK": ledger_url},
            upstream_port,
        ),
        start(
            [sys.executable, "-m", "infra.cli", "serve", "ingress"],
            {
                **env,
                "TOLLGATE_LEDGER_URL": ledger_url,
                "TOLLGATE_TEMPLATE": str(ROOT / "template.yaml"),
                "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints),
                "TOLLGATE_PROBE_INTERVAL_S": "0",
            },
            ingress_port,
        ),
    ]
    try:
        direct_url = upstream + "/v1/chat/completions"
        gate_url = f"http://127.0.0.1:{ingress_port}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {key}", wire.TIER: "regional"}
        latencies(gate_url, auth, 50)  # warm both paths
        latencies(direct_url, {}, 50)
        direct = latencies(direct_url, {}, REQUESTS)
        gated = latencies(gate_url, auth, REQUESTS)
        direct_rps = throughput(direct_url, {}, REQUESTS)
        gated_rps = throughput(gate_url, auth, REQUESTS)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    table = Table(title="request latency (ms) and throughput, one run")
    for col in ("path", "p50", "p99", "req/s (8 clients)"):
        table.add_column(col, justify="right")
    table.add_row(
        "direct to upstream",
        f"{pct(direct, 0.5):.2f}",
        f"{pct(direct, 0.99):.2f}",
        f"{direct_rps:,.0f}",
    )
    table.add_row(
        "through the ingress",
        f"{pct(gated, 0.5):.2f}",
        f"{pct(gated, 0.99):.2f}",
        f"{gated_rps:,.0f}",
    )
    table.add_row(
        "added by the token path",
        f"{pct(gated, 0.5) - pct(direct, 0.5):.2f}",
        f"{pct(gated, 0.99) - pct(direct, 0.99):.2f}",
        "",
    )
    console.print(table)
    p50, p99 = route_decision_us()
    console.print(f"route decision: p50 {p50:.1f} us, p99 {p99:.1f} us; aim p99 < 100 us")


if __name__ == "__main__":
    main()
