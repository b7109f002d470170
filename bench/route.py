"""Route decision time: p50/p99 of `router_fn.policy.decide` over the shipped template's
topology with realistic live state, against a bare dict lookup timed the same way (the floor of
the measurement itself), plus the per-request snapshot read (cache hit) and the store query
behind it (once per 250 ms per instance). Aim: decision p99 < 100 µs.

Run: `.venv/bin/python bench/route.py` (BENCH_ROUNDS sets the decisions timed, default 50000).
Figures vary run to run on small machines: compare rows within one run.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from events import wire  # noqa: E402
from functions.store.sqlite import SqliteStore  # noqa: E402
from infra.template.load import load_template  # noqa: E402
from infra.wiring import topology as template_topology  # noqa: E402
from router_fn.policy import (  # noqa: E402
    AllFull,
    Decision,
    NoRoute,
    RouteRequest,
    decide,
    reason_header,
)
from router_fn.tierstate import TierStates  # noqa: E402
from router_fn.topology import Topology  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "50000"))


def seed(states: TierStates, topology: Topology) -> None:
    """A busy afternoon: edges warm with queues, the 70B cold in the cloud, one degraded edge,
    one unhealthy endpoint, cold starts observed on some clusters and not others."""
    for i, cluster in enumerate(topology.clusters):
        for j, model in enumerate(sorted(cluster.infer_urls)):
            healthy = (cluster.name, model) != ("edge-marseille-5g-1", "llama31-8b")
            states.report_health(cluster.name, model, healthy, "" if healthy else "readyz 503")
            states.report_load(
                cluster.name,
                model,
                queue_depth=(i + j) % 3,
                running=1 + i,
                warm=model != "llama33-70b" or cluster.tier == "regional",
                cold_start_ms=None if i % 2 else 1500 * (j + 1),
                tokens_per_second=40.0 + 10 * i if j else None,
            )
    states.degrade("edge-lyon-5g-1", "packet delay budget not met", time.time() + 3600, "/camara")


def requests(topology: Topology) -> list[tuple[RouteRequest, str | None]]:
    """The mix an ingress sees: each model, plan defaults, hints, a pin, a failover retry."""
    small = topology.models["smollm2-135m"]
    mid = topology.models["llama31-8b"]
    big = topology.models["llama33-70b"]
    return [
        (RouteRequest(small, prompt_tokens=120, max_tokens=256), "enterprise-5g-bundle"),
        (RouteRequest(small, prompt_tokens=900), "developer"),
        (RouteRequest(mid, latency_budget_ms=40, max_tokens=512), "pay-as-you-go"),
        (RouteRequest(mid, prompt_tokens=300), "edge-seconds-8b"),
        (RouteRequest(big, residency=frozenset({"FR"}), prompt_tokens=4000), None),
        (RouteRequest(small, tier="edge", latency_budget_ms=15), None),
        (
            RouteRequest(small, latency_budget_ms=30, exclude=frozenset({"regional-paris-1"})),
            "enterprise-5g-bundle",
        ),
        (RouteRequest(big, residency=frozenset({"DE"})), "enterprise-5g-bundle"),  # NoRoute
    ]


def timed(rounds: int, call: Callable[[int], object]) -> tuple[float, float]:
    """p50 and p99 in µs of call(i), each call timed alone."""
    samples = []
    clock = time.perf_counter_ns
    gc.disable()  # a collection inside one call would measure the collector, not the call
    try:
        for i in range(rounds):
            started = clock()
            call(i)
            samples.append(clock() - started)
    finally:
        gc.enable()
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[len(samples) * 99 // 100] / 1000


def main() -> None:
    console = Console()
    topology = template_topology(load_template(ROOT / "template.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        states = TierStates(store)
        seed(states, topology)
        live = states.snapshot()
        mix = [(r, topology.plans[p] if p else None) for r, p in requests(topology)]

        def route(i: int) -> object:
            request, plan = mix[i % len(mix)]
            try:
                return decide(request, topology, live, plan)
            except (NoRoute, AllFull):  # refusals are decisions too
                # Not the exception itself: with gc off while timing, its traceback cycle
                # would pile up and the allocator's page faults would be measured.
                return None

        decision = next(d for i in range(len(mix)) if isinstance(d := route(i), Decision))
        quotes = topology.quotes
        key = ("smollm2-135m", "edge")
        cold_states = TierStates(store, cache_s=0)
        rows = [
            ("bare dict lookup (measurement floor)", timed(ROUNDS, lambda i: quotes[key])),
            ("route decision (mix of 8 requests)", timed(ROUNDS, route)),
            ("reason header", timed(ROUNDS, lambda i: reason_header(decision))),
            ("snapshot, cache hit (per request)", timed(ROUNDS, lambda i: states.snapshot())),
            ("snapshot, store query (every 250 ms)", timed(2000, lambda i: cold_states.snapshot())),
        ]
        store.close()

    table = Table(title=f"Route decision time - {describe()}")
    table.add_column("what")
    table.add_column("p50 µs", justify="right")
    table.add_column("p99 µs", justify="right")
    table.add_column("p99 vs dict lookup", justify="right")
    floor = rows[0][1][1]
    for name, (p50, p99) in rows:
        table.add_row(name, f"{p50:.2f}", f"{p99:.2f}", f"{p99 / floor:.0f}x")
    console.print(table)
    p99 = rows[1][1][1]
    verdict = "[green]meets[/]" if p99 < 100 else "[red]misses[/]"
    console.print(
        f"decision p99 {p99:.1f} µs {verdict} the 100 µs aim; example: {decision.cluster}"
    )
    console.print(f"  {wire.ROUTE_REASON}: {reason_header(decision)}")


if __name__ == "__main__":
    main()
