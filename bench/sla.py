"""The latency promise, simulated: Tollgate's routing (the real ``router_fn.policy.decide``, the
tier-state model and its learned cold-start estimate, the warm-keeper's ``warmth.targets``)
against latency-only (LiteLLM's latency-based routing: lowest recent average latency), cost-only,
round-robin and random, on the same seeded day of traffic.

The world (a discrete-event model, FIFO per endpoint):
- tiers: two edge sites (RTT 8 and 12 ms, models <= 13B, one GPU: 2 concurrent requests per
  model), a regional data centre (35 ms, <= 70B, 16 per model), a cloud partner (200 ms, every
  model, 64 per model); a degraded site adds 60 ms RTT while it lasts (the network says so);
- models: 135M (cold start ~0.3 s), 8B on vLLM (~30 s), 70B (~3 min), lognormal; an endpoint
  unloads after 5 idle minutes (scale to zero); prefill and decode speeds per model;
- a day: a diurnal load curve with bursts, three request classes: latency-critical (20 ms budget,
  135M, the plan ``edge-critical``), interactive (150 ms budget, 8B, plan ``interactive``), batch
  (no budget, 8B or 70B).

Figures: share of budgets met among the requests some tier could have met (warm and idle, the
best RTT + prefill within budget), p99 time to first token per class, cost per million tokens,
SLA credits (10% of an account-day's spend when under 95% met), cold starts. The aim: >= 99% of
feasible budgets met, at a cost no higher than cost-only's on the requests cost-only also serves
within budget (budgets are what the higher edge prices buy).

Run: ``.venv/bin/python bench/sla.py [--requests N] [--seed S]``. Deterministic for a seed."""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from events.quote import Quote  # noqa: E402
from router_fn.policy import AllFull, Decision, NoRoute, RouteRequest, decide  # noqa: E402
from router_fn.tierstate import (  # noqa: E402
    COLD_SAMPLES,
    ClusterState,
    ColdStarts,
    Degradation,
    Endpoint,
    Health,
    Load,
)
from router_fn.topology import ClusterSpec, ModelSpec, PlanSpec, Topology, Warming  # noqa: E402
from router_fn.warmth import targets  # noqa: E402

DAY_S = 86_400
IDLE_UNLOAD_S = 300.0
WARM_TICK_S = 60.0
DEGRADED_EXTRA_MS = 60
SLA_OBJECTIVE = 0.95
SLA_CREDIT_SHARE = 0.10
B = 10**9


@dataclass(frozen=True)
class ModelWorld:
    spec: ModelSpec
    cold_median_s: float
    prefill_tok_s: float
    decode_tok_s: float


MODELS = {
    "small": ModelWorld(ModelSpec("small", "S-135M", 135 * 10**6, 8192, 400, 960), 0.3, 10000, 60),
    "mid": ModelWorld(ModelSpec("mid", "M-8B", 8 * B, 16384, 45_000, 960), 30.0, 8000, 80),
    "big": ModelWorld(ModelSpec("big", "B-70B", 70 * B, 32768, 240_000, 960), 180.0, 3000, 30),
}
CAPACITY = {"edge": 2, "regional": 16, "cloud": 64}  # concurrent requests per model endpoint


def _cluster(
    name: str, tier: str, rtt: int, limit: int | None, models: Sequence[str]
) -> ClusterSpec:
    return ClusterSpec(name, tier, "FR", rtt, limit, {m: f"sim://{name}/{m}" for m in models})


CLUSTERS = (
    _cluster("edge-a", "edge", 8, 13 * B, ["small", "mid"]),
    _cluster("edge-b", "edge", 12, 13 * B, ["small", "mid"]),
    _cluster("regional", "regional", 35, 70 * B, ["small", "mid", "big"]),
    _cluster("cloud", "cloud", 200, None, ["small", "big"]),
)


def _quote(inp: int, out: int) -> Quote:
    return Quote(
        price_book="sim", input_per_million=inp, output_per_million=out, per_engine_second=1
    )


QUOTES = {
    ("small", "edge"): _quote(60, 120),
    ("small", "regional"): _quote(40, 80),
    ("small", "cloud"): _quote(30, 60),
    ("mid", "edge"): _quote(450, 900),
    ("mid", "regional"): _quote(300, 600),
    ("big", "regional"): _quote(1800, 3600),
    ("big", "cloud"): _quote(1200, 2400),
}
PLANS = {
    "edge-critical": PlanSpec("edge-critical", latency_target_ms=20),
    "interactive": PlanSpec("interactive", latency_target_ms=150),
    "batch": PlanSpec("batch", max_queue_wait_ms=None),  # waits for the cheapest
}
TOPOLOGY = Topology(
    CLUSTERS, {k: m.spec for k, m in MODELS.items()}, QUOTES, PLANS, Warming(900, 600)
)


