"""Faults: stores that are down, locked or misnamed fail with the port's errors, never hang."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

import functions.store.sqlite as sqlite_adapter
from functions.store import (
    Absent,
    ConditionFailed,
    Item,
    StoreUnavailable,
    VersionIs,
    open_store,
)
from functions.store.dynamodb import DynamoStore
from functions.store.sqlite import SqliteStore
from tests.dynamodb_local import free_port

# -- DynamoDB ------------------------------------------------------------------------------


def closed_port_store() -> DynamoStore:
    return DynamoStore(
        "tollgate",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        connect_timeout=0.5,
        read_timeout=0.5,
        max_attempts=2,
    )


@pytest.mark.timeout(60)
def test_dynamo_closed_port_is_unavailable() -> None:
    store = closed_port_store()
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get("p", "s")
    with pytest.raises(StoreUnavailable):
        store.query("p", "x")
    for condition in (None, Absent(), VersionIs(1)):
        with pytest.raises(StoreUnavailable):
            store.put(Item("p", "s"), condition)
    store.close()


@pytest.mark.timeout(60)
def test_dynamo_missing_table_is_unavailable(dynamodb_local_endpoint: str) -> None:
    store = DynamoStore("no-such-table", endpoint_url=dynamodb_local_endpoint)
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get("p", "s")
    store.close()


def _client_error(code: str, status: int) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutItem")  # type: ignore[arg-type]


class ScriptedClient:
    """Stands in for the boto3 client: put_item raises (or returns) the scripted outcomes."""

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {}

    def close(self) -> None:
        pass


TIMEOUT = ReadTimeoutError(endpoint_url="http://x")
REFUSED = EndpointConnectionError(endpoint_url="http://x")
CHECK_FAILED = _client_error("ConditionalCheckFailedException", 400)
THROTTLED = _client_error("ProvisionedThroughputExceededException", 400)
INTERNAL = _client_error("InternalServerError", 500)


@pytest.fixture
def scripted() -> DynamoStore:
    """A DynamoStore whose client the test replaces (constructing one contacts nothing)."""
    return DynamoStore("tollgate", endpoint_url="http://127.0.0.1:9", max_attempts=4)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        # The first attempt may have been applied: a failed condition may be our own write.
        ((TIMEOUT, CHECK_FAILED), StoreUnavailable),
        ((INTERNAL, CHECK_FAILED), StoreUnavailable),
        # Rejected before applying (never connected, throttled): the condition really failed.
        ((REFUSED, CHECK_FAILED), ConditionFailed),
        ((THROTTLED, CHECK_FAILED), ConditionFailed),
        ((CHECK_FAILED,), ConditionFailed),
        # A retry that succeeds proves the earlier attempt was not applied.
        ((TIMEOUT, None), None),
        ((THROTTLED, REFUSED, INTERNAL, None), None),
        ((TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT), StoreUnavailable),
        ((_client_error("ValidationException", 400),), ValueError),
        ((_client_error("AccessDeniedException", 400),), StoreUnavailable),
    ],
)
def test_dynamo_conditional_put_retries_truthfully(
    scripted: DynamoStore,
    monkeypatch: pytest.MonkeyPatch,
    outcomes: tuple[Exception | None, ...],
    expected: type[Exception] | None,
) -> None:
    client = ScriptedClient(*outcomes)
    monkeypatch.setattr(scripted, "_client", client)
    monkeypatch.setattr("functions.store.dynamodb.time.sleep", lambda s: None)
    if expected is None:
        scripted.put(Item("p", "s", version=2), VersionIs(1))
    else:
        with pytest.raises(expected):
            scripted.put(Item("p", "s", version=2), VersionIs(1))
    assert client.calls == len(outcomes)


def test_dynamo_unconditional_put_retries_through_timeouts(
    scripted: DynamoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ScriptedClient(TIMEOUT, INTERNAL, None)
    monkeypatch.setattr(scripted, "_client", client)
    monkeypatch.setattr("functions.store.dynamodb.time.sleep", lambda s: None)
    scripted.put(Item("p", "s"))
    assert client.calls == 3


# -- sqlite --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sqlite_locked_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_adapter, "_BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "locked.db"
    store = SqliteStore(path)
    store.put(Item("p", "s"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for condition in (None, Absent(), VersionIs(1)):
            with pytest.raises(StoreUnavailable):
                store.put(Item("p", "s", version=2), condition)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.put(Item("p", "s", version=2), VersionIs(1))
    assert store.get("p", "s") == Item("p", "s", version=2)
    store.close()


def test_sqlite_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    # Root ignores file modes, so "unwritable" is made with what no user can write through.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        SqliteStore(blocker / "tollgate.db")  # parent is a file
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path)  # a directory, not a database file
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StoreUnavailable):
        SqliteStore(garbage)


def test_sqlite_file_broken_after_open_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "tollgate.db"
    store = SqliteStore(path)
    store.close()
    path.write_bytes(b"overwritten by something else" * 200)
    for wal in (tmp_path / "tollgate.db-wal", tmp_path / "tollgate.db-shm"):
        wal.unlink(missing_ok=True)
    with pytest.raises(StoreUnavailable):
        store.get("p", "s")
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "unknown store URL"),
        ("postgres://db/x", "unknown store URL"),
        ("tollgate.db", "unknown store URL"),
        ("sqlite://", "names no file"),
        ("sqlite:", "names no file"),
        ("dynamodb://127.0.0.1:8000", "names no table"),
        ("dynamodb://127.0.0.1:8000/", "names no table"),
        ("dynamodb://127.0.0.1:8000/a b", "invalid DynamoDB table name"),
    ],
)
def test_open_store_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_open_store_good_urls(tmp_path: Path) -> None:
    sqlite_store = open_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(sqlite_store, SqliteStore) and sqlite_store.path == f"{tmp_path}/x.db"
    sqlite_store.close()
    local = open_store("dynamodb://127.0.0.1:8000/tollgate")
    assert isinstance(local, DynamoStore)
    assert (local.endpoint_url, local.table) == ("http://127.0.0.1:8000", "tollgate")
    tls = open_store("dynamodbs://alternator.example:8043/tollgate")
    assert isinstance(tls, DynamoStore) and tls.endpoint_url == "https://alternator.example:8043"
    local.close()
    tls.close()
