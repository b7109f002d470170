"""The local broker's durable queue: events and their pending deliveries in one sqlite file.

An event is accepted only once its row and one delivery row per matching trigger are committed
(one transaction, synchronous=FULL), so a 202 means it survives a crash; a delivery row is
deleted only when its subscriber (or the dead-letter sink) took the event. Events are keyed by
source + id, which is how a duplicate ingest is recognised and dropped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Event rows outlive their deliveries this long, so a late duplicate is still recognised.
DEDUPE_SECONDS = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL, id TEXT NOT NULL,
    trigger TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    -- 'subscriber', then 'deadletter' once given up, 'failed' if the sink refused it too
    stage TEXT NOT NULL DEFAULT 'subscriber',
    error_code INTEGER, error_data TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (stage, due);
"""


@dataclass(frozen=True)
class PendingDelivery:
    """One event on its way to one trigger's subscriber (or to that trigger's dead-letter sink)."""

    seq: int
    trigger: str
    attempt: int
    stage: str
    body: bytes  # the event in structured JSON mode
    error_code: int | None
    error_data: str | None


class BrokerQueue:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # One connection shared by the HTTP threads and the dispatcher: sqlite serialises anyway.
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def add(self, source: str, id: str, body: bytes, triggers: Iterable[str], now: float) -> bool:
        """Queue an event for these triggers; False (and nothing queued) if source+id was seen."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO events (source, id, body, received) VALUES (?,?,?,?)",
                    (source, id, body, now),
                )
                fresh = cursor.rowcount == 1
                if fresh:
                    self._db.executemany(
                        "INSERT INTO deliveries (source, id, trigger, due) VALUES (?,?,?,?)",
                        [(source, id, name, now) for name in triggers],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return fresh

    def due(self, now: float, limit: int, exclude: Iterable[int]) -> list[PendingDelivery]:
        """Deliveries due by ``now``, oldest first, except those already being attempted."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        with self._lock:
            rows = self._db.execute(
                "SELECT d.seq, d.trigger, d.attempt, d.stage, e.body, d.error_code, d.error_data "
                "FROM deliveries d JOIN events e ON e.source = d.source AND e.id = d.id "
                f"WHERE d.stage != 'failed' AND d.due <= ? AND d.seq NOT IN ({marks}) "
                "ORDER BY d.due LIMIT ?",
                (now, *skip, limit),
            ).fetchall()
        return [PendingDelivery(*row) for row in rows]

    def next_due(self, exclude: Iterable[int]) -> float | None:
        """When the next delivery not already being attempted is due."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        with self._lock:
            row = self._db.execute(
                f"SELECT MIN(due) FROM deliveries WHERE stage != 'failed' AND seq NOT IN ({marks})",
                skip,
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def done(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))

    def retry(self, seq: int, attempt: int, due: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET attempt = ?, due = ? WHERE seq = ?", (attempt, due, seq)
            )

    def dead_letter(self, seq: int, code: int | None, data: str, now: float) -> None:
        """Give up on the subscriber: from now on this delivery goes to the dead-letter sink."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET stage = 'deadletter', attempt = 0, due = ?, "
                "error_code = ?, error_data = ? WHERE seq = ?",
                (now, code, data, seq),
            )

    def fail(self, seq: int) -> None:
        """Nobody took it, not even the dead-letter sink: kept (never retried) for an operator."""
        with self._lock:
            self._db.execute("UPDATE deliveries SET stage = 'failed' WHERE seq = ?", (seq,))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT stage, COUNT(*) FROM deliveries GROUP BY stage"
            ).fetchall()
        return {str(stage): int(n) for stage, n in rows}

    def prune(self, now: float) -> None:
        """Forget old events with nothing left to deliver (their dedupe window is over)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM events WHERE received < ? AND NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.source = events.source AND d.id = events.id)",
                (now - DEDUPE_SECONDS,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
