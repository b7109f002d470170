"""From template.yaml to what each function is given: the router's Topology."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from events.prices import CreditUnit, PriceBook, PriceRow, PriceVersion
from infra.knative.render import infer_service_name
from infra.template.load import load_template
from infra.template.schema import Cluster, Model, PerSecond, Template
from ledger_fn.plans import PlanGrant
from ledger_fn.sla import SlaTerms
from ledger_fn.topups import CarrierBilling
from router_fn.topology import ClusterSpec, ModelSpec, PlanSpec, Site, Topology, Warming

# The base URL of a model's infer function on a cluster; None: nothing serves it there.
InferUrl = Callable[[Cluster, Model], str | None]


def knative_infer_url(template: Template, here: str | None = None) -> InferUrl:
    """Infer functions as the ingress of cluster ``here`` (default: home) reaches them on
    Knative: on its own cluster at their cluster-local address, on every other cluster through
    that cluster's public ingress (its gateway role), since infer Services are cluster-local."""

    def url(cluster: Cluster, model: Model) -> str:
        if cluster.name == (here or template.eventing.home):
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
    template: Template,
    infer_url: InferUrl | None = None,
    *,
    local: bool = False,
    unserved: Mapping[str, str] | None = None,
    here: str | None = None,
) -> Topology:
    """``local``: `tollgate up`, where each tier's RTT is emulated (template ``local.tiers``).
    Only models something serves are in the topology (so listed and routed); ``unserved``
    says why the others are not (by template name). ``here``: the site whose ingress routes
    by it (RTTs as its applications see them, Template.rtt_from); None: the home ingress."""
    url = infer_url or knative_infer_url(template, here)

    def emulated(c: Cluster) -> int:
        return template.local.tiers[c.tier].emulated_rtt_ms

    def rtt(c: Cluster) -> int:
        if here is None:
            return emulated(c) if local else c.rtt_ms
        if not local:
            return template.rtt_from(here, c.name)
        site = template.cluster(here)
        return emulated(site) + (0 if c.name == here else emulated(c))

    def served(c: Cluster) -> dict[str, str]:
        urls = {m: url(c, template.model(m)) for m in c.models}
        return {m: u for m, u in urls.items() if u is not None}

    clusters = tuple(
        ClusterSpec(
            name=c.name,
            tier=c.tier,
            jurisdiction=c.jurisdiction,
            rtt_ms=rtt(c),
            max_parameters=template.tier(c.tier).max_parameters,
            infer_urls=served(c),
            emulated=local,
            site=Site(c.site.latitude, c.site.longitude, c.site.radius_km) if c.site else None,
        )
        for c in template.clusters
    )
    hosted = {m for c in clusters for m in c.infer_urls}
    models = {m.name: _model_spec(template, m, local) for m in template.models if m.name in hosted}
    reasons = {**(unserved or {})}
    for m in template.models:
        if m.name not in hosted:
            reason = reasons.get(m.name, "no cluster hosts it")
            reasons |= {m.name: reason, m.served_name: reason}
    book = price_book(template)
    version = book.in_effect(time.time())
    plans = {
        p.name: PlanSpec(
            name=p.name,
            tiers=frozenset(p.tiers),
            models=frozenset(p.models),
            latency_target_ms=p.latency_target_ms,
            residency=frozenset(p.residency),
            max_parameters=getattr(p, "max_parameters", None),
            per_engine_second=p.kind == "perSecond",
            max_queue_wait_ms=None if p.max_queue_wait_ms == "unbounded" else p.max_queue_wait_ms,
            rate_limits=p.rate_limits,
        )
        for p in template.plans
    }
    return Topology(
        clusters,
        models,
        version.quotes() if version else {},
        plans,
        warming=Warming(template.warming.idle_seconds, template.warming.slice_lead_seconds),
        roaming_allow={c: frozenset(a) for c, a in template.roaming.allow.items()},
        price_book=book,
        unserved=reasons,
    )


