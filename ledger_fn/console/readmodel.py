"""What the console's pages show, computed from the ledger's own records: balances and burn rate,
the burn-down series and the recent journal (with its hash-chain status) from the journal
entries, lots and holds from the account state, and what slice bookings granted."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.accounts import account_for_slice, account_pk, read_profile
from functions.store import Item
from ledger_fn.journal import ENTRY_PREFIX, CorruptJournal, check_entry
from ledger_fn.keys import LedgerKeys
from ledger_fn.ledger import Ledger
from ledger_fn.state import Op

DAY_S = 86_400
BURN_WINDOW_S = 7 * DAY_S
HISTORY = 500  # journal entries read for the burn rate and the burn-down chart
MIN_HISTORY_S = 3600  # less spend history than this says nothing about a rate


@dataclass(frozen=True)
class Burn:
    per_day: int | None  # credits spent per day, None: not enough history
    days_left_tenths: int | None  # tenths of a day left at that rate; None: no spend or history
    since: int | None  # the start of the period the rate is measured over (epoch seconds)


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    name: str
    plan: str | None
    balances: dict[str, int]
    burn: Burn


@dataclass(frozen=True)
class JournalRow:
    seq: int
    at: int
    kind: str
    key: str | None
    amount: int | None
    detail: str
    hash: str
    status: str  # "intact", "hash mismatch", "does not follow the entry before"
    available: int


def entries(ledger: Ledger, account_id: str, limit: int = HISTORY) -> list[dict[str, Any]]:
    """The newest ``limit`` journal entries, newest first."""
    items: Sequence[Item] = ledger.store.query(
        account_pk(account_id), ENTRY_PREFIX, limit=limit, descending=True
    )
    return [item.data for item in items]


def burn(newest_first: Sequence[dict[str, Any]], available: int, now: int) -> Burn:
    """Credits spent per day over the last week (or the history read, if shorter)."""
    if not newest_first:
        return Burn(None, None, None)
    spent_now = int(newest_first[0]["balances"]["spent"])
    start = now - BURN_WINDOW_S
    spent_then, since = None, None
    for entry in newest_first:
        at = int(entry["op"]["at"])
        if at < start:
            spent_then, since = int(entry["balances"]["spent"]), start
            break
        spent_then, since = int(entry["balances"]["spent"]), at
    assert spent_then is not None and since is not None
    if now - since < MIN_HISTORY_S:
        return Burn(None, None, since)
    per_day = (spent_now - spent_then) * DAY_S // (now - since)
    days_left_tenths = available * 10 // per_day if per_day > 0 else None
    return Burn(per_day, days_left_tenths, since)


def account_row(ledger: Ledger, account_id: str, now: int) -> AccountRow:
    profile = read_profile(ledger.store, account_id) or {}
    state = ledger.state(account_id)
    balances = {**state.balances(), "refunded": state.refunded, "revoked": state.revoked}
    return AccountRow(
        account_id=account_id,
        name=str(profile.get("name") or ""),
        plan=profile.get("plan"),
        balances=balances,
        burn=burn(entries(ledger, account_id), state.available, now),
    )


def burn_down(newest_first: Sequence[dict[str, Any]], now: int) -> list[dict[str, int]]:
    """Available credits after each journal entry, oldest first (epoch milliseconds), and the
    same again now, so the line reaches the present."""
    points = [
        {"t": int(e["op"]["at"]) * 1000, "available": int(e["balances"]["available"])}
        for e in reversed(newest_first)
    ]
    if points:
        points.append({"t": max(now * 1000, points[-1]["t"]), "available": points[-1]["available"]})
    return points


def journal_rows(
    keys: LedgerKeys, newest_first: Sequence[dict[str, Any]], shown: int
) -> list[JournalRow]:
    """The newest ``shown`` entries, each checked: its MAC under the ledger's keys, and its
    link to the entry before it (read one more than shown, so the oldest shown is checked too)."""
    rows = []
    for i, entry in enumerate(newest_first[:shown]):
        before = newest_first[i + 1] if i + 1 < len(newest_first) else None
        rows.append(_journal_row(keys, entry, before))
    return rows


def _journal_row(
    keys: LedgerKeys, entry: dict[str, Any], before: dict[str, Any] | None
) -> JournalRow:
    op = Op.model_validate(entry["op"])
    try:
        check_entry(keys, entry)
        sealed = True
    except CorruptJournal:
        sealed = False
    if not sealed:
        status = "hash mismatch"
    elif before is not None and (
        entry["prev"] != before["hash"] or entry["seq"] != before["seq"] + 1
    ):
        status = "does not follow the entry before"
    else:
        status = "intact"
    result = entry["result"]
    amount = next(
        (
            result[k]
            for k in ("amount", "captured", "refunded", "expired", "revoked", "restored")
            if isinstance(result.get(k), int)
        ),
        None,
    )
    return JournalRow(
        seq=entry["seq"],
        at=op.at,
        kind=op.kind,
        key=op.key,
        amount=amount,
        detail=_detail(op, result),
        hash=entry["hash"],
        status=status,
        available=int(entry["balances"]["available"]),
    )


def _detail(op: Op, result: dict[str, Any]) -> str:
    args = op.args
    if op.kind == "grant":
        return f"{args.get('origin', 'top-up')} lot {result.get('lot_id')}" + (
            f" ({args['reference']})" if args.get("reference") else ""
        )
    if op.kind == "authorize":
        if result.get("declined"):
            return f"declined: {result.get('reason')}"
        where = " / ".join(str(args[k]) for k in ("tier", "model") if args.get(k))
        return f"hold {result.get('hold_id')}" + (f" on {where}" if where else "")
    if op.kind in ("settle", "refund", "expire_hold"):
        return f"hold {args.get('hold_id')}"
    if op.kind in ("expire_lot", "revoke", "restore"):
        return f"lot {result.get('lot_id')}"
    return ""


def slice_grant(ledger: Ledger, slice_id: str) -> str:
    """What a booked slice did in the ledger: which account got which lot, or why none."""
    account_id = account_for_slice(ledger.store, slice_id)
    if account_id is None:
        return f"slice {slice_id} is bound to no account: nothing granted"
    state = ledger.state(account_id)
    lot = next((lot for lot in state.lots.values() if lot.reference == f"slice:{slice_id}"), None)
    if lot is None:
        return (
            f"bound to {account_id}; no live lot for it (its plan grants none, the slice had "
            "ended, or the grant is spent or still on its way)"
        )
    return f"granted {account_id} {lot.amount:,} credits ({lot.id}, {lot.remaining:,} left)"


def dead_letter_error(extensions: dict[str, str]) -> str:
    """What the refusing subscriber said: Knative's ``knativeerrordata`` is its response body,
    base64-encoded; our functions answer errors in OpenAI's shape, so show the message."""
    raw = extensions.get("knativeerrordata", "")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return raw
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text


def when(epoch: int | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
