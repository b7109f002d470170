"""An account's profile (plan, slices), as the admin API stores it and the ingress reads it,
and the index from network slices to accounts that booking events are resolved through.

The ledger owns writing it (``ACCT#<id>``/``META``); this module is the one place that knows the
item's key, so readers in other functions do not reach into the ledger's layout."""

from __future__ import annotations

from typing import Any

from functions.errors import Conflict
from functions.store import Item, Store

META_SK = "META"
SLICE_SK = "ACCOUNT"


def account_pk(account_id: str) -> str:
    return f"ACCT#{account_id}"


def read_profile(store: Store, account_id: str) -> dict[str, Any] | None:
    item = store.get(account_pk(account_id), META_SK)
    return None if item is None else item.data


def slice_pk(slice_id: str) -> str:
    return f"SLICE#{slice_id}"


def bind_slices(store: Store, account_id: str, slice_ids: list[str]) -> None:
    """Point each network slice at its account (a booking event names only the slice).
    A slice bound to another account is refused: one slice's bundle goes to one account."""
    _bind(store, account_id, [(slice_pk(s), SLICE_SK, f"slice {s}") for s in slice_ids])


def account_for_slice(store: Store, slice_id: str) -> str | None:
    item = store.get(slice_pk(slice_id), SLICE_SK)
    return None if item is None else str(item.data["account_id"])


DEVICE_SK = "ACCOUNT"
ROAMING_SK = "ROAMING"


def device_pk(phone_number: str) -> str:
    return f"DEVICE#{phone_number}"


def bind_devices(store: Store, account_id: str, phone_numbers: list[str]) -> None:
    """Point each device (by phone number, E.164) at its account: a roaming notification names
    only the device. A device bound to another account is refused."""
    _bind(store, account_id, [(device_pk(n), DEVICE_SK, f"device {n}") for n in phone_numbers])


def _bind(store: Store, account_id: str, keys: list[tuple[str, str, str]]) -> None:
    """Point each (pk, sk, what) at the account, refusing all if one is bound elsewhere."""
    for pk, sk, what in keys:
        item = store.get(pk, sk)
        if item is not None and item.data["account_id"] != account_id:
            raise Conflict(f"{what} is bound to account {item.data['account_id']}; unbind it there")
    for pk, sk, _ in keys:
        store.put(Item(pk, sk, 1, {"account_id": account_id}))


def account_for_device(store: Store, phone_number: str) -> str | None:
    item = store.get(device_pk(phone_number), DEVICE_SK)
    return None if item is None else str(item.data["account_id"])


def roaming_countries(store: Store, account_id: str) -> frozenset[str] | None:
    """The countries the account's roaming devices are in (None: none of them roams, or their
    country is unknown); the route function writes them from roaming notifications."""
    item = store.get(account_pk(account_id), ROAMING_SK)
    if item is None:
        return None
    countries = {c for device in item.data["devices"].values() for c in device["countries"]}
    return frozenset(countries) or None
