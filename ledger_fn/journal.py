"""Journal entries: one per change of an account's state, append-only, hash-chained per account.

The journal is the ledger's truth: an operation is committed when its entry is written (a single
conditional put on a new key, so two writers can never both commit entry N). Account snapshots
(``STATE`` items) are only checkpoints that spare a reader from replaying the whole chain."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ledger_fn.state import Op

ENTRY_PREFIX = "J#"


def entry_sk(seq: int) -> str:
    """Zero-padded, so the sort-key order of entries is their sequence order."""
    return f"{ENTRY_PREFIX}{seq:012d}"


def chain_hash(
    prev: str, seq: int, op: Op, result: dict[str, Any], balances: dict[str, int]
) -> str:
    body = {
        "prev": prev,
        "seq": seq,
        "op": op.model_dump(mode="json"),
        "result": result,
        "balances": balances,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_data(
    prev: str, seq: int, op: Op, result: dict[str, Any], balances: dict[str, int]
) -> dict[str, Any]:
    return {
        "seq": seq,
        "prev": prev,
        "hash": chain_hash(prev, seq, op, result, balances),
        "op": op.model_dump(mode="json"),
        "result": result,
        "balances": balances,
    }
