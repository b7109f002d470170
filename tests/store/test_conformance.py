"""The store port's contract, run against every adapter (sqlite, moto, DynamoDB Local)."""

from __future__ import annotations

from typing import Any

import pytest

from functions.store import Absent, ConditionFailed, Item, Store, VersionIs
from functions.store.port import MAX_DATA_BYTES, MAX_KEY_BYTES, MAX_QUERY_LIMIT

NESTED: dict[str, Any] = {
    "amount": 2**63 - 1,
    "negative": -(2**63),
    "huge": 10**40,
    "text": "crédit ✓ 日本語 🙂",
    "list": [1, "two", None, True, False, {"deep": [[], {}]}],
    "empty": {},
    "zero": 0,
}


def sks(items: list[Item]) -> list[str]:
    return [i.sk for i in items]


def test_get_missing_is_none(any_store: Store) -> None:
    assert any_store.get("acct#1", "missing") is None
    any_store.put(Item("acct#1", "present"))
    assert any_store.get("acct#1", "missing") is None
    assert any_store.get("acct#2", "present") is None


def test_roundtrip_preserves_json_exactly(any_store: Store) -> None:
    item = Item("acct#é🙂", "hold#日本", version=7, data=NESTED)
    any_store.put(item)
    got = any_store.get("acct#é🙂", "hold#日本")
    assert got == item
    assert got is not None
    assert type(got.data["amount"]) is int and got.data["amount"] == 2**63 - 1
    assert got.data["huge"] == 10**40


def test_default_item_roundtrip(any_store: Store) -> None:
    any_store.put(Item("p", "s"))
    assert any_store.get("p", "s") == Item("p", "s", version=1, data={}, expires_at=None)


def test_expires_at_roundtrip(any_store: Store) -> None:
    any_store.put(Item("p", "ttl", data={"a": 1}, expires_at=4_102_444_800))
    got = any_store.get("p", "ttl")
    assert got is not None and got.expires_at == 4_102_444_800
    # An unconditional put replaces the whole item, expiry included.
    any_store.put(Item("p", "ttl", version=2, data={"a": 2}))
    assert any_store.get("p", "ttl") == Item("p", "ttl", version=2, data={"a": 2})


def test_absent_writes_once(any_store: Store) -> None:
    first = Item("p", "s", data={"who": "first"})
    any_store.put(first, Absent())
    with pytest.raises(ConditionFailed):
        any_store.put(Item("p", "s", version=5, data={"who": "second"}), Absent())
    assert any_store.get("p", "s") == first
    # The condition is per item: the same sk in another partition is absent.
    any_store.put(Item("q", "s"), Absent())


def test_version_is_matches(any_store: Store) -> None:
    any_store.put(Item("p", "s", version=1, data={"n": 1}), Absent())
    any_store.put(Item("p", "s", version=2, data={"n": 2}), VersionIs(1))
    assert any_store.get("p", "s") == Item("p", "s", version=2, data={"n": 2})


def test_version_is_mismatch_writes_nothing(any_store: Store) -> None:
    current = Item("p", "s", version=3, data={"n": 3}, expires_at=123)
    any_store.put(current)
    for stale in (1, 2, 4):
        with pytest.raises(ConditionFailed):
            any_store.put(Item("p", "s", version=stale + 1, data={"n": -1}), VersionIs(stale))
    assert any_store.get("p", "s") == current


def test_version_is_on_missing_item_fails(any_store: Store) -> None:
    with pytest.raises(ConditionFailed):
        any_store.put(Item("p", "s", version=2), VersionIs(1))
    assert any_store.get("p", "s") is None


def test_unconditional_put_overwrites(any_store: Store) -> None:
    any_store.put(Item("p", "s", version=9, data={"old": True}))
    any_store.put(Item("p", "s", version=1, data={"new": True}))
    assert any_store.get("p", "s") == Item("p", "s", version=1, data={"new": True})


# -- query ---------------------------------------------------------------------------------

