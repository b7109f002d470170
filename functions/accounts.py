"""An account's profile (plan, slices), as the admin API stores it and the ingress reads it.

The ledger owns writing it (``ACCT#<id>``/``META``); this module is the one place that knows the
item's key, so readers in other functions do not reach into the ledger's layout."""

from __future__ import annotations

from typing import Any

from functions.store import Store

META_SK = "META"


def account_pk(account_id: str) -> str:
    return f"ACCT#{account_id}"


def read_profile(store: Store, account_id: str) -> dict[str, Any] | None:
    item = store.get(account_pk(account_id), META_SK)
    return None if item is None else item.data
