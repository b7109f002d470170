"""The dead-letter sink: events Knative gave up delivering are kept in the store, not dropped.

Knative adds ``knativeerrordest``, ``knativeerrorcode`` and ``knativeerrordata`` extensions to a
dead-lettered event; they are kept with it so ops can see where and why delivery failed."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from functions.cloudevent import Incoming, Reply
from functions.store import Absent, ConditionFailed, Item, Store

PARTITION = "DEADLETTER"


class DeadLetters:
    def __init__(self, store: Store) -> None:
        self.store = store

    def keep(self, event: Incoming) -> Reply | None:
        record = {
            "type": event.type,
            "source": event.source,
            "id": event.id,
            "time": event.time.isoformat() if event.time else None,
            "data": event.data,
            "extensions": {k: str(v) for k, v in event.extensions.items()},
            "received": int(time.time()),
        }
        # Keyed by source + id: a redelivered dead letter is kept once.
        with contextlib.suppress(ConditionFailed):
            self.store.put(Item(PARTITION, event.key, 1, record), Absent())
        return None

    def list(self, after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [item.data for item in self.store.query(PARTITION, after=after, limit=limit)]