NEIGHBOURS = ["I#9", "J", "J#", "J#1", "J#10", "J#100", "J#2", "J$", "K#", "K#1"]


def fill(store: Store, pk: str, keys: list[str]) -> None:
    for n, sk in enumerate(reversed(keys)):  # insertion order must not matter
        store.put(Item(pk, sk, data={"n": n}))
    store.put(Item(pk + "x", "J#1"))  # a neighbouring partition never leaks in
    store.put(Item("other", "J#1"))


def test_query_whole_partition_in_byte_order(any_store: Store) -> None:
    keys = ["b", "B", "a", "aa", "a~", "a\u00e9", "a\uff01", "a\U0001f600", "Z", "0", " ", "a#"]
    fill(any_store, "p", keys)
    # Python orders str by code point, which is UTF-8 byte order (DynamoDB's key order).
    expected = sorted(keys, key=lambda k: k.encode())
    assert expected == sorted(keys)
    assert sks(any_store.query("p")) == expected
    assert sks(any_store.query("p", descending=True)) == expected[::-1]
    assert all(i.pk == "p" for i in any_store.query("p"))


def test_query_prefix_does_not_leak(any_store: Store) -> None:
    fill(any_store, "p", NEIGHBOURS)
    assert sks(any_store.query("p", "J#1")) == ["J#1", "J#10", "J#100"]
    assert sks(any_store.query("p", "J#10")) == ["J#10", "J#100"]
    assert sks(any_store.query("p", "J#")) == ["J#", "J#1", "J#10", "J#100", "J#2"]
    assert sks(any_store.query("p", "J")) == ["J", "J#", "J#1", "J#10", "J#100", "J#2", "J$"]
    assert sks(any_store.query("p", "K#")) == ["K#", "K#1"]
    assert sks(any_store.query("p", "J#3")) == []
    assert sks(any_store.query("p", "J#", descending=True)) == [
        "J#2",
        "J#100",
        "J#10",
        "J#1",
        "J#",
    ]
    assert any_store.query("nobody", "J#") == []


def test_query_prefix_edge_characters(any_store: Store) -> None:
    keys = ["p", "p\x7f", "p\U0010ffff", "p\U0010ffffz", "p\uffff", "q", "o\U0010ffff"]
    fill(any_store, "part", keys)
    assert sks(any_store.query("part", "p")) == sorted(k for k in keys if k.startswith("p"))
    assert sks(any_store.query("part", "p\U0010ffff")) == ["p\U0010ffff", "p\U0010ffffz"]


def test_query_after(any_store: Store) -> None:
    fill(any_store, "p", NEIGHBOURS)
    assert sks(any_store.query("p", "J#", after="J#1")) == ["J#10", "J#100", "J#2"]
    assert sks(any_store.query("p", "J#", after="J#10", descending=True)) == ["J#1", "J#"]
    # after need not be an existing key, and may lie outside the prefix's range
    assert sks(any_store.query("p", "J#", after="J#15")) == ["J#2"]
    assert sks(any_store.query("p", "J#", after="A")) == ["J#", "J#1", "J#10", "J#100", "J#2"]
    assert sks(any_store.query("p", "J#", after="Z")) == []
    assert sks(any_store.query("p", "J#", after="A", descending=True)) == []
    assert sks(any_store.query("p", "J#", after="Z", descending=True)) == [
        "J#2",
        "J#100",
        "J#10",
        "J#1",
        "J#",
    ]
    assert sks(any_store.query("p", after="J$")) == ["K#", "K#1"]
    assert sks(any_store.query("p", after="J", descending=True)) == ["I#9"]
    assert sks(any_store.query("p", "J#", after="J#2")) == []
    assert sks(any_store.query("p", "J#", after="J#", descending=True)) == []
    assert sks(any_store.query("p", after="")) == NEIGHBOURS
    assert sks(any_store.query("p", after="", descending=True)) == []


