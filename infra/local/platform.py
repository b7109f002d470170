"""template.yaml → what ``tollgate up`` runs on one machine: processes, triggers, identities.

This is the one place that decides the local process list: the ``broker`` (its own process, as
Knative's broker is its own deployment), one all-in-one ``ledger`` (every ledger trigger),
``ledger-admin`` (the admin API and the ops console, the only process given the admin token),
``deadletters`` (the dead-letter sink), ``route`` and the ``ingress``, plus one site ingress
``ingress-<cluster>`` for the first edge or regional cluster the template runs an ingress on (its
own port and store, the ledger only through the home ingress's relay, as on Knative; idle it is
one small process); and one infer service per
local tier (every cluster of a tier shares it): an activator at the URL the router knows, in
front of 0..maxScale replicas ``infer-<tier>-<n>`` scaled on requests in flight as the model's
Knative Service is (infra/local/activator.py, autoscaler.py, scaler.py). Every process listens
on 127.0.0.1 unless told otherwise. Every replica runs the template's ``local.model`` on the CPU,
so that is the one model served locally: the others are left out of the local endpoints (so
neither listed nor routed), each with the reason ``tollgate up`` prints at start.

Identities are Knative's (infra/template/policies.py), placed on these processes: a process runs
as ServiceAccount ``<process>`` and is addressed as ``serving.knative.dev/service/<ns>/<process>``
(the five ledger functions share ``ledger``). The issuer writes each process's projected tokens
under ``<state-dir>/tokens/<process>/``; the trust file (every sink's event policies) is
``<state-dir>/trust.json``; capability keys are ``<state-dir>/keys/``. The home cluster's infer
reports to the broker; the other tiers' infer report to the ingress's cluster-events endpoint,
as they do on Knative, where the broker is cluster-local.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from functions.auth import keys, senders, tokens
from functions.auth.policy import Trust
from infra.local.autoscaler import SCALE_TO_ZERO_GRACE_S, STABLE_WINDOW_S, ScalingSpec
from infra.local.broker import BrokerTrigger, DeliveryPolicy
from infra.local.issuer import Projection
from infra.local.supervisor import ProcessSpec
from infra.template.eventing import trigger_filters
from infra.template.fields import go_duration_seconds, iso_duration_seconds
from infra.template.policies import (
    CLUSTER_EVENTS_PATH,
    LEDGER_RELAY_PATH,
    Placement,
    broker_audience,
    service_audience,
    trigger_account,
)
from infra.template.policies import (
    trust as derive_trust,
)
from infra.template.schema import DeliverySpec, InferServing, Template

# Template function → the local process that serves it.
LEDGER = "ledger"
ADMIN = "ledger-admin"
DEAD_LETTERS = "deadletters"
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
    "ledger-admin": ADMIN,
    "deadletters": DEAD_LETTERS,
    "route": ROUTE,
    "ingress": INGRESS,
}
_SERVE = (sys.executable, "-m", "infra.cli", "serve")
ADMIN_TOKEN_ENV = "TOLLGATE_ADMIN_TOKEN"
LEDGER_KEYS_ENV = "TOLLGATE_LEDGER_KEYS"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# A request waits at an activator for a slot at most this long (the ingress waits as long for a
# first byte), and at most this many wait per slot the service may run; beyond either, 503/429.
BUFFER_TIMEOUT_S = 300.0
BUFFERED_PER_SLOT = 8
# How long a replica may take to become ready when the template sets no progress deadline
# (Knative's default).
PROGRESS_DEADLINE_S = 600.0


@dataclass(frozen=True)
class InferService:
    """One local tier's infer service for the local model: its activator listens at ``port``
    (the URL the router knows for every cluster of the tier); its replicas are processes
    ``infer-<tier>-<n>``, each with its own identity (ServiceAccount and projected tokens
    ``tokens/infer-<tier>-<n>/``) and its own durable outbox (``outbox/infer-<tier>-<n>/``)."""

    tier: str
    model: str  # the template's name
    host: str
    port: int
    scaling: ScalingSpec
    progress_deadline_s: float
    env: Mapping[str, str]  # every replica's, but for its identity and outbox
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def buffer_size(self) -> int:
        return BUFFERED_PER_SLOT * self.scaling.concurrency * self.scaling.max_scale

    def replica_name(self, index: int) -> str:
        return f"{INFER}-{self.tier}-{index}"

    def outbox_dir(self, index: int) -> Path:
        return self.state_dir / "outbox" / self.replica_name(index)

    def replica(self, index: int, port: int) -> ProcessSpec:
        """Replica ``index`` (1-based) as a process; the same index always gets the same
        identity and outbox, so a replica started again delivers what the last one owed."""
        name = self.replica_name(index)
        env = {
            **self.env,
            tokens.TOKEN_DIR_ENV: str(self.state_dir / "tokens" / name),
            "TOLLGATE_OUTBOX_DIR": str(self.outbox_dir(index)),
        }
        return ProcessSpec(name, _serve(INFER, self.host), port, env, self.host)


@dataclass(frozen=True)
class LocalPlatform:
    processes: tuple[ProcessSpec, ...]
    site: str | None  # the cluster whose site ingress runs (process ``ingress-<site>``), if any
    triggers: tuple[BrokerTrigger, ...]
    services: tuple[InferService, ...]  # infer, scaled by tollgate up (infra/local/scaler.py)
    infer: Mapping[str, str]  # tier → URL (its service's activator)
    endpoints_file: Path
    endpoints: Mapping[str, Any]  # TOLLGATE_LOCAL_ENDPOINTS: cluster → model → infer URL
    broker_config: Path  # the broker process reads its triggers and identity from it
    unserved: Mapping[str, str]  # declared models not served locally → why
    trust: Trust
    trust_file: Path
    projections: tuple[Projection, ...]  # every process's token files
    keys_dir: Path
    secrets: frozenset[str]  # names of the variables holding secrets (kept from other processes)

    def url(self, process: str) -> str:
        return next(p.url for p in self.processes if p.name == process)

    @property
    def site_ingress(self) -> ProcessSpec | None:
        return next((p for p in self.processes if p.name == site_process(self.site)), None)


def site_process(cluster: str | None) -> str:
    return f"{INGRESS}-{cluster}"


def local_site(template: Template) -> str | None:
    """The site whose ingress ``tollgate up`` runs: the first cluster besides home with an
    ingress of its own that serves the local model on a local tier (one is enough to show it)."""
    for name in template.site_ingresses():
        c = template.cluster(name)
        if c.tier in template.local.tiers and template.local.model in c.models:
            return name
    return None


def secret_names(template: Template) -> dict[str, tuple[str, ...]]:
    """Each secret variable and the only processes given it (as render gives each Service only
    the secrets it uses)."""
    out: dict[str, tuple[str, ...]] = {
        ADMIN_TOKEN_ENV: (ADMIN,),
        LEDGER_KEYS_ENV: (LEDGER, ADMIN),
        template.camara.credential_env: (INGRESS,),
    }
    cb = template.carrier_billing
    if cb is not None:
        out[cb.sink_key_env] = (INGRESS, LEDGER, ADMIN)
        out[cb.credential_env] = (LEDGER, ADMIN)
    return out


def local_placement(template: Template, ingress_url: str, issuer_url: str) -> Placement:
    home = template.eventing.home
    site = local_site(template)
    remote = tuple(
        c.name
        for c in template.clusters
        if c.name != home and (c.models or c.name == site) and c.tier in template.local.tiers
    )
    return Placement(
        host=lambda function: _HOSTS.get(function, function),
        cluster_events_url=ingress_url + CLUSTER_EVENTS_PATH,
        # Locally every cluster's workloads are this one issuer's.
        remote_issuers={issuer_url: remote} if remote else {},
        ledger_relay_url=ingress_url + LEDGER_RELAY_PATH if site else "",
        # One issuer for all: the site ingress is told apart by its own ServiceAccount.
        site_ingress_accounts=(site_process(site),),
    )


def plan(
    template: Template,
    template_path: Path,
    state_dir: Path,
    *,
    ingress_port: int,
    broker_url: str,
    issuer_url: str,
    admin_token: str,
    store_url: str | None = None,
    ledger_keys: str = "",
    host: str = "127.0.0.1",
    environ: Mapping[str, str] | None = None,
    port: Callable[[], int] = free_port,
) -> LocalPlatform:
    """``store_url``: every function's store (default: sqlite in ``state_dir``);
    ``ledger_keys``: TOLLGATE_LEDGER_KEYS, given to the ledger processes only."""
    env_in = os.environ if environ is None else environ
    ports = {name: port() for name in (LEDGER, ADMIN, DEAD_LETTERS, ROUTE)}
    urls = {name: f"http://{host}:{p}" for name, p in {**ports, INGRESS: ingress_port}.items()}
    infer_ports = {t.name: port() for t in template.tiers if t.name in template.local.tiers}
    infer = {tier: f"http://{host}:{p}" for tier, p in infer_ports.items()}
    endpoints_file = state_dir / "local-endpoints.json"
    placement = local_placement(template, urls[INGRESS], issuer_url)
    trust = derive_trust(template, placement)
    trust_file = state_dir / "trust.json"
    keys_dir = state_dir / "keys"
    common = {
        "TOLLGATE_STORE": store_url or f"sqlite:///{(state_dir / 'tollgate.db').resolve()}",
        "K_SINK": broker_url,
        "TOLLGATE_TEMPLATE": str(template_path.resolve()),
        "TOLLGATE_LOCAL_ENDPOINTS": str(endpoints_file.resolve()),
        senders.DISCOVERY_ENV: issuer_url,
        senders.TRUST_ENV: str(trust_file.resolve()),
        keys.KEYS_ENV: str(keys_dir.resolve()),
        # The ops console's tiers page reads the router's live view from the route function.
        "TOLLGATE_TIERS_URL": urls[ROUTE],
    }
    secrets = secret_names(template)
    given = {
        **{k: v for k, v in env_in.items() if k in secrets},
        ADMIN_TOKEN_ENV: admin_token,
        LEDGER_KEYS_ENV: ledger_keys,
    }

    def identity(process: str) -> dict[str, str]:
        own = {k: v for k, v in given.items() if process in secrets[k] and v}
        return {
            **common,
            **own,
            tokens.TOKEN_DIR_ENV: str((state_dir / "tokens" / process).resolve()),
            senders.AUDIENCE_ENV: service_audience(template, process),
        }

    projections: list[Projection] = []

    def project(process: str, target: str, audience: str) -> None:
        path = (state_dir / "tokens" / process / target).resolve()
        projections.append(Projection(path, process, audience))

    broker = broker_audience(template)
    for name in (*ports, INGRESS):
        project(name, tokens.SINK, broker)
    ledger_audience = service_audience(template, LEDGER)
    project(INGRESS, tokens.AUTHORIZE, ledger_audience)
    project(INGRESS, tokens.REFUND, ledger_audience)
    ingress_env = {
        **identity(INGRESS),
        "TOLLGATE_LEDGER_URL": urls[LEDGER],
        "TOLLGATE_CLUSTER_EVENTS_URL": placement.cluster_events_url,
    }
    site = local_site(template)
    site_specs = []
    if site is not None:
        name = site_process(site)
        ingress_env["TOLLGATE_LEDGER_RELAY_URL"] = placement.ledger_relay_url
        project(name, tokens.SINK, placement.cluster_events_url)
        project(name, tokens.LEDGER_RELAY, placement.ledger_relay_url)
        site_env = {
            **identity(name),
            # Its own store, as its pod's on Knative: the table of keys and the ledger are home's.
            "TOLLGATE_STORE": f"sqlite:///{(state_dir / f'{name}.db').resolve()}",
            "K_SINK": placement.cluster_events_url,
            "TOLLGATE_HOME_RELAY_URL": placement.ledger_relay_url,
            "TOLLGATE_CLUSTER": site,
        }
        site_specs.append(ProcessSpec(name, _serve(INGRESS, host), port(), site_env, host))
    broker_config = state_dir / "local-broker.json"
    broker_spec = ProcessSpec(
        BROKER,
        [
            sys.executable,
            "-m",
            "infra.local.broker_process",
            str(broker_config.resolve()),
            str((state_dir / "broker.db").resolve()),
        ],
        urlsplit(broker_url).port or 80,
        {"TOLLGATE_BROKER_HOST": host},
        host,
    )
    services = _infer_services(
        template, infer_ports, identity, project, placement, broker, host, state_dir
    )
    processes = [
        broker_spec,  # first: it takes events from the start, and stops last
        *(ProcessSpec(n, _serve(n, host), p, identity(n), host) for n, p in ports.items()),
        # The ingress last: it calls everything else (and the site ingress calls it).
        ProcessSpec(INGRESS, _serve(INGRESS, host), ingress_port, ingress_env, host),
        *site_specs,
    ]
    processes = [
        replace(spec, env={**spec.env, **_sized(template, state_dir, spec.name)})
        if spec.name != BROKER
        else spec
        for spec in processes
    ]
    return LocalPlatform(
        processes=tuple(processes),
        site=site,
        triggers=tuple(_triggers(template, urls)),
        services=tuple(services),
        infer=infer,
        endpoints_file=endpoints_file,
        endpoints=_infer_endpoints(template, infer),
        broker_config=broker_config,
        unserved=unserved_locally(template),
        trust=trust,
        trust_file=trust_file,
        projections=tuple(projections),
        keys_dir=keys_dir,
        secrets=frozenset(secrets),
    )


def _infer_services(
    template: Template,
    ports: Mapping[str, int],
    identity: Callable[[str], dict[str, str]],
    project: Callable[[str, str, str], None],
    placement: Placement,
    broker: str,
    host: str,
    state_dir: Path,
) -> list[InferService]:
    """One infer service per local tier, running the local model on CPU for every cluster of its
    tier, scaling as the model's Knative Service does. Each replica it may run has its own
    identity and projected tokens; the home tier reports to the broker, the others to the
    ingress's cluster-events endpoint."""
    model = template.model(template.local.model)
    serving = template.infer_serving(model)
    home = template.cluster(template.eventing.home)
    services = []
    for tier, tier_port in ports.items():
        name = f"{INFER}-{tier}"
        clusters = template.clusters_for_tier(tier)
        sink = broker if tier == home.tier else placement.cluster_events_url
        env = {
            **identity(name),
            **_sized(template, state_dir, name),
            "TOLLGATE_ENGINE": "llamacpp",
            "TOLLGATE_MODEL_NAME": model.served_name,
            # The context the template declares, as render gives it: the ingress quotes by it.
            "TOLLGATE_N_CTX": str(model.context_length),
            # As rendered: the engine decodes together what the activator admits to a replica.
            "TOLLGATE_CONCURRENCY": str(serving.concurrency),
            "TOLLGATE_TIER": tier,
            "TOLLGATE_CLUSTER": clusters[0].name,
            "TOLLGATE_ALSO_SERVES": ",".join(c.name for c in clusters[1:]),
        }
        if tier != home.tier:
            env["K_SINK"] = placement.cluster_events_url
        service = InferService(
            tier=tier,
            model=model.name,
            host=host,
            port=tier_port,
            scaling=scaling_spec(serving, template.autoscaler.scale_to_zero_grace_period),
            progress_deadline_s=float(
                go_duration_seconds(serving.progress_deadline)
                if serving.progress_deadline
                else PROGRESS_DEADLINE_S
            ),
            env=env,
            state_dir=state_dir.resolve(),
        )
        for index in range(1, serving.max_scale + 1):
            project(service.replica_name(index), tokens.SINK, sink)
        services.append(service)
    return services


