"""template.yaml → what ``tollgate up`` runs on one machine: processes, triggers, endpoints.

This is the one place that decides the local process list: one all-in-one ``ledger`` (every
ledger trigger and the admin API), ``ledger-admin`` as the dead-letter sink (``ledger`` would
hand a dead letter back to the handler that refused it; only ``ledger-admin`` keeps them),
``route``, one ``infer`` per local tier (every cluster of a tier shares it) and the ``ingress``.
A function ``tollgate serve`` does not know yet is left out, and so are the triggers to it.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.broker import DeliveryPolicy, Subscription
from infra.render import _trigger_parts  # how Knative filters each trigger: the same here
from infra.supervisor import ProcessSpec
from infra.template import Delivery, Template

# Template function → the local process that serves it.
LEDGER = "ledger"
DEAD_LETTERS = "ledger-admin"
_HOSTS = {
    "grant": LEDGER,
    "authorize": LEDGER,
    "settle": LEDGER,
    "refund": LEDGER,
    "sweep": LEDGER,
    "ledger-admin": DEAD_LETTERS,
    "route": "route",
    "ingress": "ingress",
}
INGRESS = "ingress"
ROUTE = "route"
INFER = "infer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def iso_seconds(duration: str) -> float:
    """Seconds in an ISO-8601 duration of the form infra.fields accepts (PT1H2M0.5S)."""
    seconds, number = 0.0, ""
    for char in duration.removeprefix("PT"):
        if char.isdigit() or char == ".":
            number += char
        else:
            seconds += float(number) * {"H": 3600, "M": 60, "S": 1}[char]
            number = ""
    return seconds


@dataclass(frozen=True)
class LocalPlatform:
    processes: tuple[ProcessSpec, ...]
    subscriptions: tuple[Subscription, ...]
    skipped: tuple[str, ...]  # functions not servable yet
    infer: Mapping[str, str]  # tier → URL
    endpoints_file: Path
    endpoints: Mapping[str, Any]  # TOLLGATE_LOCAL_ENDPOINTS: cluster → model → infer URL

    def url(self, process: str) -> str | None:
        return next((p.url for p in self.processes if p.name == process), None)


def plan(
    template: Template,
    template_path: Path,
    state_dir: Path,
    *,
    ingress_port: int,
    broker_url: str,
    admin_token: str,
    servable: Collection[str],
    port: Callable[[], int] = free_port,
) -> LocalPlatform:
    serve = [sys.executable, "-m", "infra.cli", "serve"]
    wanted = [LEDGER, DEAD_LETTERS, ROUTE]
    running = [name for name in wanted if name in servable]
    ports = {name: port() for name in running}
    ports[INGRESS] = ingress_port
    urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    model = template.model(template.local.model)
    tiers = [t.name for t in template.tiers if t.name in template.local.tiers]
    infer_ports = {tier: port() for tier in tiers}
    infer = {tier: f"http://127.0.0.1:{p}" for tier, p in infer_ports.items()}
    # Every model a cluster hosts answers locally from its tier's process (running the local
    # model), so routing over the template's real topology stays visible.
    endpoints = {
        "clusters": {
            c.name: dict.fromkeys(c.models, infer[c.tier])
            for c in template.clusters
            if c.tier in infer
        },
        "emulated": True,
    }
    endpoints_file = state_dir / "local-endpoints.json"
    common = {
        "TOLLGATE_STORE": f"sqlite:///{(state_dir / 'tollgate.db').resolve()}",
        "TOLLGATE_ADMIN_TOKEN": admin_token,
        "K_SINK": broker_url,
        "TOLLGATE_TEMPLATE": str(template_path.resolve()),
        "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints_file.resolve()),
        "TOLLGATE_LEDGER_URL": urls.get(LEDGER, ""),
    }
    processes = [ProcessSpec(name, [*serve, name], ports[name], common) for name in running]
    for tier, tier_port in infer_ports.items():
        cluster = next(c.name for c in template.clusters_for_tier(tier))
        env = {
            **common,
            "TOLLGATE_ENGINE": "llamacpp",
            "TOLLGATE_MODEL_NAME": model.served_name,
            "TOLLGATE_TIER": tier,
            "TOLLGATE_CLUSTER": cluster,
        }
        processes.append(ProcessSpec(f"{INFER}-{tier}", [*serve, INFER], tier_port, env))
    # The ingress last: it calls everything else.
    if INGRESS in servable:
        processes.append(ProcessSpec(INGRESS, [*serve, INGRESS], ingress_port, common))
    skipped = tuple(n for n in (*wanted, INGRESS) if n not in servable)
    return LocalPlatform(
        processes=tuple(processes),
        subscriptions=tuple(_subscriptions(template, urls)),
        skipped=skipped,
        infer=infer,
        endpoints_file=endpoints_file,
        endpoints=endpoints,
    )


def _subscriptions(template: Template, urls: Mapping[str, str]) -> list[Subscription]:
    def url_of(function: str) -> str | None:
        return urls.get(_HOSTS.get(function, function))

    def policy(d: Delivery) -> DeliveryPolicy:
        return DeliveryPolicy(
            retry=d.retry,
            backoff_policy=d.backoff_policy,
            backoff_delay_s=iso_seconds(d.backoff_delay),
            dead_letter_sink=url_of(d.dead_letter_sink),
        )

    out: list[Subscription] = []
    for trigger in template.eventing.triggers:
        subscriber = url_of(trigger.function)
        if subscriber is None:
            continue  # not servable yet: its events match no trigger, as with no Trigger at all
        delivery = policy(trigger.delivery or template.eventing.delivery)
        out.extend(
            Subscription(name, attributes, subscriber, delivery)
            for name, attributes in _trigger_parts(template, trigger)
        )
    return out


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
