"""Ledger cycles (authorize + settle) per second vs the bare conditional write of the same store.

Run: `make bench` (or `.venv/bin/python bench/ledger.py`). Prints the machine, then for sqlite and
DynamoDB Local, with 1 and 16 concurrent clients: ledger cycles/s, bare conditional writes/s
(read + put-if-version of one item, the cheapest useful write), and the ratio
cycle time / bare write time (aim: <= 3). Then the peak resident memory of `tollgate serve ledger`
after serving cycles over HTTP (aim: < 150 MB). Figures vary run to run on small machines:
compare the ratios within one run, not across runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The ledger signs its journal (ledger_fn/keys.py); a bench key unless one is given.
os.environ.setdefault("TOLLGATE_LEDGER_KEYS", "bench:tollgate-bench-ledger-key-0123456789")

from bench.machine import describe  # noqa: E402
from events import types  # noqa: E402
from functions.cloudevent import make_event, to_binary  # noqa: E402
from functions.store import Absent, ConditionFailed, Item, Store, VersionIs, open_store  # noqa: E402
from ledger_fn.ledger import Ledger  # noqa: E402
from tests.dynamodb_local import DynamoDBLocal, java_missing  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))


def rate(clients: int, work: Callable[[int, int], None]) -> float:
    """Operations per second with ``clients`` threads each calling work(client, i) in a loop."""
    counts = [0] * clients
    stop = time.monotonic() + SECONDS

    def loop(c: int) -> None:
        i = 0
        while time.monotonic() < stop:
            work(c, i)
            i += 1
        counts[c] = i

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def bare_write(store: Store, run: str) -> Callable[[int, int], None]:
    def work(client: int, i: int) -> None:
        pk = f"BENCH#{run}#{client}"
        while True:
            item = store.get(pk, "C")
            if item is None:
                with contextlib.suppress(ConditionFailed):
                    store.put(Item(pk, "C", 1, {"n": 0}), Absent())
                continue
            try:
                store.put(
                    Item(pk, "C", item.version + 1, {"n": item.data["n"] + 1}),
                    VersionIs(item.version),
                )
                return
            except ConditionFailed:
                continue

    return work


def ledger_cycle(ledger: Ledger, run: str, clients: int) -> Callable[[int, int], None]:
    # One account per client: the figure is the cost of the ledger, not of contention on one
    # account (that is proven correct in tests/ledger/test_concurrency.py).
    for c in range(clients):
        ledger.open_account(f"{run}-{c}")
        ledger.execute(f"{run}-{c}", "grant", {"amount": 10**15})

    def work(client: int, i: int) -> None:
        account = f"{run}-{client}"
        hold = ledger.execute(account, "authorize", {"amount": 100, "ttl_seconds": 60}, key=f"a{i}")
        ledger.execute(account, "settle", {"hold_id": hold["hold_id"], "amount": 40}, key=f"s{i}")

    return work


def store_rows(name: str, url: str) -> list[tuple[str, int, float, float, float]]:
    rows = []
    for clients in (1, 16):
        store = open_store(url)
        run = f"{name}{clients}"
        bare = rate(clients, bare_write(store, run))
        cycles = rate(clients, ledger_cycle(Ledger(store), run, clients))
        rows.append((name, clients, cycles, bare, bare / cycles))
        store.close()
    return rows


def peak_rss_of_served_ledger(url: str) -> float:
    """Serve the ledger as its container would, drive 500 cycles over HTTP, read VmHWM."""
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "ledger", "--port", str(port)],
        env={**os.environ, "TOLLGATE_STORE": url, "TOLLGATE_ADMIN_TOKEN": "bench"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        auth = {"Authorization": "Bearer bench"}
        requests.post(base + "/accounts", json={"account_id": "mem"}, headers=auth, timeout=10)
        requests.post(
            base + "/accounts/mem/grants", json={"amount": 10**15}, headers=auth, timeout=10
        )
        session = requests.Session()
        for _ in range(500):
            msg = to_binary(
                make_event(types.HOLD_AUTHORIZE, "/bench", {"account_id": "mem", "amount": 100})
            )
            r = session.post(base + "/", headers=msg.headers, data=msg.body, timeout=10)
            hold = json.loads(r.content)["hold_id"]
            msg = to_binary(
                make_event(types.HOLD_SETTLE, "/bench", {"hold_id": hold, "amount": 40})
            )
            session.post(base + "/", headers=msg.headers, data=msg.body, timeout=10)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        return int(hwm.split()[1]) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    console = Console()
    console.print(f"[bold]bench/ledger.py[/] on {describe()}; {SECONDS:g} s per figure")
    tmp = tempfile.TemporaryDirectory()
    sqlite_url = f"sqlite:///{tmp.name}/bench.db"
    rows = store_rows("sqlite", sqlite_url)
    missing = java_missing()
    if missing is None:
        local = DynamoDBLocal()
        endpoint = local.start()
        try:
            from functions.store.dynamodb import create_table

            create_table("bench", endpoint_url=endpoint)
            rows += store_rows("dynamodb-local", endpoint.replace("http", "dynamodb", 1) + "/bench")
        finally:
            local.stop()
    else:
        console.print(f"DynamoDB Local skipped: {missing}")
    table = Table(title="ledger cycle (authorize + settle) vs bare conditional write")
    for column in ("store", "clients", "cycles/s", "bare writes/s", "cycle cost in bare writes"):
        table.add_column(column, justify="right")
    for name, clients, cycles, bare, ratio in rows:
        table.add_row(name, str(clients), f"{cycles:,.0f}", f"{bare:,.0f}", f"{ratio:.2f}")
    console.print(table)
    console.print("aim: a cycle costs <= 3 bare writes")
    rss = peak_rss_of_served_ledger(sqlite_url)
    console.print(
        f"peak RSS of `tollgate serve ledger` after 500 HTTP cycles: {rss:.1f} MB (aim < 150 MB)"
    )


if __name__ == "__main__":
    main()
