"""The local broker as a process of its own under ``tollgate up``'s supervisor, as Knative runs
its broker apart from the functions: it can crash (or be killed by a chaos run) and be restarted
alone, and its queue (``broker.db``) keeps every event across restarts.

``python -m infra.local.broker_process <broker.json> <broker.db>``, listening on ``$PORT``.
``tollgate up`` writes the config file: its template's triggers with the local subscriber URLs,
and what the broker's identity needs (as Knative's broker has it): the issuer it checks senders'
tokens by, the trust file with its event policies, and the issuer's key it mints each trigger's
delivery token with. SIGTERM stops taking events and lets deliveries in flight finish; the queue
keeps the rest."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import Trust
from functions.auth.senders import Senders
from infra.local.broker import Broker, BrokerServer, BrokerTrigger, DeliveryPolicy
from infra.local.broker_faults import DeliveryFaults
from infra.local.broker_queue import BrokerQueue
from infra.local.issuer import Issuer


def broker_config(
    triggers: Sequence[BrokerTrigger],
    *,
    issuer_url: str,
    issuer_key: Path,
    namespace: str,
    audience: str,
    trust_file: Path,
) -> dict[str, Any]:
    return {
        "triggers": [asdict(t) for t in triggers],
        "issuer": {"url": issuer_url, "key": str(issuer_key.resolve()), "namespace": namespace},
        "audience": audience,
        "trust": str(trust_file.resolve()),
    }


def triggers_from(content: dict[str, Any]) -> list[BrokerTrigger]:
    return [
        BrokerTrigger(**{**t, "delivery": DeliveryPolicy(**t["delivery"])})
        for t in content["triggers"]
    ]


def broker_from(content: dict[str, Any], queue: Path, faults: DeliveryFaults | None) -> Broker:
    issuer = Issuer(content["issuer"]["namespace"], Path(content["issuer"]["key"]))
    issuer.url = content["issuer"]["url"]  # its tokens name the issuer senders' checks trust
    audience = content["audience"]
    senders = Senders(
        TokenVerifier(Discovery(issuer.url), audience),
        Trust.load(content["trust"]).policy(audience),
    )
    return Broker(
        BrokerQueue(queue),
        triggers_from(content),
        senders=senders,
        tokens=issuer.token,
        namespace=issuer.namespace,
        faults=faults,
    )


def main(argv: Sequence[str], port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    content = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    faults = DeliveryFaults.from_env()
    if faults is not None:
        logging.getLogger(__name__).warning("delivery faults injected: %s", faults.spec)
    # Blocked before any thread starts (threads inherit the mask) and taken with sigwait: no
    # handler runs inside a lock the main thread holds (an Event set from a handler deadlocks
    # when a second signal arrives while the first one's set() holds the Event's lock).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    broker = broker_from(content, Path(argv[1]), faults)
    server = BrokerServer(broker, port, os.environ.get("TOLLGATE_BROKER_HOST", "127.0.0.1"))
    server.start()
    signal.sigwait(stop_signals)
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1:], int(os.environ["PORT"]))
