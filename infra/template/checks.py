"""Cross-field checks: what each field's type cannot see on its own.

Each check yields a Problem whose path is the YAML path of the offending value (the loader adds
the line) and whose message says what would be valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

from events.camara import EVENTS as CAMARA_EVENTS
from infra.template.catalog import FUNCTION_KINDS, INFER, known_event_types
from infra.template.eventing import consumers, emitters
from infra.template.fields import format_parameters, version_order
from infra.template.problems import Problem
from infra.template.schema import PerSecond, Template


def cross_check(t: Template) -> list[Problem]:
    return [
        *_duplicates(t),
        *_table(t),
        *_clusters(t),
        *_prices(t),
        *_per_second_prices(t),
        *_plans(t),
        *_functions(t),
        *_infer_serving(t),
        *_event_types(t),
        *_eventing(t),
        *_camara(t),
        *_carrier_billing(t),
        *_sites(t),
        *_local(t),
    ]


def _dupes(section: tuple[str | int, ...], keys: Iterable[str], what: str) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            yield Problem(
                (*section, i),
                f"duplicate {what} {key!r}: already declared at index {seen[key]}; "
                "each must be unique",
            )
        seen.setdefault(key, i)


def _duplicates(t: Template) -> Iterator[Problem]:
    yield from _dupes(("tiers",), (x.name for x in t.tiers), "tier name")
    yield from _dupes(("clusters",), (x.name for x in t.clusters), "cluster name")
    yield from _dupes(("clusters",), (x.context for x in t.clusters), "kube context")
    yield from _dupes(("models",), (x.name for x in t.models), "model name")
    yield from _dupes(("models",), (x.served_name for x in t.models), "model servedName")
    yield from _dupes(("plans",), (x.name for x in t.plans), "plan name")
    yield from _dupes(("functions",), (x.name for x in t.functions), "function name")
    for i, version in enumerate(t.price_book.versions):
        yield from _dupes(
            ("priceBook", "versions", i, "prices"),
            (f"{p.model}@{p.tier}" for p in version.prices),
            "price for model@tier",
        )
    ev = ("eventing",)
    yield from _dupes((*ev, "triggers"), (x.resource_name for x in t.eventing.triggers), "trigger")
    yield from _dupes((*ev, "pings"), (x.name for x in t.eventing.pings), "ping name")
    yield from _dupes((*ev, "producers"), (x.name for x in t.eventing.producers), "producer")
    yield from _dupes(
        ("camara", "subscriptions"), (x.name for x in t.camara.subscriptions), "subscription"
    )
    for i, c in enumerate(t.clusters):
        yield from _dupes(("clusters", i, "models"), c.models, "model on a cluster")


def _table(t: Template) -> Iterator[Problem]:
    url = urlparse(t.table.store)
    if url.scheme not in ("dynamodb", "dynamodbs") or url.path.lstrip("/") != t.table.name:
        yield Problem(
            ("table", "store"),
            f"store {t.table.store!r} must be a DynamoDB URL naming table {t.table.name!r}: "
            f"dynamodb:///{t.table.name} (AWS) or dynamodb://host:port/{t.table.name}",
        )


def _clusters(t: Template) -> Iterator[Problem]:
    tiers = {x.name: x for x in t.tiers}
    models = {m.name: m for m in t.models}
    names = {c.name for c in t.clusters}
    for i, c in enumerate(t.clusters):
        for peer in c.peer_rtt_ms:
            if peer not in names or peer == c.name:
                yield Problem(
                    ("clusters", i, "peerRttMs", peer),
                    f"{peer!r} is not another cluster; clusters: {', '.join(sorted(names))}",
                )
        tier = tiers.get(c.tier)
        if tier is None:
            yield Problem(
                ("clusters", i, "tier"), f"unknown tier {c.tier!r}; tiers: {', '.join(tiers)}"
            )
            continue
        if c.rtt_ms not in tier.rtt_ms:
            yield Problem(
                ("clusters", i, "rttMs"),
                f"{c.rtt_ms} ms is outside tier {tier.name!r}'s "
                f"{tier.rtt_ms.min}-{tier.rtt_ms.max} ms; move the cluster or widen the tier",
            )
        for j, name in enumerate(c.models):
            where = ("clusters", i, "models", j)
            model = models.get(name)
            if model is None:
                yield Problem(
                    where,
                    f"unknown model {name!r} on cluster {c.name!r}; "
                    f"declared models: {', '.join(models)}",
                )
                continue
            if tier.max_parameters is not None and model.parameters > tier.max_parameters:
                fits = [
                    x.name
                    for x in t.tiers
                    if x.max_parameters is None or model.parameters <= x.max_parameters
                ]
                yield Problem(
                    where,
                    f"model {name!r} ({format_parameters(model.parameters)} parameters) is too "
                    f"large for cluster {c.name!r}: tier {tier.name!r} hosts at most "
                    f"{format_parameters(tier.max_parameters)}; tiers that fit: "
                    f"{', '.join(fits) or 'none'}",
                )
            if model.engine == "vllm":
                gpu = c.gpu
                if gpu is None:
                    yield Problem(
                        where,
                        f"model {name!r} runs on vllm and needs {model.gpus} GPU(s), but cluster "
                        f"{c.name!r} declares no gpu; host a llamacpp model here or add gpu",
                    )
                elif model.gpus > gpu.count or model.gpu_memory_gib > model.gpus * gpu.memory_gib:
                    yield Problem(
                        where,
                        f"model {name!r} needs {model.gpus} GPU(s) with {model.gpu_memory_gib} "
                        f"GiB in all; cluster {c.name!r} has {gpu.count} x {gpu.type} of "
                        f"{gpu.memory_gib} GiB",
                    )


def _prices(t: Template) -> Iterator[Problem]:
    """Every version names known models and tiers; the newest (what the platform will charge
    from now on) prices exactly what the clusters host. Older versions may price models since
    retired and lack ones added later: a cluster a version does not price is not routed to."""
    hosted = {(m, c.tier): c.name for c in t.clusters for m in c.models}
    models = {m.name for m in t.models}
    tiers = {x.name for x in t.tiers}
    newest = len(t.price_book.versions) - 1
    for v, version in enumerate(t.price_book.versions):
        at: tuple[str | int, ...] = ("priceBook", "versions", v)
        for i, p in enumerate(version.prices):
            where = (*at, "prices", i)
            if p.model not in models:
                yield Problem(
                    (*where, "model"), f"unknown model {p.model!r}; models: {sorted(models)}"
                )
            elif p.tier not in tiers:
                yield Problem((*where, "tier"), f"unknown tier {p.tier!r}; tiers: {sorted(tiers)}")
            elif v == newest and (p.model, p.tier) not in hosted:
                yield Problem(
                    where,
                    f"price for model {p.model!r} on tier {p.tier!r}, but no {p.tier} cluster "
                    "hosts it; remove the price or add the model to a cluster of that tier",
                )
    priced = {(p.model, p.tier) for p in t.price_book.newest.prices}
    for (model, tier), cluster in sorted(hosted.items()):
        if (model, tier) not in priced and model in models and tier in tiers:
            yield Problem(
                ("priceBook", "versions", newest, "prices"),
                f"no price for model {model!r} on tier {tier!r} (hosted on cluster {cluster!r}) "
                f"in the newest version {t.price_book.newest.version!r}; add {{model: {model}, "
                f"tier: {tier}, inputPerMillion: N, outputPerMillion: N}}",
            )
    yield from _price_history(t)


def _price_history(t: Template) -> Iterator[Problem]:
    """Versions in order, oldest first: each one's name after the last's (digit runs compare
    as numbers) and its effective time strictly later, so "the version in effect" is one."""
    versions = t.price_book.versions
    for i in range(1, len(versions)):
        before, this = versions[i - 1], versions[i]
        at = ("priceBook", "versions", i)
        if version_order(this.version) <= version_order(before.version):
            yield Problem(
                (*at, "version"),
                f"version {this.version!r} is listed after {before.version!r} but does not "
                "come after it; list versions oldest first, each with a later name "
                "(e.g. 2026-10.1, 2026-11.1)",
            )
        if this.effective_from <= before.effective_from:
            yield Problem(
                (*at, "effectiveFrom"),
                f"version {this.version!r} takes effect {this.effective_from.isoformat()}, not "
                f"after {before.version!r} ({before.effective_from.isoformat()}); each version "
                "must take effect strictly after the one listed before it",
            )


def _per_second_prices(t: Template) -> Iterator[Problem]:
    """A per-second plan is charged perEngineSecond: a price it may route to without one would
    hold 1 credit, charge nothing and rank its cluster cheapest. Prices no per-second plan can
    reach (another tier, a larger model) need none."""
    parameters = {m.name: m.parameters for m in t.models}
    plans = [p for p in t.plans if isinstance(p, PerSecond)]
    for v, version in enumerate(t.price_book.versions):
        for i, price in enumerate(version.prices):
            if price.per_engine_second:
                continue
            size = parameters.get(price.model)
            reaching = [
                plan.name
                for plan in plans
                if (not plan.tiers or price.tier in plan.tiers)
                and (not plan.models or price.model in plan.models)
                and size is not None
                and size <= plan.max_parameters
            ]
            if reaching:
                yield Problem(
                    ("priceBook", "versions", v, "prices", i, "perEngineSecond"),
                    f"model {price.model!r} on tier {price.tier!r} has no perEngineSecond rate "
                    f"(or 0) in version {version.version!r}, but per-second plan(s) "
                    f"{', '.join(reaching)} may run it there; add a positive perEngineSecond",
                )


def _plans(t: Template) -> Iterator[Problem]:
    tiers = {x.name for x in t.tiers}
    models = {m.name for m in t.models}
    for i, plan in enumerate(t.plans):
        for j, tier in enumerate(plan.tiers):
            if tier not in tiers:
                yield Problem(
                    ("plans", i, "tiers", j), f"unknown tier {tier!r}; tiers: {sorted(tiers)}"
                )
        for j, model in enumerate(plan.models):
            if model not in models:
                yield Problem(
                    ("plans", i, "models", j), f"unknown model {model!r}; models: {sorted(models)}"
                )


def _functions(t: Template) -> Iterator[Problem]:
    clusters = {c.name for c in t.clusters}
    for i, f in enumerate(t.functions):
        if f.name not in FUNCTION_KINDS:
            yield Problem(
                ("functions", i, "name"),
                f"unknown function {f.name!r}; functions: {', '.join(FUNCTION_KINDS)}",
            )
        for j, cluster in enumerate(f.clusters):
            if cluster not in clusters:
                yield Problem(
                    ("functions", i, "clusters", j),
                    f"unknown cluster {cluster!r}; clusters: {', '.join(sorted(clusters))}",
                )
        if f.name == INFER and f.clusters:
            yield Problem(
                ("functions", i, "clusters"),
                "infer runs on every cluster that hosts a model: list models under "
                "clusters[].models instead",
            )
        if f.min_scale > f.max_scale:
            yield Problem(("functions", i, "minScale"), f"minScale {f.min_scale} exceeds maxScale")
    if any(c.models for c in t.clusters) and t.infer_function() is None:
        yield Problem(
            ("functions",),
            "clusters host models but no 'infer' function is declared to serve them; add one",
        )


def _infer_serving(t: Template) -> Iterator[Problem]:
    """Each hosted model's infer service, its model overrides applied: the router counts its
    slots (replicas x concurrency), so a replica must take a bounded number of requests
    (Knative's containerConcurrency 0, unlimited, means nothing to an engine)."""
    if t.infer_function() is None:
        return
    hosted = {m for c in t.clusters for m in c.models}
    for i, m in enumerate(t.models):
        if m.name not in hosted:
            continue
        serving = t.infer_serving(m)
        if serving.concurrency < 1:
            where = "serving" if m.serving.concurrency is not None else "functions[infer]"
            yield Problem(
                ("models", i, "serving", "concurrency"),
                f"{m.name}'s infer service gets concurrency 0 (from {where}): set the requests "
                "one replica serves at once, 1 or more (e.g. 4 for llamacpp, 32 for vllm)",
            )
        if serving.min_scale > serving.max_scale:
            yield Problem(
                ("models", i, "serving", "minScale"),
                f"minScale {serving.min_scale} exceeds maxScale {serving.max_scale}",
            )


def _event_types(t: Template) -> Iterator[Problem]:
    """Catch typos: every declared type is one the event catalogue has a model for."""
    known = known_event_types()
    declared: list[tuple[tuple[str | int, ...], str]] = []
    for i, f in enumerate(t.functions):
        declared += [(("functions", i, "consumes", j), x) for j, x in enumerate(f.consumes)]
        declared += [(("functions", i, "emits", j), x) for j, x in enumerate(f.emits)]
    for i, p in enumerate(t.eventing.producers):
        declared += [(("eventing", "producers", i, "emits", j), x) for j, x in enumerate(p.emits)]
    for i, s in enumerate(t.camara.subscriptions):
        declared += [(("camara", "subscriptions", i, "emits", j), x) for j, x in enumerate(s.emits)]
    declared += [(("eventing", "pings", i, "type"), p.type) for i, p in enumerate(t.eventing.pings)]
    for where, type_ in declared:
        if type_ not in known:
            yield Problem(
                where,
                f"unknown event type {type_}: use one of events/types.py or events/network.py "
                f"({', '.join(sorted(known))})",
            )


def _eventing(t: Template) -> Iterator[Problem]:
    ev = t.eventing
    clusters = {c.name for c in t.clusters}
    if ev.home not in clusters:
        yield Problem(
            ("eventing", "home"),
            f"unknown cluster {ev.home!r}; clusters: {', '.join(sorted(clusters))}",
        )
        return
    for i, c in enumerate(t.clusters):
        sited = c.models or c.name in t.site_ingresses()
        if c.name != ev.home and sited and c.service_account_issuer is None:
            yield Problem(
                ("clusters", i, "serviceAccountIssuer"),
                f"cluster {c.name!r} hosts models or an ingress away from the home cluster "
                f"{ev.home!r}: name its service-account issuer (https://...), by which the home "
                "ingress verifies the usage its infer reports and its ingress's ledger calls",
            )
    # Infer is deployed per model (infer-<model>) and takes no events, so it is no target.
    on_home = {f.name for f in t.functions if f.name != INFER and ev.home in t.function_clusters(f)}
    deliveries = [(("eventing", "delivery"), ev.delivery)] + [
        (("eventing", "triggers", i, "delivery"), tr.delivery)
        for i, tr in enumerate(ev.triggers)
        if tr.delivery
    ]
    for where, delivery in deliveries:
        if delivery and delivery.dead_letter_sink not in on_home:
            yield Problem(
                (*where, "deadLetterSink"),
                f"dead-letter sink {delivery.dead_letter_sink!r} is not a function on the home "
                f"cluster {ev.home!r}; functions there: {', '.join(sorted(on_home))}",
            )
    consumed = consumers(t)
    emitted = emitters(t)
    triggered: set[str] = set()
    for i, tr in enumerate(ev.triggers):
        at: tuple[str | int, ...] = ("eventing", "triggers", i)
        triggered.add(tr.type)
        if tr.function not in consumed:
            yield Problem(
                (*at, "function"),
                f"unknown function {tr.function!r}; declared functions: {', '.join(consumed)}",
            )
        elif tr.function == INFER:
            yield Problem(
                (*at, "function"),
                "infer takes no events (it serves HTTP as infer-<model> on each cluster); "
                "trigger another function",
            )
        elif tr.function not in on_home:
            yield Problem(
                (*at, "function"),
                f"function {tr.function!r} does not run on the home cluster {ev.home!r}, "
                "where the broker and its triggers live; add it to that function's clusters",
            )
        elif tr.type not in consumed[tr.function]:
            yield Problem(
                (*at, "type"),
                f"function {tr.function!r} does not consume {tr.type}; it consumes: "
                f"{', '.join(sorted(consumed[tr.function])) or 'nothing'}",
            )
        if tr.type not in emitted:
            yield Problem(
                (*at, "type"),
                f"trigger for {tr.type}, which nobody emits; emitted types: "
                f"{', '.join(sorted(emitted))}. Declare the producer under eventing.producers "
                "or remove the trigger",
            )
    for i, ping in enumerate(ev.pings):
        if ping.type not in triggered:
            yield Problem(
                ("eventing", "pings", i, "type"),
                f"ping {ping.name!r} sends {ping.type} but no trigger consumes it; add a trigger "
                "for that type",
            )


def _camara(t: Template) -> Iterator[Problem]:
    clusters = {c.name for c in t.clusters}
    for i, s in enumerate(t.camara.subscriptions):
        where = ("camara", "subscriptions", i)
        if s.cluster not in clusters:
            yield Problem(
                (*where, "cluster"),
                f"unknown cluster {s.cluster!r}; clusters: {', '.join(sorted(clusters))}",
            )
        prefix = f"org.camaraproject.{s.api}.{s.api_version}."
        accepted = sorted(
            t for t, kind in CAMARA_EVENTS.items() if t.startswith(prefix) and not kind.lifecycle
        )
        for j, type_ in enumerate(s.event_types):
            if type_ not in accepted:
                yield Problem(
                    (*where, "eventTypes", j),
                    f"{type_!r} is not a notification of {s.api} {s.api_version} Tollgate "
                    f"accepts; accepted: {', '.join(accepted) or 'none for this API version'}",
                )


def _carrier_billing(t: Template) -> Iterator[Problem]:
    """Every top-up a plan sells must cost a whole number of the currency's minor units."""
    if t.carrier_billing is None:
        return
    credit = t.credit
    scale: int = 10**credit.currency_decimals
    for i, plan in enumerate(t.plans):
        for j, credits in enumerate(getattr(plan, "top_ups", ())):
            if credits * scale % credit.per_unit:
                yield Problem(
                    ("plans", i, "topUps", j),
                    f"{credits} credits is not a whole number of {credit.currency} minor units "
                    f"at {credit.per_unit} credits per {credit.currency} (credit.perUnit)",
                )


def _sites(t: Template) -> Iterator[Problem]:
    """A slice booking warms the sites that serve its area: with a slice-booking subscription,
    every cluster must say where it serves, or a booking could never be matched."""
    booking = next(
        (s.name for s in t.camara.subscriptions if s.api == "network-slice-booking"), None
    )
    if booking is None:
        return
    for i, c in enumerate(t.clusters):
        if c.site is None:
            yield Problem(
                ("clusters", i),
                f"cluster {c.name!r} has no site, but subscription {booking!r} books slices "
                "whose service areas are matched with sites: add "
                "site: {latitude: N, longitude: N, radiusKm: N}",
            )


def _local(t: Template) -> Iterator[Problem]:
    tiers = {x.name: x for x in t.tiers}
    models = {m.name: m for m in t.models}
    model = models.get(t.local.model)
    if model is None:
        yield Problem(
            ("local", "model"), f"unknown model {t.local.model!r}; models: {', '.join(models)}"
        )
    elif model.engine != "llamacpp":
        yield Problem(
            ("local", "model"),
            f"model {model.name!r} runs on {model.engine}; tollgate up runs a llamacpp model",
        )
    for name, local in t.local.tiers.items():
        where = ("local", "tiers", name)
        tier = tiers.get(name)
        if tier is None:
            yield Problem(where, f"unknown tier {name!r}; tiers: {', '.join(tiers)}")
            continue
        if local.emulated_rtt_ms not in tier.rtt_ms:
            yield Problem(
                (*where, "emulatedRttMs"),
                f"{local.emulated_rtt_ms} ms is outside tier {name!r}'s "
                f"{tier.rtt_ms.min}-{tier.rtt_ms.max} ms",
            )
        if model is not None and not any(
            model.name in c.models for c in t.clusters if c.tier == name
        ):
            yield Problem(
                where,
                f"local model {model.name!r} is hosted on no {name} cluster; tollgate up serves "
                "the same models as the template, so add it to a cluster of that tier",
            )
