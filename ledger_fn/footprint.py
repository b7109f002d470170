"""How many bytes an account's state takes as a ``STATE`` item, bounded from above, cheaply.

The ledger refuses, before committing, an operation that would grow a state past its byte
budget (ledger_fn/ledger.py), so the checkpoint always fits one store item; the ledger cache
bounds its memory by the same figure. Serializing a whole state per operation costs milliseconds
at the limits, so the figure is kept incrementally: each lot, hold, settled hold and revocation
gets a bound that holds for its whole life (a lot counts its ``remaining`` as wide as its
``amount``; a settled hold its ``refunded`` as wide as its ``captured``; an unrestored revocation
also reserves the lot a restore may bring back), and an operation only sizes what it added,
removed or replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from ledger_fn.state import (
    AccountState,
    LeaseCounts,
    Lot,
    OpenHold,
    Revocation,
    Settled,
    Tracked,
)

_COLLECTIONS = ("lots", "holds", "settled", "revocations")
# An element's bound never changes while kept (a hold is replaced only when it is a lease, whose
# counts and allocations change: it is sized again).
_FIXED = frozenset({"lots", "settled"})
_EMPTY_COLLECTIONS = len(",".join(f'"{name}":{{}}' for name in _COLLECTIONS)) + 1


def _json_len(data: Any) -> int:
    # As the store encodes an item (functions/store/port.py encode_data): ASCII, compact.
    return len(json.dumps(data, separators=(",", ":")))


def _model_len(model: BaseModel) -> int:
    return _json_len(model.model_dump(mode="json"))


def lot_bytes(lot: Lot) -> int:
    return _model_len(lot.model_copy(update={"remaining": lot.amount}))


_WIDE = 2**63 - 1  # the widest number a field can take


def hold_bytes(hold: OpenHold) -> int:
    """A hold's bound. A credit lease's figures change with every capture and renewal: they are
    counted at full width, so a capture never grows the bound (it must always pass the budget,
    whatever the account's size); only a renewal drawing on a new lot can."""
    if hold.lease is None:
        return _model_len(hold)
    wide = LeaseCounts(
        captured=_WIDE, bounds=_WIDE, requests=_WIDE, closing=_WIDE, returned_bounds=_WIDE
    )
    widest = hold.model_copy(
        update={
            "amount": _WIDE,
            "expires_at": _WIDE,
            "lease": wide,
            "allocations": [(lot_id, _WIDE) for lot_id, _ in hold.allocations],
        }
    )
    return _model_len(widest)


def _same_lease_bound(was: OpenHold | None, now: OpenHold | None) -> bool:
    """Whether ``now`` is ``was`` with only what ``hold_bytes`` counts at full width changed:
    every capture of a lease (sizing a lease's hold twice per capture was a tenth of the
    ledger's time per capture, bench/gateway.py)."""
    return (
        was is not None
        and now is not None
        and was.lease is not None
        and now.lease is not None
        and was.id == now.id
        and was.seq == now.seq
        and was.tier == now.tier
        and was.model == now.model
        and was.quote == now.quote
        and [lot for lot, _ in was.allocations] == [lot for lot, _ in now.allocations]
    )


def settled_bytes(settled: Settled) -> int:
    return _model_len(settled.model_copy(update={"refunded": settled.captured}))


def revocation_bytes(revocation: Revocation) -> int:
    size = _model_len(revocation.model_copy(update={"restored": False}))
    return size if revocation.restored else size + lot_bytes(revocation.lot)


_BOUNDS: dict[str, Callable[[Any], int]] = {
    "lots": lot_bytes,
    "holds": hold_bytes,
    "settled": settled_bytes,
    "revocations": revocation_bytes,
}


def _entry(key: str, value: Any, bound: Callable[[Any], int]) -> int:
    return _json_len(key) + 2 + bound(value)  # "key": value,


def elements(state: AccountState) -> int:
    """The bound of every remembered element, summed (the part ``delta`` keeps up to date)."""
    return sum(
        _entry(key, value, _BOUNDS[name])
        for name in _COLLECTIONS
        for key, value in getattr(state, name).items()
    )


def delta(old: AccountState, new: AccountState) -> int:
    """How ``elements`` changed from ``old`` to ``new`` (``new = apply(old, op)``): only the
    elements the operation added, removed or replaced are sized (``Tracked`` says which)."""
    change = 0
    for name in _COLLECTIONS:
        before: Mapping[str, Any] = getattr(old, name)
        after: Mapping[str, Any] = getattr(new, name)
        keys = after.changed if isinstance(after, Tracked) else after.keys() | before.keys()
        bound = _BOUNDS[name]
        for key in keys:
            was, now = before.get(key), after.get(key)
            if was is now or (was is not None and now is not None and name in _FIXED):
                continue  # unchanged, or replaced by one of the same bound
            if name == "holds" and _same_lease_bound(was, now):
                continue  # a capture or an extension: the lease's full-width bound is the same
            if now is not None:
                change += _entry(key, now, bound)
            if was is not None:
                change -= _entry(key, was, bound)
    return change


def total(state: AccountState, element_bytes: int) -> int:
    """The bound of the whole ``STATE`` item's data, given ``elements(state)``."""
    bare = state.model_dump(mode="json", exclude=set(_COLLECTIONS))
    return _json_len(bare) + _EMPTY_COLLECTIONS + element_bytes
