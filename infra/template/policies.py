"""Who may send what to whom, derived from the template: Knative's identities and EventPolicies.

One derivation serves both worlds: ``infra/knative/render.py`` renders it as EventPolicy resources
and gives it to each function as the trust file; ``tollgate up`` gives the same file to its
processes and its broker enforces it. ``Placement`` is the only difference: on Knative every
function is its own Service and ServiceAccount; ``tollgate up`` runs several functions in one
process (the five ledger functions in ``ledger``), which then has one identity and one audience.

Identities are Knative's: a function runs as ServiceAccount ``<service>``; a Trigger delivers (and
its subscriber's reply is published) as ``<trigger>-oidc-eventing.knative.dev-trigger``; a
PingSource sends as ``<ping>-oidc-sources.knative.dev-pingsource`` (names shortened with a hash
past 63 characters, as ``kmeta.ChildName`` does). Audiences too: a Broker's is
``eventing.knative.dev/broker/<namespace>/<name>``; a function's, declared on its triggers as
``subscriber.audience``, is ``serving.knative.dev/service/<namespace>/<service>``.

Sinks and their rules (``default-authorization-mode: deny-all``: nothing else passes):
- the broker: each event type only from the functions whose kind emits it (catalog.py plus the
  template's extras; a function's replies come through its triggers), each ping's type from its
  PingSource, each producer's types from its subject;
- each function: from each trigger that delivers to it, only that trigger's filter; from the
  ingress, the commands it sends synchronously (catalog.DIRECT_CALLS); the dead-letter sink from
  every trigger that dead-letters to it, any event;
- the home ingress's cluster-events endpoint: from infer on the other clusters (their issuers are
  the template's ``clusters[].serviceAccountIssuer``), only what infer emits; from the site
  ingresses, the stand-in metering of streams they relayed;
- the home ingress's ledger relay: from the site ingresses (the ingresses on clusters other than
  home) only, their ledger commands, key lookups, SLA observations and rate-limit shares
  (router_fn/ledger_relay.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from events import types as event_types
from functions.auth.policy import SenderPolicy, SenderRule, Trust
from infra.template.catalog import DIRECT_CALLS, FUNCTION_KINDS, INFER, PING_EVENT_TYPE
from infra.template.catalog import PING_TYPE_EXTENSION as PING_EXTENSION
from infra.template.eventing import trigger_filters
from infra.template.schema import Template

# -oidc-<group>-<Kind>, hashed with the Kind's case, lower-cased after (as Knative does).
TRIGGER_SUFFIX = "-oidc-eventing.knative.dev-Trigger"
PING_SUFFIX = "-oidc-sources.knative.dev-PingSource"
CLUSTER_EVENTS_PATH = "/events/clusters"
LEDGER_RELAY_PATH = "/sites/ledger"
# What a site ingress may ask the home ingress's ledger relay.
RELAYED = (
    event_types.HOLD_AUTHORIZE,
    event_types.HOLD_REFUND,
    event_types.CALLER_LOOKUP,
    event_types.SLA_OBSERVED,
    event_types.RATES_HOLD,
)
_LONGEST = 63
_HEAD = _LONGEST - 32


def child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg/kmeta.ChildName: ``parent + suffix``, hashed to fit 63 characters."""
    if len(parent) <= _LONGEST - len(suffix):
        return parent + suffix
    if _HEAD - len(suffix) <= 0:
        digest = hashlib.md5((parent + suffix).encode(), usedforsecurity=False).hexdigest()
        name = parent[:_HEAD] + digest
        if len(name) < _LONGEST:
            name += suffix[: _LONGEST - len(name)]
        return re.sub(r"[^a-zA-Z0-9]+$", "", name)
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: _HEAD - len(suffix)] + digest + suffix


def trigger_account(trigger: str) -> str:
    return child_name(trigger, TRIGGER_SUFFIX).lower()


def ping_account(ping: str) -> str:
    return child_name(ping, PING_SUFFIX).lower()