@dataclass(frozen=True)
class Request:
    at: float
    cls: str  # critical | interactive | batch
    account: str
    plan: str
    model: str
    budget_ms: int | None
    prompt: int
    completion: int


def traffic(n: int, rng: random.Random) -> list[Request]:
    """``n`` requests over a day: a diurnal curve (peak mid-afternoon) with bursts."""
    bursts = [(rng.uniform(0, DAY_S), rng.uniform(120, 600)) for _ in range(8)]

    def weight(t: float) -> float:
        diurnal = 0.25 + 0.75 * (1 - math.cos(2 * math.pi * (t - 4 * 3600) / DAY_S)) / 2
        return diurnal * (4.0 if any(s <= t < s + d for s, d in bursts) else 1.0)

    times: list[float] = []
    while len(times) < n:  # thinning: keep a uniform arrival with probability weight / max
        t = rng.uniform(0, DAY_S)
        if rng.random() < weight(t) / 4.0:
            times.append(t)
    times.sort()
    out = []
    for t in times:
        roll = rng.random()
        n = rng.randrange(8)  # eight accounts per class, each on its class's plan
        if roll < 0.45:
            prompt, completion = rng.randint(20, 80), rng.randint(8, 64)
            out.append(
                Request(t, "critical", f"c{n}", "edge-critical", "small", 20, prompt, completion)
            )
        elif roll < 0.80:
            prompt, completion = rng.randint(100, 800), rng.randint(32, 256)
            out.append(
                Request(t, "interactive", f"i{n}", "interactive", "mid", 150, prompt, completion)
            )
        else:
            model = "big" if rng.random() < 0.4 else "mid"
            prompt, completion = rng.randint(500, 4000), rng.randint(128, 1024)
            out.append(Request(t, "batch", f"b{n}", "batch", model, None, prompt, completion))
    return out


