"""The store port: one DynamoDB-shaped table, single-item conditional writes, key/prefix reads.

Every adapter gives the same semantics, proven by one conformance suite (tests/store/):
- an item is addressed by (pk, sk) and carries an integer ``version`` and a JSON ``data`` document;
- ``put`` is the only write; its ``Condition`` is checked and applied atomically on that one item;
- ``query`` reads one partition in sort-key order, optionally by prefix, after a key, reversed.
No multi-item transactions: the same code must run on DynamoDB and ScyllaDB Alternator.

Built on the port, for every adapter: ``query_all`` (every page of a query) and ``update_item``
(a versioned read-modify-write with jittered backoff).
"""

from functions.store.pages import query_all
from functions.store.port import (
    Absent,
    Condition,
    ConditionFailed,
    Item,
    Store,
    StoreUnavailable,
    VersionIs,
)
from functions.store.url import open_store
from functions.store.versioned import Contended, update_item

__all__ = [
    "Absent",
    "Condition",
    "ConditionFailed",
    "Contended",
    "Item",
    "Store",
    "StoreUnavailable",
    "VersionIs",
    "open_store",
    "query_all",
    "update_item",
]