def subject(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


def broker_audience(t: Template) -> str:
    return f"eventing.knative.dev/broker/{t.namespace}/{t.eventing.broker}".lower()


def service_audience(t: Template, service: str) -> str:
    return f"serving.knative.dev/service/{t.namespace}/{service}".lower()


@dataclass(frozen=True)
class Placement:
    """Which workload runs each function (its ServiceAccount and audience name), the URL of the
    home ingress's cluster-events endpoint and ledger relay, and the issuers of the other
    clusters."""

    host: Callable[[str], str]
    cluster_events_url: str
    remote_issuers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Who sends as infer (a trailing * matches every infer-<model> or infer-<tier>).
    infer_accounts: tuple[str, ...] = (f"{INFER}-*",)
    ledger_relay_url: str = ""
    # Who sends as a site ingress (Knative: each site's own `ingress`, told apart by its issuer).
    site_ingress_accounts: tuple[str, ...] = ("ingress",)


def knative_placement(t: Template) -> Placement:
    """Every function its own Service; other clusters' infer known by their issuers."""
    home = t.cluster(t.eventing.home)
    sites = t.site_ingresses()
    remote: dict[str, tuple[str, ...]] = {}
    for c in t.clusters:
        known = c.models or c.name in sites
        if c.name != home.name and known and c.service_account_issuer:
            remote[c.service_account_issuer] = (*remote.get(c.service_account_issuer, ()), c.name)
    ingress = home.service_url("ingress", t.namespace)
    return Placement(
        host=lambda function: function,
        cluster_events_url=ingress + CLUSTER_EVENTS_PATH,
        remote_issuers=remote,
        ledger_relay_url=ingress + LEDGER_RELAY_PATH if sites else "",
    )


def emits(t: Template, function: str) -> set[str]:
    """What a declared function puts on the broker (the ingress also publishes the types the
    CAMARA subscriptions map to)."""
    declared = next((f for f in t.functions if f.name == function), None)
    out = set(FUNCTION_KINDS[function].emits) | set(declared.emits if declared else ())
    if function == "ingress":
        out |= {x for s in t.camara.subscriptions for x in s.emits}
    return out


def sink_policies(t: Template, placement: Placement) -> dict[str, SenderPolicy]:
    """Every sink's policy, by audience."""
    rules: dict[str, list[SenderRule]] = {}
    ns = t.namespace

    def add(audience: str, rule: SenderRule) -> None:
        rules.setdefault(audience, []).append(rule)

    def of(accounts: Iterable[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(subject(ns, a) for a in accounts))

    def types(names: Iterable[str]) -> tuple[Mapping[str, str], ...]:
        return tuple({"type": x} for x in sorted(names))

    home_functions = [f.name for f in t.functions if f.name in FUNCTION_KINDS and f.name != INFER]
    delivering: dict[str, list[str]] = {}  # function -> accounts of the triggers to it
    dead_lettering: dict[str, list[str]] = {}  # dead-letter sink -> accounts of its triggers
    for tr in t.eventing.triggers:
        for tf in trigger_filters(t, tr):
            account = trigger_account(tf.name)
            delivering.setdefault(tr.function, []).append(account)
            add(
                service_audience(t, placement.host(tr.function)),
                SenderRule(f"{tr.function}-from-{tf.name}", of([account]), (dict(tf.attributes),)),
            )
            sink = (tr.delivery or t.eventing.delivery).dead_letter_sink
            dead_lettering.setdefault(sink, []).append(account)
    for sink, accounts in dead_lettering.items():
        add(
            service_audience(t, placement.host(sink)),
            SenderRule(f"{sink}-from-triggers", of(accounts)),
        )
    for caller, callee, type_ in DIRECT_CALLS:
        if caller in home_functions and callee in home_functions:
            add(
                service_audience(t, placement.host(callee)),
                SenderRule(f"{callee}-from-{caller}", of([placement.host(caller)]), types([type_])),
            )
    broker = broker_audience(t)
    for function in [*home_functions, INFER]:
        sent = emits(t, function)
        if not sent or not any(f.name == function for f in t.functions):
            continue
        senders: tuple[str, ...] = (
            placement.infer_accounts
            if function == INFER
            else (placement.host(function), *delivering.get(function, ()))
        )
        add(broker, SenderRule(f"{t.eventing.broker}-from-{function}", of(senders), types(sent)))
    name = t.eventing.broker
    for ping in t.eventing.pings:
        match = {"type": PING_EVENT_TYPE, PING_EXTENSION: ping.type}
        add(broker, SenderRule(f"{name}-from-{ping.name}", of([ping_account(ping.name)]), (match,)))
    for producer in t.eventing.producers:
        who = (producer.subject or subject(ns, producer.name),)
        add(broker, SenderRule(f"{name}-from-{producer.name}", who, types(producer.emits)))
    if placement.remote_issuers:
        add(
            placement.cluster_events_url,
            SenderRule(
                "ingress-from-clusters", of(placement.infer_accounts), types(emits(t, INFER))
            ),
        )
    if placement.ledger_relay_url:
        sites = of(placement.site_ingress_accounts)
        add(
            placement.cluster_events_url,
            SenderRule(
                "ingress-from-site-ingresses", sites, types([event_types.INFERENCE_COMPLETED])
            ),
        )
        add(
            placement.ledger_relay_url,
            SenderRule("ledger-relay-from-site-ingresses", sites, types(RELAYED)),
        )
    return {audience: SenderPolicy(audience, tuple(r)) for audience, r in rules.items()}


def trust(t: Template, placement: Placement) -> Trust:
    return Trust(sink_policies(t, placement), placement.remote_issuers)
