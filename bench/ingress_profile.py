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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from flask.testing import FlaskClient

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

T = TypeVar("T")


@contextmanager
def in_process_ingress(keys_for: Callable[[ApiKeys], T]) -> Iterator[tuple[FlaskClient, T]]:
    """The ingress app as shipped (credit leases on), driven in-process by Flask's test client,
    against bench/gateway.py's real fast upstream and `tollgate serve ledger` on sqlite, with
    account ``bench0`` funded; ``keys_for`` issues the API keys the bench uses."""
    tmp = Path(tempfile.mkdtemp())
    store_url = f"sqlite:///{tmp}/gw.db"
    store = open_store(store_url)
    Ledger(store).open_account("bench0")
    Ledger(store).execute("bench0", "grant", {"amount": 10**15})
    keys = keys_for(ApiKeys(store))
    store.close()
    issuer = Issuer("tollgate")
    server = IssuerServer(issuer)
    server.start()
    backend = backends(tmp, store_url, identities(tmp, issuer, server.url), "")
    try:
        os.environ.update(backend.ingress_env)
        yield build_app("ingress").test_client(), keys
    finally:
        for p in backend.procs:
            p.terminate()
        for p in backend.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # the upstream retries meterings the ledger missed
                p.kill()
                p.wait(5)
        server.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(f"bench/ingress_profile.py on {describe()}; {n} requests")
    with in_process_ingress(lambda keys: keys.issue("bench0")["key"]) as (client, key):
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


if __name__ == "__main__":
    main()
