"""Journal entries: one per change of an account's state, append-only, chained per account by
HMAC-SHA256 under the ledger's keys (ledger_fn/keys.py).

The journal is the ledger's truth: an operation is committed when its entry is written (a single
conditional put on a new key, so two writers can never both commit entry N). Account snapshots
(``STATE`` items) are only checkpoints that spare a reader from replaying the whole chain.

An entry's MAC covers its sequence number, its predecessor's MAC, the operation, its result, the
balances after it and the names it claims (ledger_fn/claims.py): one entry read on its own can be
checked, and a chain cannot be rewritten, reordered or cut in the middle without a key. Entries
written before the chain was keyed (no ``kid``) do not verify: there was no production data then,
so a journal that old is refused rather than trusted.
"""

from __future__ import annotations

from typing import Any

from ledger_fn.keys import LedgerKeys
from ledger_fn.state import Op

ENTRY_PREFIX = "J#"


class CorruptJournal(Exception):
    """A journal entry does not verify or does not chain to its predecessor."""


def entry_sk(seq: int) -> str:
    """Zero-padded, so the sort-key order of entries is their sequence order."""
    return f"{ENTRY_PREFIX}{seq:012d}"


def _body(
    prev: str,
    seq: int,
    op: dict[str, Any],
    result: dict[str, Any],
    balances: dict[str, int],
    claims: dict[str, str],
) -> dict[str, Any]:
    return {
        "prev": prev,
        "seq": seq,
        "op": op,
        "result": result,
        "balances": balances,
        "claims": claims,
    }


def entry_data(
    keys: LedgerKeys,
    prev: str,
    seq: int,
    op: Op,
    result: dict[str, Any],
    balances: dict[str, int],
    claims: dict[str, str],
) -> dict[str, Any]:
    body = _body(prev, seq, op.model_dump(mode="json"), result, balances, claims)
    kid, mac = keys.sign(body)
    return {**body, "kid": kid, "hash": mac}


def check_entry(keys: LedgerKeys, entry: dict[str, Any]) -> None:
    """Raise CorruptJournal unless ``entry`` carries a MAC one of ``keys`` made over it."""
    seq = entry.get("seq")
    if not isinstance(seq, int):
        raise CorruptJournal(f"entry {seq!r} has no sequence number")
    if "kid" not in entry:
        raise CorruptJournal(f"entry {seq} is unkeyed (written before the journal was keyed)")
    try:
        body = _body(
            entry["prev"], seq, entry["op"], entry["result"], entry["balances"], entry["claims"]
        )
        mac = entry["hash"]
    except KeyError as exc:
        raise CorruptJournal(f"entry {seq} lacks {exc}") from None
    if not keys.verifies(entry["kid"], body, mac):
        raise CorruptJournal(f"entry {seq} does not match its MAC (key {entry['kid']!r})")
