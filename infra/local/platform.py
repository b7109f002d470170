"""template.yaml → what ``tollgate up`` runs on one machine: processes, triggers, endpoints.

This is the one place that decides the local process list: the ``broker`` (its own process, as
Knative's broker is its own deployment), one all-in-one ``ledger`` (every ledger trigger and the
admin API), ``ledger-admin`` as the dead-letter sink (``ledger`` would hand a dead letter back to
the handler that refused it; only ``ledger-admin`` keeps them), ``route``, one ``infer`` per
local tier (every cluster of a tier shares it) and the ``ingress``.
Every infer process runs the template's ``local.model`` on the CPU, so that is the one model
served locally: the others are left out of the local endpoints (so neither listed nor routed),
each with the reason ``tollgate up`` prints at start.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infra.local.broker import BrokerTrigger, DeliveryPolicy
from infra.local.supervisor import ProcessSpec
from infra.template.eventing import trigger_filters
from infra.template.fields import iso_duration_seconds
from infra.template.schema import DeliverySpec, Template

# Template function → the local process that serves it.
LEDGER = "ledger"
DEAD_LETTERS = "ledger-admin"
ROUTE = "route"
INGRESS = "ingress"
INFER = "infer"
BROKER = "broker"
_HOSTS = {
    "grant": LEDGER,
    "authorize": LEDGER,
    "settle": LEDGER,
    "refund": LEDGER,
    "sweep": LEDGER,
    "ledger-admin": DEAD_LETTERS,
    "route": ROUTE,
    "ingress": INGRESS,
}
_LEDGER_HOSTS = frozenset({LEDGER, DEAD_LETTERS})
_SERVE = (sys.executable, "-m", "infra.cli", "serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class LocalPlatform:
    processes: tuple[ProcessSpec, ...]
    triggers: tuple[BrokerTrigger, ...]
    infer: Mapping[str, str]  # tier → URL
    endpoints_file: Path
    endpoints: Mapping[str, Any]  # TOLLGATE_LOCAL_ENDPOINTS: cluster → model → infer URL
    triggers_file: Path  # the broker process reads its triggers from it
    unserved: Mapping[str, str]  # declared models not served locally → why

    def url(self, process: str) -> str:
        return next(p.url for p in self.processes if p.name == process)


def plan(
    template: Template,
    template_path: Path,
    state_dir: Path,
    *,
    ingress_port: int,
    broker_url: str,
    admin_token: str,
    store_url: str | None = None,
    ledger_keys: str = "",
    port: Callable[[], int] = free_port,
) -> LocalPlatform:
    """``store_url``: every function's store (default: sqlite in ``state_dir``);
    ``ledger_keys``: TOLLGATE_LEDGER_KEYS, given to the ledger processes only."""
    ports = {name: port() for name in (LEDGER, DEAD_LETTERS, ROUTE)}
    urls = {name: _url(p) for name, p in {**ports, INGRESS: ingress_port}.items()}
    infer_ports = {t.name: port() for t in template.tiers if t.name in template.local.tiers}
    infer = {tier: _url(p) for tier, p in infer_ports.items()}
    endpoints_file = state_dir / "local-endpoints.json"
    env = {
        "TOLLGATE_STORE": store_url or f"sqlite:///{(state_dir / 'tollgate.db').resolve()}",
        "TOLLGATE_ADMIN_TOKEN": admin_token,
        "K_SINK": broker_url,
        "TOLLGATE_TEMPLATE": str(template_path.resolve()),
        "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints_file.resolve()),
        "TOLLGATE_LEDGER_URL": urls[LEDGER],
        # The ops console's tiers page reads the router's live view from the ingress.
        "TOLLGATE_INGRESS_URL": urls[INGRESS],
    }
    triggers_file = state_dir / "local-triggers.json"
    broker = ProcessSpec(
        BROKER,
        [
            sys.executable,
            "-m",
            "infra.local.broker_process",
            str(triggers_file.resolve()),
            str((state_dir / "broker.db").resolve()),
        ],
        urlsplit(broker_url).port or 80,
    )
    ledger_env = {**env, "TOLLGATE_LEDGER_KEYS": ledger_keys} if ledger_keys else env
    processes = [
        broker,  # first: it takes events from the start, and stops last
        *(
            ProcessSpec(name, [*_SERVE, name], p, ledger_env if name in _LEDGER_HOSTS else env)
            for name, p in ports.items()
        ),
        *_infer_processes(template, infer_ports, env),
        # The ingress last: it calls everything else.
        ProcessSpec(INGRESS, [*_SERVE, INGRESS], ingress_port, env),
    ]
    processes = [
        replace(spec, env={**spec.env, **_sized(template, state_dir, spec.name)})
        if spec.name != BROKER
        else spec
        for spec in processes
    ]
    return LocalPlatform(
        processes=tuple(processes),
        triggers=tuple(_triggers(template, urls)),
        infer=infer,
        endpoints_file=endpoints_file,
        endpoints=_infer_endpoints(template, infer),
        triggers_file=triggers_file,
        unserved=unserved_locally(template),
    )


def _infer_processes(
    template: Template, ports: Mapping[str, int], env: Mapping[str, str]
) -> list[ProcessSpec]:
    """One infer per local tier, running the local model on CPU."""
    model = template.model(template.local.model)
    processes = []
    for tier, tier_port in ports.items():
        tier_env = {
            **env,
            "TOLLGATE_ENGINE": "llamacpp",
            "TOLLGATE_MODEL_NAME": model.served_name,
            # The context the template declares, as render gives it: the ingress quotes by it.
            "TOLLGATE_N_CTX": str(model.context_length),
            "TOLLGATE_TIER": tier,
            "TOLLGATE_CLUSTER": template.clusters_for_tier(tier)[0].name,
        }
        processes.append(ProcessSpec(f"{INFER}-{tier}", [*_SERVE, INFER], tier_port, tier_env))
    return processes


def _sized(template: Template, state_dir: Path, process: str) -> dict[str, str]:
    """As on Knative: the process's WSGI server is sized from the template's concurrency of
    what it serves (functions/server.py), and its durable outbox has its own folder."""
    if process.startswith(INFER):
        base = template.infer_function()
        model = template.model(template.local.model)
        concurrency = model.serving.concurrency
        if concurrency is None:
            concurrency = base.concurrency if base is not None else 0
    else:
        served = [f for f in template.functions if _HOSTS.get(f.name) == process]
        concurrency = sum(f.concurrency for f in served)
    return {
        "TOLLGATE_CONTAINER_CONCURRENCY": str(concurrency),
        "TOLLGATE_OUTBOX_DIR": str((state_dir / "outbox" / process).resolve()),
        # A stopping process delivers what it owes for this long; the rest stays on disk for
        # the next run (Knative pods get the default, functions/server.py).
        "TOLLGATE_DRAIN_SECONDS": "2",
    }


def unserved_locally(template: Template) -> dict[str, str]:
    """Each declared model ``tollgate up`` does not serve (by template name), and why."""
    local = template.local.model
    reasons = {}
    for m in template.models:
        if m.name == local:
            continue
        if m.engine == "vllm":
            why = (
                f"it runs on vLLM with {m.gpus} GPU(s) ({m.gpu_memory_gib} GiB); this machine "
                f"serves only {local} on the CPU (template local.model)"
            )
        else:
            why = f"this machine serves one CPU model, {local} (template local.model)"
        reasons[m.name] = why
    return reasons


def _infer_endpoints(template: Template, infer: Mapping[str, str]) -> dict[str, Any]:
    # The local model answers from its tier's process on every cluster that hosts it, so
    # routing over the template's real topology stays visible; the other models are not served
    # here (the ingress lists only what is served, and says why for the rest).
    local = template.local.model
    clusters = {
        c.name: {local: infer[c.tier]}
        for c in template.clusters
        if c.tier in infer and local in c.models
    }
    return {"clusters": clusters, "emulated": True, "unserved": unserved_locally(template)}


def _triggers(template: Template, urls: Mapping[str, str]) -> list[BrokerTrigger]:
    """The template's triggers as Knative filters them, each to its local process."""

    def policy(d: DeliverySpec) -> DeliveryPolicy:
        return DeliveryPolicy(
            retry=d.retry,
            backoff_policy=d.backoff_policy,
            backoff_delay_s=iso_duration_seconds(d.backoff_delay),
            dead_letter_sink=urls[_HOSTS[d.dead_letter_sink]],
        )

    triggers: list[BrokerTrigger] = []
    for trigger in template.eventing.triggers:
        # Validated: triggers and dead letters go to functions on the home cluster, never infer.
        subscriber = urls[_HOSTS[trigger.function]]
        delivery = policy(trigger.delivery or template.eventing.delivery)
        triggers.extend(
            BrokerTrigger(f.name, f.attributes, subscriber, delivery)
            for f in trigger_filters(template, trigger)
        )
    return triggers


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
