"""The helpers built on the port (every page of a query; the versioned read-modify-write), run
against every adapter (sqlite, moto, DynamoDB Local). Their races are in test_concurrency.py."""

from __future__ import annotations

from typing import Any

import pytest

from functions.store import Contended, Item, Store, VersionIs, query_all, update_item
from functions.store.port import MAX_QUERY_LIMIT
from functions.store.versioned import FIRST_PAUSE_S, MAX_PAUSE_S, backoff_s


class CountingStore:
    """Counts the queries that reach the store (a page each)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def query(self, *args: Any, **kwargs: Any) -> list[Item]:
        self.queries += 1
        return self.inner.query(*args, **kwargs)


class InterferingStore:
    """Before each of our first ``times`` puts, another writer bumps the item's counter ``n``
    through the real store: our put then fails its real condition check."""

    def __init__(self, inner: Store, times: int) -> None:
        self.inner = inner
        self.times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, item: Item, condition: Any = None) -> None:
        if self.times > 0:
            self.times -= 1
            current = self.inner.get(item.pk, item.sk)
            assert current is not None
            bumped = {**current.data, "n": current.data["n"] + 1}
            self.inner.put(
                Item(current.pk, current.sk, current.version + 1, bumped, current.expires_at),
                VersionIs(current.version),
            )
        self.inner.put(item, condition)


def sks(items: Any) -> list[str]:
    return [i.sk for i in items]


# -- query_all -----------------------------------------------------------------------------

KEYS = [f"E#{n:03d}" for n in range(53)]


def fill(store: Store) -> None:
    for sk in reversed([*KEYS, "D#999", "F#000"]):
        store.put(Item("p", sk))
    store.put(Item("px", "E#000"))  # a neighbouring partition never leaks in


@pytest.mark.parametrize("descending", [False, True])
def test_query_all_reads_every_page_in_order(any_store: Store, descending: bool) -> None:
    fill(any_store)
    expected = KEYS[::-1] if descending else KEYS
    for page_size in (4, len(KEYS), MAX_QUERY_LIMIT):  # many pages, one exactly full, one
        got = query_all(any_store, "p", "E#", descending=descending, page_size=page_size)
        assert sks(got) == expected
    # The same items as one unlimited query would give, prefix and cursor included.
    assert sks(query_all(any_store, "p", page_size=4)) == sks(any_store.query("p"))
    after = "E#010"
    rest = sks(query_all(any_store, "p", "E#", after=after, descending=descending, page_size=7))
    assert rest == [k for k in expected if (k < after if descending else k > after)]


def test_query_all_reads_pages_lazily_and_stops_at_a_short_page(any_store: Store) -> None:
    fill(any_store)
    counting = CountingStore(any_store)
    items = query_all(counting, "p", "E#", page_size=7)
    assert counting.queries == 0
    assert [next(items).sk for _ in range(7)] == KEYS[:7]
    assert counting.queries == 1
    assert sks(items) == KEYS[7:]
    assert counting.queries == 8  # 7 full pages, then a short one ends it (53 = 7 * 7 + 4)
    # A count that fills its last page exactly costs one empty page more, never an endless loop.
    counting.queries = 0
    assert sks(query_all(counting, "p", "E#", after="E#002", page_size=10)) == KEYS[3:]
    assert counting.queries == 6


def test_query_all_of_nothing_and_bad_page_sizes(any_store: Store) -> None:
    assert list(query_all(any_store, "nobody")) == []
    for bad in (0, -1, MAX_QUERY_LIMIT + 1):
        with pytest.raises(ValueError):
            query_all(any_store, "p", page_size=bad)  # refused at the call, not when iterated


# -- update_item ---------------------------------------------------------------------------


def test_update_item_creates_then_updates_by_version(any_store: Store) -> None:
    seen: list[dict[str, Any] | None] = []

    def add_one(data: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(data)
        return {"n": (data or {"n": 0})["n"] + 1, "kept": True}

    created = update_item(any_store, "p", "s", add_one)
    assert created == Item("p", "s", 1, {"n": 1, "kept": True})
    assert update_item(any_store, "p", "s", add_one) == Item("p", "s", 2, {"n": 2, "kept": True})
    assert any_store.get("p", "s") == Item("p", "s", 2, {"n": 2, "kept": True})
    assert seen == [None, {"n": 1, "kept": True}]


def test_update_item_expiry_is_kept_unless_computed(any_store: Store) -> None:
    any_store.put(Item("p", "s", 4, {"until": 100}, expires_at=1_000))
    kept = update_item(any_store, "p", "s", lambda d: {"until": 200})
    assert (kept.version, kept.expires_at) == (5, 1_000)

    def expiry(data: dict[str, Any]) -> int | None:
        return None if data["until"] is None else data["until"] + 10

    assert update_item(any_store, "p", "s", lambda d: {"until": 300}, expires_at=expiry) == Item(
        "p", "s", 6, {"until": 300}, 310
    )
    cleared = update_item(any_store, "p", "s", lambda d: {"until": None}, expires_at=expiry)
    assert any_store.get("p", "s") == cleared and cleared.expires_at is None
    created = update_item(any_store, "p", "new", lambda d: {"until": 1}, expires_at=expiry)
    assert any_store.get("p", "new") == created == Item("p", "new", 1, {"until": 1}, 11)


def test_update_item_writes_nothing_when_the_change_refuses(any_store: Store) -> None:
    any_store.put(Item("p", "s", 3, {"n": 3}))

    def refuse(data: dict[str, Any] | None) -> dict[str, Any]:
        raise LookupError("no such thing")

    with pytest.raises(LookupError):
        update_item(any_store, "p", "s", refuse)
    with pytest.raises(LookupError):
        update_item(any_store, "p", "missing", refuse)
    assert any_store.get("p", "s") == Item("p", "s", 3, {"n": 3})
    assert any_store.get("p", "missing") is None


def test_update_item_reapplies_on_top_of_a_concurrent_write(any_store: Store) -> None:
    any_store.put(Item("p", "s", 1, {"n": 0, "ours": []}))
    pauses: list[float] = []
    calls = 0

    def mark(data: dict[str, Any] | None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        assert data is not None
        return {**data, "ours": [*data["ours"], "x"]}

    written = update_item(InterferingStore(any_store, 3), "p", "s", mark, sleep=pauses.append)
    # Three lost races, each re-read: the other writer's three bumps and our one mark survive.
    assert written == Item("p", "s", 5, {"n": 3, "ours": ["x"]})
    assert any_store.get("p", "s") == written
    assert calls == 4
    assert len(pauses) == 3
    assert all(0 <= p <= FIRST_PAUSE_S * 2**i for i, p in enumerate(pauses))


def test_update_item_gives_up_after_its_attempts_writing_nothing(any_store: Store) -> None:
    any_store.put(Item("p", "s", 1, {"n": 0}))
    pauses: list[float] = []
    interfering = InterferingStore(any_store, 1000)

    def mark(data: dict[str, Any] | None) -> dict[str, Any]:
        return {**(data or {}), "ours": True}

    with pytest.raises(Contended):
        update_item(interfering, "p", "s", mark, attempts=5, sleep=pauses.append)
    assert interfering.times == 1000 - 5
    assert any_store.get("p", "s") == Item("p", "s", 6, {"n": 5})  # only the other writer's
    assert len(pauses) == 4
    with pytest.raises(ValueError):
        update_item(any_store, "p", "s", mark, attempts=0)


def test_backoff_is_jittered_growing_and_capped() -> None:
    for retry in range(1, 40):
        bound = min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (retry - 1))
        pauses = [backoff_s(retry) for _ in range(50)]
        assert all(0 <= p <= bound for p in pauses)
        assert len(set(pauses)) > 1  # jittered: racing writers do not retry in step
    assert 0 <= backoff_s(100_000) <= MAX_PAUSE_S  # no overflow however long the run
