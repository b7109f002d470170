"""A bounded log of recent records in the store (what the router decided, what network events
did), for ops to look at: written off the request's path, bounded on every store.

Each writing process keeps a ring of ``slots`` items in partition ``RECENT#<kind>`` (sort key
``<instance>#<slot>``), overwritten in turn by one background thread, so a request only puts a
record on an in-memory queue and the table never holds more than ``slots`` items per process
(plus the rings of processes gone within ``ttl_s``, which readers skip and DynamoDB's TTL
deletes). Readers merge every ring, newest first. A record that cannot be written (the queue
full, the store down) is dropped and counted: this is a window on activity, never the truth of
money or events, which live in the journal and the broker."""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from functions.store import Item, Store, StoreUnavailable, query_all

log = logging.getLogger(__name__)

SLOTS = 200
TTL_S = 24 * 3600
QUEUE_SIZE = 1000
# The writer takes what queued up at most this often: on a busy ingress, not a thread wake-up
# and a store write per request (records a batch would overwrite in the ring are not written).
BATCH_S = 0.25


def partition(kind: str) -> str:
    return f"RECENT#{kind}"


class RecentLog:
    def __init__(
        self,
        store: Store,
        kind: str,
        *,
        slots: int = SLOTS,
        ttl_s: int = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pk = partition(kind)
        self.slots = slots
        self.ttl_s = ttl_s
        self.clock = clock
        self.dropped = 0
        self._instance = secrets.token_hex(4)
        self._next = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (JSON-able) for writing; never blocks, never raises."""
        try:
            self._queue.put_nowait({**record, "at": self.clock()})
        except queue.Full:
            self.dropped += 1
            return
        self._ensure_writer()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued record is written (tests; shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def read(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` records of every writer, newest first."""
        now = self.clock()
        records = [
            item.data
            for item in query_all(self.store, self.pk)
            if item.expires_at is None or item.expires_at > now
        ]
        records.sort(key=lambda r: float(r.get("at", 0)), reverse=True)
        return records[:limit]

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name=f"recent-{self.pk}", daemon=True
                )
                self._writer.start()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(BATCH_S)
            while len(batch) < QUEUE_SIZE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for record in batch[-self.slots :]:
                    self._write_one(record)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write_one(self, record: dict[str, Any]) -> None:
        try:
            self._write(record)
        except StoreUnavailable as exc:
            self.dropped += 1
            log.warning("a %s record was dropped: the store is unavailable (%s)", self.pk, exc)
        except Exception:  # a window on activity must never take its writer down
            self.dropped += 1
            log.exception("a %s record could not be written", self.pk)

    def _write(self, record: dict[str, Any]) -> None:
        slot = self._next
        self._next = (self._next + 1) % self.slots
        expires = int(record["at"]) + self.ttl_s
        item = Item(self.pk, f"{self._instance}#{slot:04d}", 1, record, expires_at=expires)
        self.store.put(item)
