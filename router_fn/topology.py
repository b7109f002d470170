"""What the router and ingress know of the platform: clusters, models, prices, plans.

The router owns this shape; ``infra`` fills it from template.yaml (router_fn never imports infra),
so tests can build a topology by hand and the template stays the one source of truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from events.prices import PriceBook
from events.quote import Quote
from events.ratelimits import RateLimits

# How long a request may wait for a slot in a cluster's queue when its plan does not say: about
# what an interactive user tolerates before the first token.
DEFAULT_MAX_QUEUE_WAIT_MS = 1000


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the template's name, e.g. "smollm2-135m"
    served_name: str  # the id applications send, e.g. "SmolLM2-135M-Instruct"
    parameters: int
    context_length: int
    cold_start_ms: int | None = None  # the template's prior; learned estimates replace it
    # How long an infer function stays loaded after it last served (Knative's scale-down delay):
    # a recent answer is evidence it is still warm where no fresher probe says otherwise.
    warm_for_s: int = 0
    # Its infer service's scaling: requests one replica serves at once (Knative's
    # containerConcurrency) and the most replicas a cluster runs (maxScale).
    concurrency: int = 1
    max_replicas: int = 1


@dataclass(frozen=True)
class Site:
    """The area a cluster serves: a circle on the WGS 84 ellipsoid's sphere."""

    latitude: float
    longitude: float
    radius_km: float


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    tier: str
    jurisdiction: str  # ISO 3166-1 alpha-2, where the data is processed
    rtt_ms: int  # network round trip from the users it serves
    max_parameters: int | None  # the tier's largest model; None: no limit
    # model name -> base URL of that model's infer function on this cluster
    infer_urls: Mapping[str, str] = field(default_factory=dict)
    emulated: bool = False  # `tollgate up`: the RTT is added locally, not real
    site: Site | None = None

    def hosts(self, model: str) -> bool:
        return model in self.infer_urls


@dataclass(frozen=True)
class PlanSpec:
    name: str
    tiers: frozenset[str] = frozenset()  # empty: every tier
    models: frozenset[str] = frozenset()  # empty: every model
    latency_target_ms: int | None = None
    residency: frozenset[str] = frozenset()  # empty: anywhere
    max_parameters: int | None = None
    per_engine_second: bool = False  # priced per engine second instead of per token
    # The longest a request may queue for a slot; None: unbounded (always the cheapest).
    max_queue_wait_ms: int | None = DEFAULT_MAX_QUEUE_WAIT_MS
    rate_limits: RateLimits | None = None  # per API key; a key's override replaces fields


@dataclass(frozen=True)
class Warming:
    """Warm ahead of demand (template ``warming``)."""

    idle_s: int = 900  # a plan's sites stay warm this long after its last request
    slice_lead_s: int = 600  # a booked slice's sites are warmed this long before it starts


@dataclass(frozen=True)
class Topology:
    clusters: tuple[ClusterSpec, ...]
    models: Mapping[str, ModelSpec]  # the models something serves (by template name)
    quotes: Mapping[tuple[str, str], Quote]  # (model name, tier) -> the price book's rates
    plans: Mapping[str, PlanSpec] = field(default_factory=dict)
    warming: Warming = Warming()
    # Roaming country -> where a roaming device's account may be served (template ``roaming``);
    # a country not listed allows only itself.
    roaming_allow: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def roaming_jurisdictions(self, countries: frozenset[str]) -> frozenset[str]:
        """Where requests may go while roaming in ``countries`` (several: each must allow)."""
        allowed: frozenset[str] | None = None
        for country in sorted(countries):
            here = self.roaming_allow.get(country, frozenset({country}))
            allowed = here if allowed is None else allowed & here
        return allowed or frozenset()

    # The price book's history; ``at`` picks the quotes of the version in effect.
    price_book: PriceBook | None = None
    # Models the template declares that nothing here serves -> why (e.g. no GPU locally).
    unserved: Mapping[str, str] = field(default_factory=dict)
    _priced: dict[str, Topology] = field(default_factory=dict, compare=False, repr=False)

    def at(self, now: float) -> Topology:
        """This topology priced by the price book version in effect at ``now`` (epoch
        seconds): a request is quoted, and its hold settled, by that version only. Before the
        first version takes effect nothing is priced, so nothing is routed."""
        if self.price_book is None:
            return self
        version = self.price_book.in_effect(now)
        key = version.version if version else ""
        view = self._priced.get(key)
        if view is None:
            quotes = version.quotes() if version else {}
            view = replace(self, quotes=quotes, _priced={})
            self._priced[key] = view  # a handful of versions: bounded by the template
        return view

    def model(self, requested: str) -> ModelSpec | None:
        """The model an application asked for, by served name or template name."""
        for spec in self.models.values():
            if requested in (spec.served_name, spec.name):
                return spec
        return None

    def cluster(self, name: str) -> ClusterSpec:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)

    def quote(self, model: str, tier: str, *, per_engine_second: bool = False) -> Quote | None:
        quote = self.quotes.get((model, tier))
        if quote is None or not per_engine_second:
            return quote
        return quote.model_copy(update={"unit": "engine_second"})
