"""Versioned read-modify-write of one item, the port's optimistic concurrency made reusable.

Read the item, compute its new data, write it only if nobody wrote in between (``VersionIs`` the
version read, ``Absent`` for a new item). On a conflict, read again and re-apply the change after
a jittered pause that grows with each attempt, so racing writers spread out instead of colliding
again in step; give up (``Contended``, nothing written) after a bounded number of attempts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from functions.store.port import Absent, Condition, ConditionFailed, Item, Store, VersionIs

DEFAULT_ATTEMPTS = 16
FIRST_PAUSE_S = 0.001  # the bound of the first pause; each retry doubles it, up to MAX_PAUSE_S
MAX_PAUSE_S = 0.1

# The new data from the current data (None: no item yet). It may run once per attempt, so it must
# not have side effects beyond its result; an exception from it aborts the update, writing nothing.
Change = Callable[[dict[str, Any] | None], dict[str, Any]]
Expiry = Callable[[dict[str, Any]], int | None]


class Contended(Exception):
    """Every attempt lost its race to another writer; nothing was written. Retry later."""


def update_item(
    store: Store,
    pk: str,
    sk: str,
    change: Change,
    *,
    expires_at: Expiry | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> Item:
    """Apply ``change`` to the item at (pk, sk) (creating it at version 1) and return what was
    written. ``expires_at`` computes the new item's expiry from its new data; without it the
    current expiry is kept."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_s(attempt))
        current = store.get(pk, sk)
        data = change(None if current is None else current.data)
        if current is None:
            item = Item(pk, sk, 1, data, None if expires_at is None else expires_at(data))
            condition: Condition = Absent()
        else:
            expiry = current.expires_at if expires_at is None else expires_at(data)
            item = Item(pk, sk, current.version + 1, data, expiry)
            condition = VersionIs(current.version)
        try:
            store.put(item, condition)
        except ConditionFailed:
            continue  # another writer got in between: read their write and apply ours on top
        return item
    raise Contended(f"{pk}/{sk}: {attempts} attempts lost to concurrent writers; retry later")


def backoff_s(retry: int) -> float:
    """The pause before retry number ``retry`` (1, 2, ...): uniform in [0, bound) ("full
    jitter"), the bound doubling from FIRST_PAUSE_S up to MAX_PAUSE_S."""
    return random.uniform(0, min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** min(retry - 1, 30)))
