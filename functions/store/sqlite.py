"""The embedded store: one sqlite file in WAL mode, the same item model and conditions as DynamoDB.

Each thread gets its own connection; every write is one statement in autocommit, so a put is
atomic and durable on its own. Processes share the file safely (sqlite's own locking).

Items past their ``expires_at`` are deleted as DynamoDB's TTL deletes them: some time after, in
the background (here: by a writer, at most once a minute, a bounded batch). Until then they read
as stored, as on DynamoDB; readers that care compare ``expires_at`` with their own clock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from functions.store.port import (
    MAX_QUERY_LIMIT,
    Absent,
    Condition,
    ConditionFailed,
    Item,
    StoreUnavailable,
    VersionIs,
    check_item,
    decode_data,
    encode_data,
    prefix_end,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  pk TEXT NOT NULL,
  sk TEXT NOT NULL,
  version INTEGER NOT NULL,
  data TEXT NOT NULL,
  expires_at INTEGER,
  PRIMARY KEY (pk, sk)
) WITHOUT ROWID
"""
_EXPIRY_INDEX = (
    "CREATE INDEX IF NOT EXISTS items_expiry ON items (expires_at) WHERE expires_at IS NOT NULL"
)
_BUSY_TIMEOUT_S = 30.0
PURGE_INTERVAL_S = 60.0
PURGE_BATCH = 1000


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._purged_at = time.monotonic()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn().execute(_SCHEMA)
            self._conn().execute(_EXPIRY_INDEX)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open sqlite store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a commit survives a process crash; FULL adds an fsync per
                # commit, needed only against power loss.
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open sqlite store {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, pk: str, sk: str) -> Item | None:
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT pk, sk, version, data, expires_at FROM items WHERE pk = ? AND sk = ?",
                    (pk, sk),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite read failed: {exc}") from exc
        return _item(row) if row else None

    def put(self, item: Item, condition: Condition | None = None) -> None:
        check_item(item)
        data = encode_data(item.data)
        args = (item.pk, item.sk, item.version, data, item.expires_at)
        try:
            conn = self._conn()
            if isinstance(condition, Absent):
                try:
                    conn.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?)", args)
                except sqlite3.IntegrityError as exc:
                    raise ConditionFailed(f"item {item.pk}/{item.sk} exists") from exc
            elif isinstance(condition, VersionIs):
                cur = conn.execute(
                    "UPDATE items SET version = ?, data = ?, expires_at = ? "
                    "WHERE pk = ? AND sk = ? AND version = ?",
                    (item.version, data, item.expires_at, item.pk, item.sk, condition.version),
                )
                if cur.rowcount != 1:
                    raise ConditionFailed(
                        f"item {item.pk}/{item.sk} is not at version {condition.version}"
                    )
            else:
                conn.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)", args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite write failed: {exc}") from exc
        if time.monotonic() - self._purged_at >= PURGE_INTERVAL_S:
            self.purge_expired()

    def purge_expired(self, now: float | None = None) -> int:
        """Delete up to PURGE_BATCH items whose ``expires_at`` passed (DynamoDB's TTL, here);
        returns how many. A failure is left for the next purge."""
        self._purged_at = time.monotonic()
        try:
            cur = self._conn().execute(
                "DELETE FROM items WHERE (pk, sk) IN (SELECT pk, sk FROM items"
                " WHERE expires_at IS NOT NULL AND expires_at < ? LIMIT ?)",
                (int(time.time() if now is None else now), PURGE_BATCH),
            )
        except sqlite3.Error:
            return 0
        return cur.rowcount

    def query(
        self,
        pk: str,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[Item]:
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT}, got {limit}")
        # One lower and one upper bound at most: with two of either, sqlite seeks by one and
        # filters by the other, turning a tail read into a scan of the whole partition.
        lower: tuple[str, str] | None = (">=", prefix) if prefix else None
        end = prefix_end(prefix) if prefix else None
        upper: tuple[str, str] | None = ("<", end) if end is not None else None
        if after is not None and not descending and (lower is None or after >= lower[1]):
            lower = (">", after)
        if after is not None and descending and (upper is None or after <= upper[1]):
            upper = ("<", after)
        sql = "SELECT pk, sk, version, data, expires_at FROM items WHERE pk = ?"
        args: list[object] = [pk]
        for bound in (lower, upper):
            if bound is not None:
                sql += f" AND sk {bound[0]} ?"
                args.append(bound[1])
        sql += " ORDER BY sk " + ("DESC" if descending else "ASC") + " LIMIT ?"
        args.append(limit)
        try:
            rows = self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite query failed: {exc}") from exc
        return [_item(r) for r in rows]

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self.path} does not answer: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _item(row: tuple[str, str, int, str, int | None]) -> Item:
    return Item(pk=row[0], sk=row[1], version=row[2], data=decode_data(row[3]), expires_at=row[4])