def degradations(rng: random.Random) -> dict[str, list[tuple[float, float]]]:
    """Three 20-40 minute degradations per edge site over the day."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for site in ("edge-a", "edge-b"):
        spans = []
        for _ in range(3):
            start = rng.uniform(0, DAY_S - 3600)
            spans.append((start, start + rng.uniform(1200, 2400)))
        windows[site] = sorted(spans)
    return windows


@dataclass
class EndpointSim:
    """One (cluster, model) infer function: slots, a FIFO queue, scale to zero."""

    capacity: int
    ready_at: float | None = None  # None: unloaded; else when its model is (or was) loaded
    free: list[float] = field(default_factory=list)  # when each busy slot frees (a heap)
    last_end: float = 0.0
    pending: deque[float] = field(default_factory=deque)  # start times of admitted requests
    cold_starts: int = 0
    samples: list[int] = field(default_factory=list)

    def settle(self, now: float) -> None:
        """Unload if idle long enough before ``now`` (scale to zero)."""
        while self.free and self.free[0] <= now:
            heapq.heappop(self.free)
        while self.pending and self.pending[0] <= now:
            self.pending.popleft()
        idle = self.ready_at is not None and not self.free and self.ready_at <= now
        if idle and now - max(self.last_end, self.ready_at or 0.0) > IDLE_UNLOAD_S:
            self.ready_at = None

    def load(self, now: float, rng: random.Random, median_s: float) -> None:
        if self.ready_at is None:
            took = median_s * math.exp(rng.gauss(0, 0.35))
            self.ready_at = now + took
            self.cold_starts += 1
            self.samples = [*self.samples, round(took * 1000)][-COLD_SAMPLES:]

    def keep(self, now: float) -> None:
        self.last_end = max(self.last_end, now)

    def warm(self, now: float) -> bool:
        return self.ready_at is not None and self.ready_at <= now

    def start_time(self, now: float) -> float:
        ready = self.ready_at if self.ready_at is not None else now
        slot = self.free[0] if len(self.free) >= self.capacity else now
        return max(now, ready, slot)

    def admit(self, start: float, end: float) -> None:
        if len(self.free) >= self.capacity:
            heapq.heappop(self.free)
        heapq.heappush(self.free, end)
        self.pending.append(start)
        self.last_end = max(self.last_end, end)


class World:
    def __init__(self, seed: int, degraded: dict[str, list[tuple[float, float]]]) -> None:
        self.rng = random.Random(seed)
        self.degraded = degraded
        self.endpoints = {
            (c.name, m): EndpointSim(CAPACITY[c.tier]) for c in CLUSTERS for m in c.infer_urls
        }

    def degraded_at(self, cluster: str, t: float) -> tuple[float, float] | None:
        return next((w for w in self.degraded.get(cluster, ()) if w[0] <= t < w[1]), None)

    def rtt_ms(self, cluster: ClusterSpec, t: float) -> int:
        return cluster.rtt_ms + (DEGRADED_EXTRA_MS if self.degraded_at(cluster.name, t) else 0)

    def serve(self, req: Request, cluster: ClusterSpec) -> tuple[float, float]:
        """Run ``req`` on ``cluster``: (time to first token ms, cost in micro-credits)."""
        t = req.at
        ep = self.endpoints[(cluster.name, req.model)]
        ep.settle(t)
        world = MODELS[req.model]
        ep.load(t, self.rng, world.cold_median_s)
        start = ep.start_time(t)
        prefill = req.prompt / world.prefill_tok_s
        end = start + prefill + req.completion / world.decode_tok_s
        ep.admit(start, end)
        ttft = (start - t + prefill) * 1000 + self.rtt_ms(cluster, t)
        q = QUOTES[(req.model, cluster.tier)]
        cost = req.prompt * q.input_per_million + req.completion * q.output_per_million
        return ttft, cost

    def feasible(self, req: Request) -> bool:
        """Some tier could have met the budget: warm, idle, best RTT + prefill."""
        if req.budget_ms is None:
            return False
        prefill_ms = req.prompt / MODELS[req.model].prefill_tok_s * 1000
        return any(
            self.rtt_ms(c, req.at) + prefill_ms <= req.budget_ms
            for c in CLUSTERS
            if c.hosts(req.model)
        )

    def live(self, now: float) -> dict[str, ClusterState]:
        """What the tier state would hold: fresh probes, learned cold starts, degradations."""
        view = {}
        for c in CLUSTERS:
            endpoints = {}
            for m in c.infer_urls:
                ep = self.endpoints[(c.name, m)]
                ep.settle(now)
                running = len(ep.free)
                queued = sum(1 for s in ep.pending if s > now)
                # The tier's slots as replicas of one request each (the models' concurrency).
                replicas = CAPACITY[c.tier]
                load = Load(
                    queued, max(running - queued, 0), ep.warm(now), None, now, None, replicas
                )
                cold = ColdStarts(tuple(ep.samples)) if ep.samples else None
                endpoints[m] = Endpoint(Health(True, 0, now), load, cold)
            window = self.degraded_at(c.name, now)
            degr = (
                (Degradation("camara", "network quality", window[0], window[1]),) if window else ()
            )
            view[c.name] = ClusterState(c.name, endpoints, degr)
        return view


Router = Callable[[Request, World], ClusterSpec]


def hosting(req: Request) -> list[ClusterSpec]:
    return [
        c
        for c in CLUSTERS
        if c.hosts(req.model)
        and (c.max_parameters is None or MODELS[req.model].spec.parameters <= c.max_parameters)
    ]


class Tollgate:
    """The real policy over the simulated tier state; wakes what a decision names; a warm-keeper
    tick every minute keeps what plans with traffic need warm (router_fn/warmth.py)."""

    def __init__(self) -> None:
        self.demand: dict[tuple[str, str], float] = {}
        self.next_tick = 0.0

    def __call__(self, req: Request, world: World) -> ClusterSpec:
        while self.next_tick <= req.at:
            self._tick(world, self.next_tick)
            self.next_tick += WARM_TICK_S
        route = RouteRequest(
            MODELS[req.model].spec,
            req.budget_ms,
            prompt_tokens=req.prompt,
            max_tokens=req.completion,
        )
        decision: Decision = decide(route, TOPOLOGY, world.live(req.at), PLANS[req.plan])
        for sleeper in decision.wake:
            ep = world.endpoints[(sleeper.cluster, req.model)]
            ep.settle(req.at)
            ep.load(req.at, world.rng, MODELS[req.model].cold_median_s)
        self.demand[(req.plan, req.model)] = req.at
        return TOPOLOGY.cluster(decision.cluster)

    def _tick(self, world: World, now: float) -> None:
        for target in targets(TOPOLOGY, world.live(now), self.demand, [], now):
            ep = world.endpoints[(target.cluster, target.model)]
            ep.settle(now)
            ep.load(now, world.rng, MODELS[target.model].cold_median_s)
            ep.keep(now)


class LatencyOnly:
    """LiteLLM's latency-based routing: the deployment with the lowest average of its recent
    observed latencies (untried first); no budgets, prices or network signals."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=10))

    def __call__(self, req: Request, world: World) -> ClusterSpec:
        def avg(c: ClusterSpec) -> tuple[float, str]:
            s = self.seen[(c.name, req.model)]
            return (sum(s) / len(s) if s else -1.0, c.name)

        return min(hosting(req), key=avg)

    def observe(self, req: Request, cluster: ClusterSpec, ttft: float) -> None:
        self.seen[(cluster.name, req.model)].append(ttft)