def scaling_spec(serving: InferServing, grace: str | None = None) -> ScalingSpec:
    """The KPA's settings for a service, from what render annotates it with and the
    scale-to-zero grace it sets in config-autoscaler."""
    delay, window = serving.scale_down_delay, serving.window
    return ScalingSpec(
        concurrency=serving.concurrency,
        min_scale=serving.min_scale,
        max_scale=serving.max_scale,
        scale_down_delay_s=float(go_duration_seconds(delay)) if delay else 0.0,
        stable_window_s=float(go_duration_seconds(window)) if window else STABLE_WINDOW_S,
        scale_to_zero_grace_s=(
            float(go_duration_seconds(grace)) if grace else SCALE_TO_ZERO_GRACE_S
        ),
    )


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
        host = INGRESS if process.startswith(f"{INGRESS}-") else process  # a site ingress
        served = [f for f in template.functions if _HOSTS.get(f.name) == host]
        concurrency = sum(f.concurrency for f in served)
    return {
        "TOLLGATE_CONTAINER_CONCURRENCY": str(concurrency),
        "TOLLGATE_OUTBOX_DIR": str((state_dir / "outbox" / process).resolve()),
        # A stopping process delivers what it owes for this long; the rest stays on disk for
        # the next run (Knative pods get the default, functions/server.py).
        "TOLLGATE_DRAIN_SECONDS": "2",
    }


def _serve(function: str, host: str) -> list[str]:
    return [*_SERVE, function, "--host", host]


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
    """The template's triggers as Knative filters them, each to its local process, each
    delivering as its own ServiceAccount to its subscriber's audience."""

    def policy(d: DeliverySpec) -> DeliveryPolicy:
        sink = _HOSTS[d.dead_letter_sink]
        return DeliveryPolicy(
            retry=d.retry,
            backoff_policy=d.backoff_policy,
            backoff_delay_s=iso_duration_seconds(d.backoff_delay),
            dead_letter_sink=urls[sink],
            dead_letter_audience=service_audience(template, sink),
        )

    triggers: list[BrokerTrigger] = []
    for trigger in template.eventing.triggers:
        # Validated: triggers and dead letters go to functions on the home cluster, never infer.
        process = _HOSTS[trigger.function]
        delivery = policy(trigger.delivery or template.eventing.delivery)
        triggers.extend(
            BrokerTrigger(
                f.name,
                f.attributes,
                urls[process],
                delivery,
                account=trigger_account(f.name),
                audience=service_audience(template, process),
            )
            for f in trigger_filters(template, trigger)
        )
    return triggers


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
