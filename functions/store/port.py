"""Types of the store port (see the package docstring for the contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

# Explicit limits, checked by every adapter (DynamoDB's own item limit is 400 KB).
MAX_KEY_BYTES = 1024
MAX_DATA_BYTES = 350_000
MAX_QUERY_LIMIT = 1000


class ConditionFailed(Exception):
    """The put's condition did not hold; nothing was written."""


class StoreUnavailable(Exception):
    """The store could not be reached or timed out; the caller may retry (HTTP 503).

    Raised by ``put``, the outcome is unknown: the write may or may not have been applied.
    """


@dataclass(frozen=True)
class Absent:
    """Write only if no item has this key (DynamoDB ``attribute_not_exists(pk)``)."""


@dataclass(frozen=True)
class VersionIs:
    """Write only if the stored item has exactly this version (optimistic concurrency)."""

    version: int


Condition = Absent | VersionIs


@dataclass(frozen=True)
class Item:
    pk: str
    sk: str
    version: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    # Epoch seconds after which the store may delete the item (DynamoDB TTL); None keeps it.
    expires_at: int | None = None


class Store(Protocol):
    def get(self, pk: str, sk: str) -> Item | None:
        """The item at (pk, sk), or None."""

    def put(self, item: Item, condition: Condition | None = None) -> None:
        """Write the whole item; raise ConditionFailed (writing nothing) if condition fails."""

    def query(
        self,
        pk: str,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[Item]:
        """Items of partition pk whose sk starts with prefix, in sk order (or reversed).

        ``after`` excludes every sk up to and including it (descending: from it downwards),
        so pages chain by passing the last sk seen. ``limit`` is at most MAX_QUERY_LIMIT.
        """

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers (used by /readyz)."""

    def close(self) -> None:
        """Release connections."""


def check_item(item: Item) -> None:
    """Refuse items that break the explicit limits, before any adapter writes them."""
    for name, key in (("pk", item.pk), ("sk", item.sk)):
        if not key or len(key.encode()) > MAX_KEY_BYTES:
            raise ValueError(f"{name} must be 1..{MAX_KEY_BYTES} bytes")
    if item.version < 1:
        raise ValueError("version must be >= 1")


def encode_data(data: dict[str, Any]) -> str:
    """The stored JSON text of an item's data, refused (ValueError) beyond MAX_DATA_BYTES."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)
    if len(text.encode()) > MAX_DATA_BYTES:
        raise ValueError(f"item data must be at most {MAX_DATA_BYTES} bytes of JSON")
    return text


def decode_data(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with prefix (None if there is none).

    Code point order, which is UTF-8 byte order: sqlite's and DynamoDB's order of keys.
    """
    chars = list(prefix)
    while chars:
        cp = ord(chars.pop()) + 1
        if cp == 0xD800:
            cp = 0xE000  # surrogates are not valid in UTF-8 strings
        if cp <= 0x10FFFF:
            return "".join(chars) + chr(cp)
    return None
