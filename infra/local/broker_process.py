"""The local broker as a process of its own under ``tollgate up``'s supervisor, as Knative runs
its broker apart from the functions: it can crash (or be killed by a chaos run) and be restarted
alone, and its queue (``broker.db``) keeps every event across restarts.

``python -m infra.local.broker_process <triggers.json> <broker.db>``, listening on ``$PORT``.
``tollgate up`` writes the triggers file (its template's triggers with the local subscriber URLs).
SIGTERM stops taking events and lets deliveries in flight finish; the queue keeps the rest."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from infra.local.broker import Broker, BrokerServer, BrokerTrigger, DeliveryPolicy
from infra.local.broker_faults import DeliveryFaults
from infra.local.broker_queue import BrokerQueue


def triggers_json(triggers: Sequence[BrokerTrigger]) -> dict[str, Any]:
    return {"triggers": [asdict(t) for t in triggers]}


def triggers_from(content: dict[str, Any]) -> list[BrokerTrigger]:
    return [
        BrokerTrigger(t["name"], t["filter"], t["subscriber"], DeliveryPolicy(**t["delivery"]))
        for t in content["triggers"]
    ]


def main(argv: Sequence[str], port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    triggers = triggers_from(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    faults = DeliveryFaults.from_env()
    if faults is not None:
        logging.getLogger(__name__).warning("delivery faults injected: %s", faults.spec)
    broker = Broker(BrokerQueue(Path(argv[1])), triggers, faults=faults)
    server = BrokerServer(broker, port)
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    stopping.wait()
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1:], int(os.environ["PORT"]))