def cost_only(req: Request, world: World) -> ClusterSpec:
    return min(
        hosting(req), key=lambda c: (QUOTES[(req.model, c.tier)].output_per_million, c.rtt_ms)
    )


class RoundRobin:
    def __init__(self) -> None:
        self.turn: dict[str, int] = defaultdict(int)

    def __call__(self, req: Request, world: World) -> ClusterSpec:
        options = hosting(req)
        self.turn[req.model] += 1
        return options[self.turn[req.model] % len(options)]


class Uniform:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed + 1)

    def __call__(self, req: Request, world: World) -> ClusterSpec:
        return self.rng.choice(hosting(req))


@dataclass
class Outcome:
    name: str
    met: int = 0
    feasible: int = 0
    ttft: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cost: float = 0.0
    tokens: int = 0
    cold_starts: int = 0
    credits: float = 0.0
    per_request: list[tuple[float, bool | None]] = field(default_factory=list)  # cost, met

    @property
    def met_share(self) -> float:
        return self.met / self.feasible if self.feasible else 1.0

    def p99(self, cls: str) -> float:
        xs = sorted(self.ttft[cls])
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else 0.0


def run(name: str, router: Router, requests: list[Request], seed: int) -> Outcome:
    world = World(seed, degradations(random.Random(seed)))
    out = Outcome(name)
    spend: dict[str, float] = defaultdict(float)
    budgeted: dict[str, list[bool]] = defaultdict(list)
    for req in requests:
        try:
            cluster = router(req, world)
        except (NoRoute, AllFull):  # refused: not served
            continue
        ttft, cost = world.serve(req, cluster)
        if isinstance(router, LatencyOnly):
            router.observe(req, cluster, ttft)
        out.ttft[req.cls].append(ttft)
        out.cost += cost
        out.tokens += req.prompt + req.completion
        spend[req.account] += cost
        met = None
        if req.budget_ms is not None:
            met = ttft <= req.budget_ms
            budgeted[req.account].append(met)
            if world.feasible(req):
                out.feasible += 1
                out.met += met
        out.per_request.append((cost, met))
    out.cold_starts = sum(ep.cold_starts for ep in world.endpoints.values())
    for account, results in budgeted.items():
        if sum(results) < SLA_OBJECTIVE * len(results):
            out.credits += SLA_CREDIT_SHARE * spend[account]
    return out


def simulate(n: int, seed: int) -> list[Outcome]:
    requests = traffic(n, random.Random(seed))
    routers: list[tuple[str, Router]] = [
        ("tollgate", Tollgate()),
        ("latency-only", LatencyOnly()),
        ("cost-only", cost_only),
        ("round-robin", RoundRobin()),
        ("random", Uniform(seed)),
    ]
    return [run(name, router, requests, seed) for name, router in routers]


def same_requests_cost(ours: Outcome, cheap: Outcome) -> tuple[float, float]:
    """Cost of both on the requests cost-only also served acceptably (no budget, or met)."""
    mine = theirs = 0.0
    for (c1, _), (c2, met2) in zip(ours.per_request, cheap.per_request, strict=True):
        if met2 is not False:
            mine += c1
            theirs += c2
    return mine, theirs


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.machine import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    outcomes = simulate(args.requests, args.seed)
    title = f"bench/sla.py: {args.requests} requests over a simulated day, seed {args.seed}"
    table = Table(title=title)
    for column in (
        "policy",
        "feasible met",
        "p99 TTFT 20ms cls",
        "p99 150ms cls",
        "p99 batch",
        "cost/M tok",
        "SLA credits",
        "cold starts",
    ):
        table.add_column(column, justify="right")
    for o in outcomes:
        table.add_row(
            o.name,
            f"{o.met_share:.2%}",
            f"{o.p99('critical'):,.0f}",
            f"{o.p99('interactive'):,.0f}",
            f"{o.p99('batch'):,.0f}",
            f"{o.cost / o.tokens:,.1f}",
            f"{o.credits / 1e6:,.2f} M",
            str(o.cold_starts),
        )
    console = Console(width=120)
    console.print(table)
    ours = next(o for o in outcomes if o.name == "tollgate")
    cheap = next(o for o in outcomes if o.name == "cost-only")
    mine, theirs = same_requests_cost(ours, cheap)
    console.print(
        f"On the requests cost-only served acceptably (no budget, or budget met): tollgate "
        f"{mine / 1e6:,.2f} M credits vs cost-only {theirs / 1e6:,.2f} M ({mine / theirs:.3f}x)."
    )
    console.print(f"Machine: {describe()}")


if __name__ == "__main__":
    main()
