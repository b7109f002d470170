"""What the token path adds: the ingress (key, route, quote, credit, a signed capability per
attempt) in front of a fast upstream, against calling that upstream directly; with credit leases
(router_fn/lease.py: admitted in memory) and with a hold per request (an authorize over HTTP to
the ledger function, ``TOLLGATE_LEASES=off``), all in one run; plus an account at low balance
(held one by one, exact to the credit, whatever the setting) on its own row, and the ingress's
peak memory.

Run: `.venv/bin/python bench/gateway.py`. Starts, as separate processes on loopback, a fast
canned upstream (bench/fast_upstream.py: it checks the capability and meters as infer does, through
a durable outbox delivering usage in batches; ``BENCH_METER_BATCH=0``: one event per request;
``BENCH_METER_LINGER_MS``: its outbox's linger),
`tollgate serve ledger` and `tollgate serve ingress` (sqlite store in a temp dir),
with tollgate up's issuer in this process, once per setting. Measures sequential request latency
(p50/p99) and requests per second with 8 concurrent clients, direct vs through the ingress, the
route decision time, bench/trust.py's per-check figures, and the CPU each process spends per request
(ingress, upstream, ledger: where the time goes across processes, the upstream's metering and
the ledger's capture of it included). Aims (issue 13): added p50 <= 2 ms,
p99 <= 5 ms at concurrency 1; at concurrency 8 at least half of direct's throughput; route
decision p99 < 100 us. Compare within one run: these machines are small and noisy.
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
from collections.abc import Callable
from dataclasses import dataclass
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
from bench.trust import bench_capability, figures, table  # noqa: E402
from events import types, wire  # noqa: E402
from events.openai import ChatRequest  # noqa: E402
from functions.apikeys import ApiKeys  # noqa: E402
from functions.auth import keys, senders, tokens  # noqa: E402
from functions.auth.policy import SenderPolicy, SenderRule, Trust  # noqa: E402
from functions.store import open_store  # noqa: E402
from infer_fn.metering import METERING_LINGER_S  # noqa: E402
from infra.local.issuer import Issuer, IssuerServer, subject  # noqa: E402
from infra.template.load import load_template  # noqa: E402
from infra.wiring import topology  # noqa: E402
from ledger_fn.ledger import Ledger  # noqa: E402
from router_fn.policy import RouteRequest, decide  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
# A low-balance account: under what a lease needs (4 worst cases, router_fn/lease.py).
LOW_WORST_CASES = 3
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


def start(
    args: list[str], env: dict[str, str], port: int, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args,
        # The code at ``cwd`` is what runs, scripts included (not the installed tree).
        env={**os.environ, **env, "PORT": str(port), "PYTHONPATH": str(cwd)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(1200):
        try:
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


def latencies(url: str, headers: dict[str, str], n: int) -> list[float]:
    session = requests.Session()
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.post(url, json=BODY, headers=headers, timeout=30)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def until_refused(url: str, headers: dict[str, str], store_url: str, account: str) -> list[float]:
    """Sequential requests of a low-balance account until it cannot pay for one more (each waits
    for the one before to settle, untimed: settlement is asynchronous)."""
    session = requests.Session()
    out: list[float] = []
    while True:
        t0 = time.perf_counter()
        r = session.post(url, json=BODY, headers=headers, timeout=30)
        if r.status_code == 402:
            return out
        assert r.status_code == 200, r.text
        out.append(time.perf_counter() - t0)
        settled(store_url, [account])


def throughput(url: str, headers: list[dict[str, str]], n: int) -> float:
    """Requests per second of CLIENTS clients, each with its own headers (its own account: the
    ledger caps open holds per account, and settlement trails the requests)."""

    def run(i: int) -> None:
        latencies(url, headers[i % len(headers)], n // CLIENTS)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
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


LEDGER = "serving.knative.dev/service/tollgate/ledger"


def identities(tmp: Path, issuer: Issuer, issuer_url: str) -> dict[str, dict[str, str]]:
    """Each process's identity env, as tollgate up gives it: the ingress may authorize and
    refund at the ledger, the upstream (standing in for infer) may report usage there."""
    rules = (
        SenderRule("ingress", (subject("tollgate", "ingress"),), (
            {"type": types.HOLD_AUTHORIZE}, {"type": types.HOLD_REFUND},
            {"type": types.INFERENCE_COMPLETED}, {"type": types.INFERENCE_FAILED},
        )),
        SenderRule("infer", (subject("tollgate", "infer-bench"),), (
            {"type": types.INFERENCE_COMPLETED}, {"type": types.INFERENCE_USAGE},
        )),
    )  # fmt: skip
    trust = tmp / "trust.json"
    trust.write_text(json.dumps(Trust({LEDGER: SenderPolicy(LEDGER, rules)}).to_json()))
    keys.rotate(tmp / "keys")
    out = {}
    for process, targets in {
        "ledger": {},
        "ingress": {tokens.AUTHORIZE: LEDGER, tokens.REFUND: LEDGER, tokens.SINK: LEDGER},
        "infer-bench": {tokens.SINK: LEDGER},
    }.items():
        directory = tmp / "tokens" / process
        directory.mkdir(parents=True)
        for target, audience in targets.items():
            (directory / target).write_text(issuer.mint(process, audience, 3600))
        out[process] = {
            senders.DISCOVERY_ENV: issuer_url,
            senders.TRUST_ENV: str(trust),
            senders.AUDIENCE_ENV: f"serving.knative.dev/service/tollgate/{process}",
            tokens.TOKEN_DIR_ENV: str(directory),
            keys.KEYS_ENV: str(tmp / "keys"),
        }
    return out


def settled(store_url: str, accounts: list[str]) -> None:
    """Until every hold and lease of the bench's accounts is closed (leases go back when idle):
    a phase starts with no backlog."""
    store = open_store(store_url)
    ledger = Ledger(store)
    deadline = time.monotonic() + 120
    while any(ledger.balance(a)["open_holds"] for a in accounts):
        if time.monotonic() > deadline:
            raise RuntimeError("holds stayed open: settlement is failing")
        time.sleep(0.2)
    store.close()


@dataclass
class Figures:
    direct: list[float]
    gated: list[float]
    direct_rps: float
    gated_rps: float
    low: list[float]  # requests of a low-balance account (held one by one), sequential
    peak_kib: int  # the ingress's peak resident memory (VmHWM)
    # CPU ms per request of each process (ledger, upstream, ingress), direct / through the
    # ingress at concurrency 1: where the time goes across processes, metering included (the
    # upstream reports each request's usage to the ledger after answering, as infer does).
    direct_cpu: dict[str, float]
    gated_cpu: dict[str, float]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(
    procs: list[subprocess.Popen[bytes]], run: Callable[[], list[float]]
) -> tuple[list[float], dict[str, float]]:
    """``run``'s latencies and the CPU ms per request each of ``procs`` spent meanwhile (and
    until the metering it caused is done: the ledger's settles trail the answers)."""
    before = [cpu_s(p.pid) for p in procs]
    out = run()
    time.sleep(1.0)
    after = [cpu_s(p.pid) for p in procs]
    spent = {n: (a - b) * 1000 / len(out) for n, b, a in zip(PROCESSES, before, after, strict=True)}
    return out, spent


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


