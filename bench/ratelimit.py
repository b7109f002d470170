"""What the rate-limit check costs per request, side by side in one run:

1. the check alone (router_fn/ratelimit.py, in-process over a sqlite store): ``admit`` + the
   ticket's end, for a key with every limit set (requests, tokens, running) against one with
   none, on 1 and 8 threads; and how many counter writes per 1000 requests the shares took;
2. one counter write (a share taken, functions/rateshares.py) on sqlite;
3. the whole ingress in-process (Flask's test client, as bench/ingress_profile.py, against
   `tollgate serve ledger` and the fast upstream on loopback): requests of a limited key and of
   an unlimited key interleaved, mean and p50 per request; the difference is the check in place.

Run: `.venv/bin/python bench/ratelimit.py [requests]` (default 2000).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402

from bench.gateway import BODY  # noqa: E402
from bench.ingress_profile import in_process_ingress  # noqa: E402
from bench.machine import describe  # noqa: E402
from events import wire  # noqa: E402
from events.quote import Usage  # noqa: E402
from events.ratelimits import RateLimits  # noqa: E402
from functions.apikeys import ApiKeys  # noqa: E402
from functions.rateshares import RateShares, window_sk  # noqa: E402
from functions.store import Store, open_store  # noqa: E402
from router_fn.ratelimit import RateLimiter  # noqa: E402

# Large enough never to refuse here: the steady path (admitted from a share) is measured.
LIMITS = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=10**6)
USED = Usage(prompt_tokens=20, completion_tokens=10)


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49]:.1f} / p99 {cuts[98]:.1f} µs"


def counting(store: Store) -> tuple[Store, list[int]]:
    """``store`` with its conditional writes counted."""
    writes = [0]
    put = store.put

    def counted(*args: object, **kwargs: object) -> None:
        writes[0] += 1
        put(*args, **kwargs)  # type: ignore[arg-type]

    store.put = counted  # type: ignore[method-assign]
    return store, writes


def check_alone(store: Store, n: int) -> None:
    print("\n1. the check alone, admit + end per request (µs)")
    print(f"{'threads':>8} | {'no limits':>24} | {'every limit set':>24} | writes / 1000 req")
    for threads in (1, 8):
        counted, writes = counting(store)
        limiter = RateLimiter(counters=RateShares(counted, "bench"), window_s=3600)
        unlimited = measure(limiter, None, n, threads)
        writes[0] = 0
        limited = measure(limiter, LIMITS, n, threads)
        limiter.stop()
        print(f"{threads:>8} | {unlimited:>24} | {limited:>24} | {writes[0] * 1000 / n:.1f}")


def measure(limiter: RateLimiter, limits: RateLimits | None, n: int, threads: int) -> str:
    app = Flask(__name__)
    samples: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        with app.test_request_context():
            for i in range(n // threads):
                t0 = time.perf_counter()
                ticket = limiter.admit(f"key-{threads}", limits, 300)
                if ticket is not None:
                    ticket.end(USED)
                mine.append((time.perf_counter() - t0) * 1e6)
                if i % 50 == 0:
                    time.sleep(0)  # let the background worker run, as between requests
        with lock:
            samples.extend(mine)

    run_threads(worker, threads)
    return percentiles(samples)


def run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_write(store: Store, n: int) -> None:
    shares = RateShares(store, "bench")
    samples = []
    for i in range(min(n, 500)):
        t0 = time.perf_counter()
        shares.hold("bench-write", window_sk(60, 1), {"requests": i + 1}, {"requests": 10**9}, 1e10)
        samples.append((time.perf_counter() - t0) * 1e6)
    print(f"\n2. one share taken (a conditional write on sqlite): {percentiles(samples)}")


def ingress(n: int) -> None:
    def issue(keys: ApiKeys) -> dict[str, str]:
        free = keys.issue("bench0")["key"]
        limited = keys.issue("bench0")
        keys.set_rate_limits("bench0", limited["key_id"], LIMITS)
        return {"unlimited key": free, "limited key": limited["key"]}

    with in_process_ingress(issue) as (client, keyed):
        times: dict[str, list[float]] = {"unlimited key": [], "limited key": []}

        def one(which: str) -> None:
            headers = {"Authorization": f"Bearer {keyed[which]}", wire.TIER: "regional"}
            t0 = time.perf_counter()
            r = client.post("/v1/chat/completions", json=BODY, headers=headers)
            times[which].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.get_data(as_text=True)

        for _ in range(50):  # warm: key cache, lease, connections, shares
            one("unlimited key")
            one("limited key")
        for samples in times.values():
            samples.clear()
        for _ in range(n // 2):
            one("unlimited key")
            one("limited key")
        print("\n3. the whole ingress in-process, interleaved (ms per request)")
        for which, samples in times.items():
            cuts = statistics.quantiles(samples, n=100)
            print(
                f"{which:>14}: mean {statistics.fmean(samples):.3f}  p50 {cuts[49]:.3f}  "
                f"p99 {cuts[98]:.3f}"
            )
        delta = statistics.median(times["limited key"]) - statistics.median(times["unlimited key"])
        print(f"{'difference':>14}: p50 {delta * 1000:+.0f} µs")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"bench/ratelimit.py on {describe()}; {n} requests per row")
    tmp = Path(tempfile.mkdtemp())
    store = open_store(f"sqlite:///{tmp}/limits.db")
    check_alone(store, n)
    one_write(store, n)
    store.close()
    ingress(n)
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
