"""Where one request's time goes in the ingress: cProfile over the ingress app driven in-process
(Flask's test client, so the profile sees the request thread; waitress would hide it) against
bench/gateway.py's real parts on loopback: the fast canned upstream and `tollgate serve ledger`
(sqlite), with credit leases as shipped.

Run: `.venv/bin/python bench/ingress_profile.py [requests]` (default 500). Prints the top
functions by own time and by cumulative time, and the mean time per request.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import BODY, backends, identities  # noqa: E402
from bench.machine import describe  # noqa: E402
from events import wire  # noqa: E402
from functions.apikeys import ApiKeys  # noqa: E402
from functions.store import open_store  # noqa: E402
from infra.local.issuer import Issuer, IssuerServer  # noqa: E402
from infra.serve import build_app  # noqa: E402
from ledger_fn.ledger import Ledger  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(f"bench/ingress_profile.py on {describe()}; {n} requests")
    tmp = Path(tempfile.mkdtemp())
    store_url = f"sqlite:///{tmp}/gw.db"
    store = open_store(store_url)
    Ledger(store).open_account("bench0")
    Ledger(store).execute("bench0", "grant", {"amount": 10**15})
    key = ApiKeys(store).issue("bench0")["key"]
    store.close()
    issuer = Issuer("tollgate")
    server = IssuerServer(issuer)
    server.start()
    ids = identities(tmp, issuer, server.url)
    backend = backends(tmp, store_url, ids, "")
    try:
        os.environ.update(backend.ingress_env)
        client = build_app("ingress").test_client()
        headers = {"Authorization": f"Bearer {key}", wire.TIER: "regional"}

        def one() -> None:
            r = client.post("/v1/chat/completions", json=BODY, headers=headers)
            assert r.status_code == 200, r.get_data(as_text=True)

        for _ in range(50):  # warm: key cache, lease, connections
            one()
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        print(f"mean {(time.perf_counter() - t0) / n * 1000:.2f} ms per request (not profiled)")
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        for _ in range(n):
            one()
        profile.disable()
        print(f"mean {(time.perf_counter() - t0) / n * 1000:.2f} ms per request (profiled)")
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(45)
        stats.print_callees(r"ingress.py:\d+\((handle|_attempt|_call|_authorize)\)")
    finally:
        for p in backend.procs:
            p.terminate()
            p.wait(10)
        server.stop()


if __name__ == "__main__":
    main()
