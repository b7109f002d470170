"""Open a store from its URL: ``sqlite:///abs/path.db``, ``sqlite://rel/path.db`` or
``dynamodb://host:port/table`` (``dynamodbs://`` for TLS, ``dynamodb:///table`` for AWS itself)."""

from __future__ import annotations

from urllib.parse import urlparse

from functions.store.port import Store


def open_store(url: str) -> Store:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from functions.store.sqlite import SqliteStore

        path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not path:
            raise ValueError(f"store URL {url!r} names no file: use sqlite:///path/tollgate.db")
        return SqliteStore(path)
    if parsed.scheme in ("dynamodb", "dynamodbs"):
        from functions.store.dynamodb import DynamoStore

        table = parsed.path.lstrip("/")
        if not table:
            raise ValueError(f"store URL {url!r} names no table: use dynamodb://host:port/table")
        endpoint = None
        if parsed.netloc:
            endpoint = ("https://" if parsed.scheme == "dynamodbs" else "http://") + parsed.netloc
        return DynamoStore(table, endpoint_url=endpoint)
    raise ValueError(
        f"unknown store URL {url!r}: use sqlite:///path/tollgate.db or dynamodb://host:port/table"
    )
