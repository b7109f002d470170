"""Idempotent handling, after AWS Powertools' idempotency utility: one wrapper, stored results,
and a payload-hash check that refuses a redelivery whose data differs.

A record moves IN_PROGRESS -> COMPLETED (or RELEASED when the work raised). A redelivery of a
COMPLETED key gets the stored result; one that races an IN_PROGRESS record gets 503 (Knative
retries it later and then finds the result).
An IN_PROGRESS record older than ``in_progress_s`` belonged to a process that died: the next
delivery takes it over. The wrapped work must therefore be safe to run again after a crash —
ledger commands are (see ledger_fn/account.py: each keeps its own dedupe record atomically with
the change); for other handlers a rerun must be harmless.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from functions.errors import Conflict, Unavailable
from functions.store import Absent, ConditionFailed, Item, Store, VersionIs

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
RELEASED = "RELEASED"  # the work raised; the next delivery runs it again


def payload_hash(data: Any) -> str:
    """A stable hash of JSON data (key order does not matter)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(
        self,
        store: Store,
        *,
        expires_s: int = 7 * 24 * 3600,
        in_progress_s: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert expires_s > 0 and in_progress_s > 0
        self.store = store
        self.expires_s = expires_s
        self.in_progress_s = in_progress_s
        self.clock = clock

    def run(
        self, key: str, data: Any, work: Callable[[], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Run ``work`` once for ``key``; replays return its first result."""
        digest = payload_hash(data)
        pk, sk = f"IDEM#{key}", "IDEM"
        now = int(self.clock())
        claim = Item(
            pk,
            sk,
            1,
            {"status": IN_PROGRESS, "hash": digest, "started": now},
            expires_at=now + self.expires_s,
        )
        try:
            self.store.put(claim, Absent())
        except ConditionFailed:
            existing = self.store.get(pk, sk)
            if existing is None:  # expired between our write and read; treat as new
                return self.run(key, data, work)
            if existing.data["hash"] != digest:
                raise Conflict(
                    f"event {key} was already received with different data; "
                    "send changed data as a new event with a new id",
                    key=key,
                ) from None
            if existing.data["status"] == COMPLETED:
                result: dict[str, Any] | None = existing.data["result"]
                return result
            fresh = now - int(existing.data["started"]) < self.in_progress_s
            if existing.data["status"] == IN_PROGRESS and fresh:
                raise Unavailable(
                    f"event {key} is being handled right now; retry shortly"
                ) from None
            claim = Item(pk, sk, existing.version + 1, {**claim.data}, claim.expires_at)
            try:
                self.store.put(claim, VersionIs(existing.version))
            except ConditionFailed:
                raise Unavailable(
                    f"event {key} is being handled right now; retry shortly"
                ) from None
        try:
            result = work()
        except BaseException:
            # Let the next delivery take over at once instead of waiting out in_progress_s.
            released = Item(
                pk,
                sk,
                claim.version + 1,
                {**claim.data, "status": RELEASED},
                expires_at=claim.expires_at,
            )
            self.store.put(released, VersionIs(claim.version))
            raise
        done = Item(
            pk,
            sk,
            claim.version + 1,
            {"status": COMPLETED, "hash": digest, "started": now, "result": result},
            expires_at=claim.expires_at,
        )
        self.store.put(done, VersionIs(claim.version))
        return result
