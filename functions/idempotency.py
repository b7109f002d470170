"""Idempotent handling, after AWS Powertools' idempotency utility: one wrapper, stored results,
and a payload-hash check that refuses a redelivery whose data differs.

A record moves IN_PROGRESS -> COMPLETED (or RELEASED when the work raised). A redelivery of a
COMPLETED key gets the stored result; one that races an IN_PROGRESS record gets 503 (Knative
retries it later and then finds the result).
An IN_PROGRESS record older than ``in_progress_s`` belonged to a process that died: the next
delivery takes it over. The wrapped work must therefore be safe to run again after a crash —
ledger commands are (ledger_fn/ledger.py: a command's key is committed in the same journal entry
as its change, so a rerun returns the first result); for other handlers a rerun must be harmless.
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
        now = int(self.clock())
        claim = Item(
            f"IDEM#{key}",
            "IDEM",
            1,
            {"status": IN_PROGRESS, "hash": digest, "started": now},
            expires_at=now + self.expires_s,
        )
        try:
            self.store.put(claim, Absent())
        except ConditionFailed:
            existing = self.store.get(claim.pk, claim.sk)
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
            claim = self._take_over(key, claim, existing, now)
        return self._run_claimed(claim, work)

    def _take_over(self, key: str, claim: Item, existing: Item, now: int) -> Item:
        """Claim a record that was RELEASED or left IN_PROGRESS by a process that died; its
        owner may still be at work while the record is fresh (503: Knative retries later)."""
        fresh = now - int(existing.data["started"]) < self.in_progress_s
        if existing.data["status"] == IN_PROGRESS and fresh:
            raise Unavailable(_busy(key))
        taken = Item(claim.pk, claim.sk, existing.version + 1, {**claim.data}, claim.expires_at)
        try:
            self.store.put(taken, VersionIs(existing.version))
        except ConditionFailed:
            raise Unavailable(_busy(key)) from None  # another delivery took it over first
        return taken

    def _run_claimed(
        self, claim: Item, work: Callable[[], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        try:
            result = work()
        except BaseException:
            # Let the next delivery take over at once instead of waiting out in_progress_s.
            self._finish(claim, RELEASED)
            raise
        self._finish(claim, COMPLETED, result=result)
        return result

    def _finish(self, claim: Item, status: str, **fields: Any) -> None:
        data = {**claim.data, "status": status, **fields}
        finished = Item(claim.pk, claim.sk, claim.version + 1, data, claim.expires_at)
        self.store.put(finished, VersionIs(claim.version))


def _busy(key: str) -> str:
    return f"event {key} is being handled right now; retry shortly"