SERVE = [sys.executable, "-m", "infra.cli", "serve"]
PROCESSES = ("ledger", "upstream", "ingress")  # as measure() starts them


@dataclass
class Backends:
    procs: list[subprocess.Popen[bytes]]  # the ledger and the fast upstream
    upstream: str  # the fast upstream's base URL
    ingress_env: dict[str, str]  # what an ingress in front of them is started with


def backends(tmp: Path, store_url: str, ids: dict[str, dict[str, str]], name: str) -> Backends:
    """`tollgate serve ledger` and the fast upstream, every cluster of the template served by it
    (``name``: tells apart the files of several runs in ``tmp``)."""
    upstream_port, ledger_port = free_port(), free_port()
    ledger_url = f"http://127.0.0.1:{ledger_port}"
    endpoints = tmp / f"endpoints{name}.json"
    template = load_template(ROOT / "template.yaml")
    upstream = f"http://127.0.0.1:{upstream_port}"
    # Not emulated: no tier RTT is added, so the figures are the gateway's own cost.
    clusters = {c.name: {m: upstream for m in c.models} for c in template.clusters}
    endpoints.write_text(json.dumps({"clusters": clusters, "emulated": False}))
    env = {
        "TOLLGATE_STORE": store_url,
        "TOLLGATE_ADMIN_TOKEN": "bench",
        "TOLLGATE_TEMPLATE": str(ROOT / "template.yaml"),
    }
    procs = [start([*SERVE, "ledger"], {**env, **ids["ledger"]}, ledger_port)]
    procs.append(
        start(
            [sys.executable, "bench/fast_upstream.py", str(upstream_port)],
            {
                "K_SINK": ledger_url,
                "TOLLGATE_OUTBOX_DIR": str(tmp / f"upstream-outbox{name}"),
                "TOLLGATE_OUTBOX_LINGER_MS": os.environ.get("BENCH_METER_LINGER_MS", ""),
                **ids["infer-bench"],
            },
            upstream_port,
        )
    )
    ingress_env = {
        **env,
        **ids["ingress"],
        "K_SINK": ledger_url,
        "TOLLGATE_LEDGER_URL": ledger_url,
        "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints),
        "TOLLGATE_PROBE_INTERVAL_S": "0",
        "TOLLGATE_OUTBOX_DIR": str(tmp / f"outbox{name}"),
    }
    return Backends(procs, upstream, ingress_env)


