"""Every item of a query, read page by page (the port's ``query`` returns one page)."""

from __future__ import annotations

from collections.abc import Iterator

from functions.store.port import MAX_QUERY_LIMIT, Item, Store


def query_all(
    store: Store,
    pk: str,
    prefix: str = "",
    *,
    after: str | None = None,
    descending: bool = False,
    page_size: int = MAX_QUERY_LIMIT,
) -> Iterator[Item]:
    """The items ``store.query`` would give with no limit, in the same order.

    Lazy: a page is read when the previous one is used up, so a caller may stop early, or write
    while it iterates (an item written past the cursor is seen, one written behind it is not)."""
    if not 1 <= page_size <= MAX_QUERY_LIMIT:
        raise ValueError(f"page_size must be 1..{MAX_QUERY_LIMIT}, got {page_size}")
    return _pages(store, pk, prefix, after, descending, page_size)


def _pages(
    store: Store, pk: str, prefix: str, after: str | None, descending: bool, page_size: int
) -> Iterator[Item]:
    while True:
        page = store.query(pk, prefix, after=after, limit=page_size, descending=descending)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1].sk
