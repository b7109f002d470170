"""From template.yaml to what each function is given: the router's Topology."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from events.quote import Quote
from infra.knative.render import infer_service_name
from infra.template.load import load_template
from infra.template.schema import Cluster, Model, PerSecond, Template
from ledger_fn.plans import PlanGrant
from ledger_fn.topups import CarrierBilling
from router_fn.topology import ClusterSpec, ModelSpec, PlanSpec, Topology

InferUrl = Callable[[Cluster, Model], str]


def knative_infer_url(template: Template) -> InferUrl:
    """Infer functions as the home ingress reaches them on Knative: on its own cluster at their
    cluster-local address, on every other cluster through that cluster's public ingress (the
    gateway), since infer Services are cluster-local."""

    def url(cluster: Cluster, model: Model) -> str:
        if cluster.name == template.eventing.home:
            return _cluster_local(template, infer_service_name(model))
        return cluster.service_url("ingress", template.namespace) + f"/infer/{model.name}"

    return url


def _cluster_local(template: Template, service: str) -> str:
    return f"http://{service}.{template.namespace}.svc.cluster.local"


def gateway_upstreams(template: Template, cluster: Cluster) -> dict[str, str]:
    """What a cluster's gateway passes attempts to: model -> its infer's cluster-local URL."""
    return {
        m: _cluster_local(template, infer_service_name(template.model(m))) for m in cluster.models
    }


def topology(
    template: Template, infer_url: InferUrl | None = None, *, local: bool = False
) -> Topology:
    """``local``: `tollgate up`, where each tier's RTT is emulated (template ``local.tiers``)."""
    url = infer_url or knative_infer_url(template)

    def rtt(c: Cluster) -> int:
        return template.local.tiers[c.tier].emulated_rtt_ms if local else c.rtt_ms

    clusters = tuple(
        ClusterSpec(
            name=c.name,
            tier=c.tier,
            jurisdiction=c.jurisdiction,
            rtt_ms=rtt(c),
            max_parameters=template.tier(c.tier).max_parameters,
            infer_urls={m: url(c, template.model(m)) for m in c.models},
            emulated=local,
        )
        for c in template.clusters
    )
    models = {
        m.name: ModelSpec(m.name, m.served_name, m.parameters, m.context_length)
        for m in template.models
    }
    quotes = {
        (p.model, p.tier): Quote(
            price_book=template.price_book.version,
            input_per_million=p.input_per_million,
            output_per_million=p.output_per_million,
            per_engine_second=p.per_engine_second or 0,
        )
        for p in template.price_book.prices
    }
    plans = {
        p.name: PlanSpec(
            name=p.name,
            tiers=frozenset(p.tiers),
            models=frozenset(p.models),
            latency_target_ms=p.latency_target_ms,
            residency=frozenset(p.residency),
            max_parameters=getattr(p, "max_parameters", None),
            per_engine_second=p.kind == "perSecond",
        )
        for p in template.plans
    }
    return Topology(clusters, models, quotes, plans)


def topology_from_env(environ: Mapping[str, str]) -> Topology:
    """The topology a function process serves: TOLLGATE_TEMPLATE (default ./template.yaml), and
    under `tollgate up` TOLLGATE_LOCAL_ENDPOINTS, a JSON file of the local infer URLs
    ({"clusters": {cluster: {model: url}}, "emulated": true}); emulated tiers get their RTT from
    the template's ``local.tiers`` and the ingress adds it to each call."""
    template = template_from_env(environ)
    endpoints = environ.get("TOLLGATE_LOCAL_ENDPOINTS")
    if not endpoints:
        return topology(template)
    local = json.loads(Path(endpoints).read_text())
    urls = local["clusters"]
    return topology(
        template,
        lambda cluster, model: str(urls[cluster.name][model.name]),
        local=bool(local.get("emulated", True)),
    )


def plan_grants(template: Template) -> dict[str, PlanGrant]:
    """What each plan grants per period, in credits. A per-second plan sells engine seconds on
    models up to a size: it grants enough credits for that many seconds at the dearest
    per-second rate it may run at, so every allowed model gets at least the seconds sold."""
    grants = {}
    for plan in template.plans:
        if isinstance(plan, PerSecond):
            rates = [
                p.per_engine_second or 0
                for p in template.price_book.prices
                if (not plan.tiers or p.tier in plan.tiers)
                and template.model(p.model).parameters <= plan.max_parameters
            ]
            credits = plan.engine_seconds * max(rates, default=0)
        else:
            credits = getattr(plan, "credits", 0)
        grants[plan.name] = PlanGrant(
            name=plan.name,
            kind=plan.kind,
            credits=credits,
            tiers=plan.tiers,
            models=plan.models,
            rollover=getattr(plan, "rollover", False),
            top_ups=getattr(plan, "top_ups", ()),
        )
    return grants


def carrier_billing(template: Template, environ: Mapping[str, str]) -> CarrierBilling | None:
    """The operator's Carrier Billing API as the ledger needs it; secrets from the variables
    the template names (a Kubernetes Secret's keys on Knative)."""
    cb = template.carrier_billing
    if cb is None:
        return None
    key = environ.get(cb.sink_key_env)
    return CarrierBilling(
        api_root=cb.api_root,
        refund_api_root=cb.refund_api_root,
        token=environ.get(cb.credential_env) or None,
        sink_key=key.encode() if key else None,
        notify_url=cb.notify_url,
        currency=cb.currency,
        decimals=cb.currency_decimals,
        credits_per_unit=cb.credits_per_unit,
        description=cb.description,
        merchant_identifier=cb.merchant_identifier,
        poll_after_s=cb.poll_after_seconds,
    )


def template_from_env(environ: Mapping[str, str]) -> Template:
    return load_template(environ.get("TOLLGATE_TEMPLATE", "template.yaml"))