def measure(
    tmp: Path,
    keys_by_account: dict[str, str],
    low_key: str,
    store_url: str,
    ids: dict[str, dict[str, str]],
    leases: bool,
) -> Figures:
    """Direct and gated latencies and throughputs, with or without credit leases."""
    ingress_port = free_port()
    backend = backends(tmp, store_url, ids, f"-{ingress_port}")
    upstream, procs = backend.upstream, backend.procs
    env = {**backend.ingress_env, "TOLLGATE_LEASES": "on" if leases else "off"}
    procs.append(start([*SERVE, "ingress"], env, ingress_port))
    try:
        direct_url = upstream + "/v1/chat/completions"
        gate_url = f"http://127.0.0.1:{ingress_port}/v1/chat/completions"
        auths = [
            {"Authorization": f"Bearer {key}", wire.TIER: "regional"}
            for key in keys_by_account.values()
        ]
        accounts = list(keys_by_account)
        latencies(gate_url, auths[0], 50)  # warm both paths
        direct_headers = direct_capability(tmp)
        latencies(direct_url, direct_headers, 50)
        settled(store_url, accounts)
        direct, direct_cpu = cpu_per_request(
            procs, lambda: latencies(direct_url, direct_headers, REQUESTS)
        )
        gated, gated_cpu = cpu_per_request(procs, lambda: latencies(gate_url, auths[0], REQUESTS))
        settled(store_url, accounts)
        direct_rps = throughput(direct_url, [direct_headers], REQUESTS)
        gated_rps = throughput(gate_url, auths, REQUESTS)
        low_auth = {"Authorization": f"Bearer {low_key}", wire.TIER: "regional"}
        low = until_refused(gate_url, low_auth, store_url, f"low-{'leases' if leases else 'holds'}")
        peak = peak_kib(procs[-1].pid)
        settled(store_url, accounts)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return Figures(direct, gated, direct_rps, gated_rps, low, peak, direct_cpu, gated_cpu)


def direct_capability(tmp: Path) -> dict[str, str]:
    """The fast upstream checks capabilities: calling it directly presents one (not minted per
    request, so the direct figure stays the upstream's own cost)."""
    from events.capability import sign

    capability = bench_capability("bench0:0", "regional-paris-1", "direct", 16)
    return {wire.CAPABILITY: sign(capability, keys.SigningKey(tmp / "keys").get())}


