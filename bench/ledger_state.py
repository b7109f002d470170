"""How big one account's STATE item gets at the ledger's limits, and what a cached state costs.

Run: `.venv/bin/python bench/ledger_state.py`. Three accounts are driven to every limit the
state has (256 live lots, 512 settled holds, 256 revocations, 256 open holds, in that order),
each command under a CloudEvent-sized idempotency key, through the real ledger on sqlite:
  typical     ids and names as the demo uses them, amounts of a few million credits;
  full-width  every amount and time 19 digits wide;
  long        every field as long as its schema allows (64-char account, 16 tiers and 64 models
              of 128 chars per lot, 128-char tier/model/price book on holds, 256-byte event ids
              and sources).
Operations the byte budget refuses are counted (nothing is written for them). The final state
is then written as a checkpoint to DynamoDB Local and read back, and its in-memory size (what
the ledger cache holds) is measured with tracemalloc. Prints the machine first.
`scenario` yields the commands only, so the same accounts can be driven through another
version of the ledger for a before/after comparison.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOLLGATE_LEDGER_KEYS", "bench:tollgate-bench-ledger-key-0123456789")

LOTS, SETTLED, REVOKED, OPEN_HOLDS = 256, 512, 256, 256
Command = tuple[str, dict[str, Any], str]  # kind, args, idempotency key
LAST_HOLD = "<the hold the last authorize made>"  # a driver puts the real hold id in its place


def _name(prefix: str, width: int) -> str:
    return (prefix + "x" * width)[:width]


def scenario(style: str) -> tuple[str, Iterator[Command]]:
    """The account id and the commands that drive it to every limit, in ``style``."""
    long = style == "long"
    wide = style in ("full-width", "long")
    account = _name("acct-", 64) if long else "acct-000042"
    amount = 9_000_000_000_000_000_000 if wide else 5_000_000
    expires = 9_000_000_000_000_000_000 if wide else None
    tiers = [_name(f"tier{i}-", 128) for i in range(16)] if long else None
    models = [_name(f"model{i}-", 128) for i in range(64)] if long else None
    tier = tiers[0] if tiers else "edge"
    model = models[0] if models else "smollm2-135m"
    rate = 9_000_000_000_000_000_000 if wide else 1_000_000
    quote = {
        "price_book": _name("book-", 128) if long else "2026-11-01",
        "unit": "token",
        "input_per_million": rate,
        "output_per_million": rate,
        "per_engine_second": 0,
        "rounding": "up",
    }
    source = _name("/tollgate/ingress-", 256) if long else "/tollgate/ingress"

    def key() -> str:
        return f"{source}#{_name(str(uuid.uuid4()), 256) if long else uuid.uuid4()}"

    def commands() -> Iterator[Command]:
        for n in range(LOTS):
            grant: dict[str, Any] = {"amount": amount, "origin": "top-up"}
            if expires is not None:
                grant["expires_at"] = expires
            if long:
                grant |= {"tiers": tiers, "models": models, "reference": _name(f"ref{n}-", 128)}
            yield "grant", grant, key()
        hold = {"amount": 1, "ttl_seconds": 86400, "tier": tier, "model": model, "quote": quote}
        for _ in range(SETTLED):
            yield "authorize", hold, key()
            yield "settle", {"hold_id": LAST_HOLD, "amount": 1}, key()
        for n in range(REVOKED):
            revoke = {"lot_id": f"lot-{2 + n}", "amount": 1, "reference": f"topup-{n}-r1"}
            yield "revoke", revoke, key()
        for _ in range(OPEN_HOLDS):
            yield "authorize", hold, key()

    return account, commands()


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.machine import describe
    from functions.errors import Conflict
    from functions.store import Item
    from functions.store.dynamodb import DynamoStore, create_table
    from functions.store.port import MAX_DATA_BYTES, encode_data
    from functions.store.sqlite import SqliteStore
    from ledger_fn import footprint
    from ledger_fn.ledger import STATE_BUDGET_BYTES, Ledger
    from ledger_fn.state import AccountState
    from tests.dynamodb_local import DynamoDBLocal, java_missing

    console = Console(width=160)
    console.print(f"Machine: {describe()}")
    console.print(f"Budget {STATE_BUDGET_BYTES:,} B; store item data limit {MAX_DATA_BYTES:,} B")
    table = Table(title="One account driven to every limit (after)")
    for column in (
        "accounts",
        "commands",
        "refused (budget/caps)",
        "STATE data bytes",
        "footprint bound",
        "DynamoDB Local put",
        "memory (tracemalloc)",
        "memory / byte",
        "µs per command",
    ):
        table.add_column(column, justify="right")
    reason = java_missing()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        dynamo = None
        if reason is None:
            endpoint = stack.enter_context(DynamoDBLocal())
            create_table("bench_state", endpoint_url=endpoint)
            dynamo = DynamoStore("bench_state", endpoint_url=endpoint)
        for style in ("typical", "full-width", "long"):
            ledger = Ledger(SqliteStore(Path(tmp) / f"{style}.db"))
            account, commands = scenario(style)
            ledger.open_account(account)
            count = refused = 0
            hold = None
            started = time.perf_counter()
            for kind, args, key in commands:
                count += 1
                if args.get("hold_id") == LAST_HOLD:
                    args = {**args, "hold_id": hold}
                try:
                    result = ledger.execute(account, kind, args, key=key)  # type: ignore[arg-type]
                except Conflict:
                    refused += 1
                    continue
                hold = result.get("hold_id", hold)
            per_command = (time.perf_counter() - started) / count * 1e6
            state = ledger.state(account)
            data = state.model_dump(mode="json")
            size = len(encode_data(data))
            bound = footprint.total(state, footprint.elements(state))
            put = "n/a (no Java)"
            if dynamo is not None:
                dynamo.put(Item(f"ACCT#{account}", "STATE", 1, data))
                back = dynamo.get(f"ACCT#{account}", "STATE")
                put = "ok" if back is not None and back.data == data else "MISMATCH"
            text = encode_data(data)
            tracemalloc.start()
            kept = AccountState.model_validate_json(text)
            memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            del kept
            table.add_row(
                style,
                f"{count:,}",
                f"{refused:,}",
                f"{size:,}",
                f"{bound:,}",
                put,
                f"{memory:,}",
                f"{memory / size:.1f}",
                f"{per_command:,.0f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