def credit_unit(template: Template) -> CreditUnit:
    """What a credit is worth (the template's ``credit``), for every function that shows money."""
    c = template.credit
    return CreditUnit(currency=c.currency, decimals=c.currency_decimals, per_unit=c.per_unit)


def price_book(template: Template) -> PriceBook:
    """The template's price book history as the ingress quotes and publishes it and the ops
    console shows it."""
    return PriceBook(
        credit=credit_unit(template),
        versions=tuple(
            PriceVersion(
                version=v.version,
                effective_from=v.effective_from,
                note=v.note,
                prices=tuple(
                    PriceRow(
                        model=p.model,
                        served_name=template.model(p.model).served_name,
                        tier=p.tier,
                        input_per_million=p.input_per_million,
                        output_per_million=p.output_per_million,
                        per_engine_second=p.per_engine_second,
                    )
                    for p in v.prices
                ),
            )
            for v in template.price_book.versions
        ),
    )


def _model_spec(template: Template, model: Model, local: bool) -> ModelSpec:
    """A hosted model (validated: then an infer function serves it), scaled as its infer
    service is: the router counts its slots. `tollgate up` runs one infer process per tier,
    which never adds replicas."""
    serving = template.infer_serving(model)
    return ModelSpec(
        model.name,
        model.served_name,
        model.parameters,
        model.context_length,
        cold_start_ms=model.cold_start_ms,
        warm_for_s=template.warm_for_s(model),
        concurrency=serving.concurrency,
        max_replicas=1 if local else serving.max_scale,
    )


def topology_from_env(environ: Mapping[str, str], here: str | None = None) -> Topology:
    """The topology a function process serves: TOLLGATE_TEMPLATE (default ./template.yaml), and
    under `tollgate up` TOLLGATE_LOCAL_ENDPOINTS, a JSON file of the local infer URLs
    ({"clusters": {cluster: {model: url}}, "emulated": true, "unserved": {model: why}}): only
    the models it lists are served; emulated tiers get their RTT from the template's
    ``local.tiers`` and the ingress adds it to each call."""
    template = template_from_env(environ)
    endpoints = environ.get("TOLLGATE_LOCAL_ENDPOINTS")
    if not endpoints:
        return topology(template, here=here)
    local = json.loads(Path(endpoints).read_text())
    urls = local["clusters"]

    def url(cluster: Cluster, model: Model) -> str | None:
        found = urls.get(cluster.name, {}).get(model.name)
        return None if found is None else str(found)

    return topology(
        template,
        url,
        local=bool(local.get("emulated", True)),
        unserved=local.get("unserved", {}),
        here=here,
    )


def plan_grants(template: Template, now: float | None = None) -> dict[str, PlanGrant]:
    """What each plan grants per period, in credits. A per-second plan sells engine seconds on
    models up to a size: it grants enough credits for that many seconds at the dearest
    per-second rate it may run at under the price book version in effect at ``now`` or any
    published after it, so every allowed model gets at least the seconds sold."""
    book = price_book(template)
    current = book.in_effect(time.time() if now is None else now)
    start = book.versions.index(current) if current else 0
    prices = [p for v in book.versions[start:] for p in v.prices]
    grants = {}
    for plan in template.plans:
        if isinstance(plan, PerSecond):
            rates = [
                p.per_engine_second or 0
                for p in prices
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


def sla_terms(template: Template) -> dict[str, SlaTerms]:
    """Each plan's latency SLA as the ledger evaluates it."""
    return {
        p.name: SlaTerms(
            objective_bp=p.sla.objective_bp,
            percent_of_spend=p.sla.credit.percent_of_spend,
            per_breach=p.sla.credit.per_breach,
        )
        for p in template.plans
        if p.sla is not None
    }


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
        currency=template.credit.currency,
        decimals=template.credit.currency_decimals,
        credits_per_unit=template.credit.per_unit,
        description=cb.description,
        merchant_identifier=cb.merchant_identifier,
        poll_after_s=cb.poll_after_seconds,
    )


def template_from_env(environ: Mapping[str, str]) -> Template:
    return load_template(environ.get("TOLLGATE_TEMPLATE", "template.yaml"))