def main() -> None:
    console = Console(width=150)
    metering = "one event per request" if os.environ.get("BENCH_METER_BATCH") == "0" else "batched"
    linger = os.environ.get("BENCH_METER_LINGER_MS") or f"{METERING_LINGER_S * 1000:.0f} (infer's)"
    metering += f", linger {linger} ms"
    console.print(
        f"[bold]bench/gateway.py[/] on {describe()}; {REQUESTS} requests per figure; "
        f"upstream metering: outbox, {metering}"
    )
    tmp = Path(tempfile.mkdtemp())
    store_url = f"sqlite:///{tmp}/gw.db"
    store = open_store(store_url)
    ledger = Ledger(store)
    keys_by_account = {}
    for i in range(CLIENTS):
        account = f"bench{i}"
        ledger.open_account(account)
        ledger.execute(account, "grant", {"amount": 10**15})
        keys_by_account[account] = ApiKeys(store).issue(account)["key"]
    topo = topology(load_template(ROOT / "template.yaml")).at(time.time())
    quote = topo.quote("smollm2-135m", "regional")
    assert quote is not None
    prompt = ChatRequest.model_validate(BODY).prompt_tokens_bound()
    worst = quote.worst_case(prompt, int(BODY["max_tokens"]))  # type: ignore[call-overload]
    low_keys = []
    for run in ("holds", "leases"):
        ledger.open_account(f"low-{run}")
        ledger.execute(f"low-{run}", "grant", {"amount": LOW_WORST_CASES * worst})
        low_keys.append(ApiKeys(store).issue(f"low-{run}")["key"])
    store.close()

    issuer = Issuer("tollgate")
    server = IssuerServer(issuer)
    server.start()
    try:
        ids = identities(tmp, issuer, server.url)
        runs = {
            "a hold per request": measure(tmp, keys_by_account, low_keys[0], store_url, ids, False),
            "credit leases": measure(tmp, keys_by_account, low_keys[1], store_url, ids, True),
        }
    finally:
        server.stop()
    out = Table(title="request latency (ms), throughput and ingress memory, one run")
    for col in ("ingress", "path", "conc. 1 p50", "p99", "added p50", "added p99", "conc. 8 req/s"):
        out.add_column(col, justify="right")
    for name, f in runs.items():
        d50, d99 = pct(f.direct, 0.5), pct(f.direct, 0.99)
        out.add_row(name, "direct to upstream", f"{d50:.2f}", f"{d99:.2f}", "", "",
                    f"{f.direct_rps:,.0f}")  # fmt: skip
        g50, g99 = pct(f.gated, 0.5), pct(f.gated, 0.99)
        out.add_row(
            "", "through the ingress", f"{g50:.2f}", f"{g99:.2f}", f"{g50 - d50:+.2f}",
            f"{g99 - d99:+.2f}", f"{f.gated_rps:,.0f} ({f.gated_rps / f.direct_rps:.2f}x)",
        )  # fmt: skip
        l50, l99 = pct(f.low, 0.5), pct(f.low, 0.99)
        out.add_row(
            "", f"low balance ({len(f.low)} req.)", f"{l50:.2f}", f"{l99:.2f}",
            f"{l50 - d50:+.2f}", f"{l99 - d99:+.2f}", "",
        )  # fmt: skip
        out.add_row("", "ingress peak RSS", f"{f.peak_kib / 1024:.0f} MiB", "", "", "", "")
    console.print(out)
    cpu = Table(title="CPU ms per request of each process, concurrency 1 (the sum bounds conc. 8)")
    for col in ("ingress", "path", "ingress", "upstream", "ledger (metering)", "total"):
        cpu.add_column(col, justify="right")
    for name, f in runs.items():
        for path, spent in (("direct", f.direct_cpu), ("through the ingress", f.gated_cpu)):
            cpu.add_row(
                name if path == "direct" else "", path,
                *(f"{spent[p]:.2f}" for p in ("ingress", "upstream", "ledger")),
                f"{sum(spent.values()):.2f}",
            )  # fmt: skip
    console.print(cpu)
    console.print(table(figures()))
    p50, p99 = route_decision_us()
    console.print(f"route decision: p50 {p50:.1f} us, p99 {p99:.1f} us; aim p99 < 100 us")


if __name__ == "__main__":
    main()