def test_query_oversized_bounds_match_nothing_or_everything(any_store: Store) -> None:
    # Keys are at most MAX_KEY_BYTES, but prefixes and cursors longer than that are still exact.
    edge = "J#" + "9" * (MAX_KEY_BYTES - 3)
    fill(any_store, "p", [*NEIGHBOURS, edge, edge + "9"])
    too_long = edge + "99"
    assert any_store.query("p", too_long) == []
    assert sks(any_store.query("p", "J#9", after=too_long)) == []
    assert sks(any_store.query("p", "J#9", after=too_long, descending=True)) == [edge + "9", edge]
    assert sks(any_store.query("p", after=too_long))[0] == "J$"
    assert sks(any_store.query("p", after="J$" + "0" * 2000, descending=True))[0] == "J$"
    assert sks(any_store.query("p", edge)) == [edge, edge + "9"]


def test_query_limit_and_descending(any_store: Store) -> None:
    fill(any_store, "p", NEIGHBOURS)
    assert sks(any_store.query("p", limit=3)) == ["I#9", "J", "J#"]
    assert sks(any_store.query("p", limit=3, descending=True)) == ["K#1", "K#", "J$"]
    assert sks(any_store.query("p", "J#", limit=2, descending=True)) == ["J#2", "J#100"]
    assert sks(any_store.query("p", "J#1", limit=1)) == ["J#1"]


@pytest.mark.parametrize("descending", [False, True])
def test_query_pages_chain(any_store: Store, descending: bool) -> None:
    keys = [f"E#{n:03d}" for n in range(53)]
    fill(any_store, "p", [*keys, "D#999", "F#000"])
    expected = keys[::-1] if descending else keys
    seen: list[str] = []
    after: str | None = None
    while True:
        page = sks(any_store.query("p", "E#", after=after, limit=7, descending=descending))
        assert len(page) <= 7
        if not page:
            break
        seen += page
        after = page[-1]
    assert seen == expected


def test_query_limit_bounds(any_store: Store) -> None:
    for bad in (0, -1, MAX_QUERY_LIMIT + 1):
        with pytest.raises(ValueError):
            any_store.query("p", limit=bad)
    assert any_store.query("p", limit=MAX_QUERY_LIMIT) == []


def test_query_large_partition_paginates_internally(any_store: Store) -> None:
    big = "x" * 20_000  # ~20 KB per item: DynamoDB pages at 1 MB, so 60 items span pages
    keys = [f"R#{n:03d}" for n in range(60)]
    for sk in keys:
        any_store.put(Item("p", sk, data={"blob": big}))
    assert sks(any_store.query("p", "R#", limit=MAX_QUERY_LIMIT)) == keys
    assert sks(any_store.query("p", "R#", limit=55, descending=True)) == keys[::-1][:55]


# -- limits --------------------------------------------------------------------------------


def test_key_limits_refused(any_store: Store) -> None:
    at_limit = "é" * (MAX_KEY_BYTES // 2)  # 2 bytes each in UTF-8
    any_store.put(Item(at_limit, at_limit))
    assert any_store.get(at_limit, at_limit) == Item(at_limit, at_limit)
    for pk, sk in (("", "s"), ("p", ""), ("p", at_limit + "é"), (at_limit + "x", "s")):
        for condition in (None, Absent()):
            with pytest.raises(ValueError):
                any_store.put(Item(pk, sk), condition)
    assert any_store.get("p", at_limit + "é") is None
    assert any_store.query("p") == []


def test_version_and_data_limits_refused(any_store: Store) -> None:
    with pytest.raises(ValueError):
        any_store.put(Item("p", "s", version=0))
    with pytest.raises(ValueError):
        any_store.put(Item("p", "s", data={"blob": "x" * MAX_DATA_BYTES}))
    with pytest.raises(ValueError):
        any_store.put(Item("p", "s", data={"nan": float("nan")}))
    assert any_store.get("p", "s") is None
    any_store.put(Item("p", "s", data={"blob": "x" * (MAX_DATA_BYTES - 20)}))


def test_ping(any_store: Store) -> None:
    any_store.ping()
