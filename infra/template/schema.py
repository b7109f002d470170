"""``template.yaml``'s schema: the platform as ops declare it, as frozen, typed models.

Field types live in ``fields``; what one field cannot see on its own is checked in ``checks``;
``load.load_template`` is the only way in, so the Knative renderer, ``tollgate up`` and every
function read tiers, clusters, models, prices and plans from one source of truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from events.ratelimits import RateLimits
from infra.template.fields import (
    Credits,
    Cron,
    EffectiveFrom,
    EventType,
    GoDuration,
    GracePeriod,
    IsoDuration,
    MaxQueueWait,
    Name,
    Parameters,
    Quantity,
    ScaleDownDelay,
    StableWindow,
    go_duration_seconds,
)
from router_fn.topology import DEFAULT_MAX_QUEUE_WAIT_MS

API_VERSION = "tollgate.io/v1alpha1"


class _Model(BaseModel):
    # Fields are snake_case in Python and camelCase in the file, like Kubernetes resources.
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class Metadata(_Model):
    name: Name
    namespace: Name = "tollgate"
    operator: str


class Table(_Model):
    """The one DynamoDB-compatible table; keys and TTL are what the store adapters rely on."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{3,255}$")
    # What functions get as TOLLGATE_STORE (dynamodb:///t for AWS, dynamodb://host:port/t else).
    store: str
    region: str
    partition_key: Literal["pk"] = "pk"
    sort_key: Literal["sk"] = "sk"
    billing_mode: Literal["PAY_PER_REQUEST"] = "PAY_PER_REQUEST"
    ttl_attribute: Literal["expires_at"] = "expires_at"
    # Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for Alternator; None on AWS (IRSA).
    credentials_secret: Name | None = None


class RttRange(_Model):
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RttRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self

    def __contains__(self, ms: int) -> bool:
        return self.min <= ms <= self.max


class Tier(_Model):
    name: Name
    rtt_ms: RttRange
    # None: no upper bound (the cloud tier hosts the largest models).
    max_parameters: Parameters | None = None


class Toleration(_Model):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Gpu(_Model):
    type: str
    count: int = Field(ge=1)
    memory_gib: int = Field(ge=1, alias="memoryGiB")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


class Site(_Model):
    """Where a cluster's users are: the centre and radius of the area it serves, matched with a
    network-slice booking's service area (CAMARA Area) to know which sites to warm."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    radius_km: float = Field(gt=0, le=5000)


class Cluster(_Model):
    name: Name
    tier: Name
    context: str = Field(min_length=1)
    region: str
    jurisdiction: str = Field(pattern=r"^[A-Z]{2}$")
    rtt_ms: int = Field(ge=0)
    # Knative's domain on this cluster: services answer at https://NAME.NAMESPACE.DOMAIN.
    domain: str
    gpu: Gpu | None = None
    models: tuple[Name, ...] = ()
    site: Site | None = None
    # The OIDC issuer of this cluster's service-account tokens (its discovery must be reachable
    # from the home cluster): how the home ingress knows this cluster's infer when it reports
    # usage. Needed for every cluster other than home that hosts models.
    service_account_issuer: str | None = Field(default=None, pattern=r"^https://")
    # Round trips from this cluster to others (ms), where it runs a site ingress: an application
    # that reached this site is rttMs away, and another cluster this much further (default:
    # that cluster's own rttMs). The site ingress routes by rttMs + these.
    peer_rtt_ms: dict[Name, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    def service_url(self, service: str, namespace: str) -> str:
        return f"https://{service}.{namespace}.{self.domain}"


class Resources(_Model):
    cpu: Quantity
    memory: Quantity


class Serving(_Model):
    """Knative scaling knobs; any unset one falls back to the function's own setting."""

    min_scale: int | None = Field(default=None, ge=0)
    max_scale: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=0)
    scale_down_delay: ScaleDownDelay | None = None
    progress_deadline: GoDuration | None = None
    window: StableWindow | None = None


@dataclass(frozen=True)
class InferServing:
    """One model's infer service as Knative runs it: ``functions[infer]``'s settings with the
    model's ``serving`` overrides applied."""

    min_scale: int
    max_scale: int
    concurrency: int  # containerConcurrency: requests one replica serves at once
    scale_down_delay: str | None
    progress_deadline: str | None
    window: str | None  # the autoscaler's stable window (None: Knative's 60s)


class Model(_Model):
    name: Name
    # The id applications pass as "model" (and vLLM's --model / --served-model-name).
    served_name: str
    parameters: Parameters
    engine: Literal["llamacpp", "vllm"]
    context_length: int = Field(ge=256)
    resources: Resources
    # vLLM only: the server image, its extra args, GPUs per replica and GPU memory it needs.
    image: str | None = None
    args: tuple[str, ...] = ()
    gpus: int = Field(default=0, ge=0)
    gpu_memory_gib: int = Field(default=0, ge=0, alias="gpuMemoryGiB")
    serving: Serving = Serving()
    # What a cold start (scale from zero to serving) is expected to cost before any is measured:
    # only the prior of the router's learned estimate. None: a size-based guess.
    cold_start_ms: int | None = Field(default=None, ge=0, le=3_600_000)

    @model_validator(mode="after")
    def _engine_fields(self) -> Model:
        if self.engine == "vllm" and (self.image is None or self.gpus < 1):
            raise ValueError("a vllm model needs image (vllm/vllm-openai:TAG) and gpus >= 1")
        if self.engine == "llamacpp" and (self.image or self.args or self.gpus):
            raise ValueError(
                "a llamacpp model runs in-process in the tollgate image on CPU: "
                "remove image, args and gpus"
            )
        return self


class Price(_Model):
    """Integer credits per million input/output tokens, or per second of engine time."""

    model: Name
    tier: Name
    input_per_million: Credits
    output_per_million: Credits
    per_engine_second: Credits | None = None


class PriceVersion(_Model):
    """One published version of the price book. It prices the holds authorized from
    ``effectiveFrom`` until the next version's; it is published (``GET /v1/prices``) as soon as
    it is in the template, before it is charged."""

    # Carried on every hold's quote (events/quote.py): a short name, not free text.
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    effective_from: EffectiveFrom
    note: str | None = Field(default=None, max_length=500)  # what changed and why, published
    prices: tuple[Price, ...]


class PriceBook(_Model):
    """The price book's history, oldest first: versions and effective times in order. Append a
    version to change prices; never edit one that has taken effect (holds carry its quotes)."""

    versions: tuple[PriceVersion, ...] = Field(min_length=1)

    @property
    def newest(self) -> PriceVersion:
        return self.versions[-1]


class Credit(_Model):
    """What a credit is worth: one unit of ``currency`` buys ``perUnit`` credits. The one
    definition: top-ups on the phone bill charge at this rate and prices are set in it."""

    currency: str = Field(pattern=r"^[A-Z]{3}$")  # ISO 4217
    currency_decimals: int = Field(default=2, ge=0, le=4)  # the currency's minor unit
    per_unit: Credits = Field(ge=1)


class SlaCredit(_Model):
    """What a breached period pays back, as a lot of credits: a whole percentage of the period's
    spend, or a fixed number of credits per request that missed its budget (capped at the
    period's spend). Exactly one of the two."""

    percent_of_spend: int | None = Field(default=None, ge=1, le=100)
    per_breach: Credits | None = None

    @model_validator(mode="after")
    def _one(self) -> SlaCredit:
        if (self.percent_of_spend is None) == (self.per_breach is None):
            raise ValueError("give exactly one of percentOfSpend (1-100) or perBreach (credits)")
        if self.per_breach == 0:
            raise ValueError("perBreach must be at least 1 credit")
        return self


class Sla(_Model):
    """The latency promise: at least ``objectivePercent`` of the requests that carry a latency
    budget (header or plan target) meet it, measured as time to first token at the ingress, per
    calendar month (UTC); a month below it grants ``credit`` once."""

    objective_percent: Decimal = Field(gt=0, le=100)
    period: Literal["calendarMonth"] = "calendarMonth"
    credit: SlaCredit

    @model_validator(mode="after")
    def _hundredths(self) -> Sla:
        if (self.objective_percent * 100) % 1:
            raise ValueError("objectivePercent takes at most two decimals (e.g. 99.95)")
        return self

    @property
    def objective_bp(self) -> int:
        """The objective in basis points (95 -> 9500): compared in integers, never floats."""
        return int(self.objective_percent * 100)


class _Plan(_Model):
    name: Name
    # Empty means every tier / model.
    tiers: tuple[Name, ...] = ()
    models: tuple[Name, ...] = ()
    latency_target_ms: int | None = Field(default=None, ge=1)
    residency: tuple[str, ...] = ()
    sla: Sla | None = None
    # The longest a request may wait in a cluster's queue for a slot: beyond it the router sends
    # it to a dearer cluster that can start it sooner, or answers 429 when none can. "unbounded":
    # always the cheapest cluster, however long the queue (batch work).
    max_queue_wait_ms: MaxQueueWait = DEFAULT_MAX_QUEUE_WAIT_MS
    # Per API key of the plan (a key's own override replaces the fields it sets); enforced across
    # every ingress replica together (router_fn/ratelimit.py). None: not limited.
    rate_limits: RateLimits | None = None


class MonthlyBundle(_Plan):
    kind: Literal["monthlyBundle"]
    credits: Credits
    rollover: bool = False


class SubscriptionPlan(_Plan):
    kind: Literal["subscription"]
    credits: Credits
    rollover: bool = False
    top_ups: tuple[Credits, ...] = ()


class PayPerInference(_Plan):
    kind: Literal["payPerInference"]
    top_ups: tuple[Credits, ...] = Field(min_length=1)


class PerSecond(_Plan):
    """Seconds of inference on models up to a size, charged at the price book's per-second rate."""

    kind: Literal["perSecond"]
    engine_seconds: int = Field(ge=1)
    max_parameters: Parameters
    rollover: bool = False


Plan = Annotated[
    MonthlyBundle | SubscriptionPlan | PayPerInference | PerSecond, Field(discriminator="kind")
]


class Function(_Model):
    name: Name
    image: str | None = None
    # Where it runs; empty means the eventing home cluster. Ignored for infer (see clusters.models).
    clusters: tuple[Name, ...] = ()
    min_scale: int = Field(default=0, ge=0)
    max_scale: int = Field(ge=1)
    concurrency: int = Field(default=0, ge=0)
    scale_down_delay: ScaleDownDelay | None = None
    progress_deadline: GoDuration | None = None
    window: StableWindow | None = None
    resources: Resources
    # On top of catalog.py's table, e.g. network-slice events a function also handles.
    consumes: tuple[EventType, ...] = ()
    emits: tuple[EventType, ...] = ()


class DeliverySpec(_Model):
    retry: int = Field(ge=0)
    backoff_policy: Literal["exponential", "linear"] = "exponential"
    backoff_delay: IsoDuration
    # A function on the home cluster that records undeliverable events.
    dead_letter_sink: Name


class Trigger(_Model):
    type: EventType
    function: Name
    name: Name | None = None
    delivery: DeliverySpec | None = None

    @property
    def resource_name(self) -> str:
        """Explicit name, else FUNCTION-NOUN-VERB from io.tollgate.NOUN.VERB.vN."""
        if self.name:
            return self.name
        middle = self.type.removeprefix("io.tollgate.").rsplit(".", 1)[0]
        return f"{self.function}-{middle.replace('.', '-')}"


class Producer(_Model):
    """A system outside the platform that posts events to the broker (e.g. the operator's BSS).

    The broker is cluster-local: a producer runs in the home cluster and presents a token of its
    ServiceAccount for the broker's audience; ``subject`` is that identity (default
    ``system:serviceaccount:<namespace>:<name>``)."""

    name: Name
    emits: tuple[EventType, ...] = Field(min_length=1)
    subject: str | None = Field(default=None, pattern=r"^system:serviceaccount:[a-z0-9.-]+:")


class Ping(_Model):
    name: Name
    schedule: Cron
    type: EventType
    data: dict[str, str] = Field(default_factory=dict)

    @property
    def payload(self) -> str:
        """``data`` as the PingSource sends it: compact JSON, keys sorted."""
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"))


class Eventing(_Model):
    home: Name
    broker: Name = "default"
    delivery: DeliverySpec
    producers: tuple[Producer, ...] = ()
    triggers: tuple[Trigger, ...]
    pings: tuple[Ping, ...] = ()


class CamaraSubscription(_Model):
    name: Name
    api: str
    api_version: str = Field(pattern=r"^v\d+$")
    api_root: str = Field(pattern=r"^https://")
    event_types: tuple[str, ...] = Field(min_length=1)
    cluster: Name
    # The io.tollgate.network.* types the adapter turns these notifications into.
    emits: tuple[EventType, ...] = ()


class Camara(_Model):
    # Read by the events endpoint at runtime; only the variable's name lives in the template.
    credential_env: str = Field(default="TOLLGATE_CAMARA_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    subscriptions: tuple[CamaraSubscription, ...] = ()


EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]


class CarrierBilling(_Model):
    """Top-ups charged to the developer's mobile line through the operator's CAMARA Carrier
    Billing API (2-step payments) and its Refund API. Secrets are named, never written here:
    ``credentialEnv`` holds the access token Tollgate presents to the operator,
    ``sinkKeyEnv`` the key that signs the sink credential of each payment (ledger and ingress
    share it). A top-up of N credits costs N / credit.perUnit currency units, exactly: the
    rate and currency are the template's ``credit``, never a second definition here."""

    @model_validator(mode="before")
    @classmethod
    def _no_own_rate(cls, data: Any) -> Any:
        moved = {"currency", "currencyDecimals", "creditsPerUnit"} & set(
            data if isinstance(data, dict) else ()
        )
        if moved:
            raise ValueError(
                f"{', '.join(sorted(moved))}: moved to the top-level credit section "
                "(credit: {currency: EUR, currencyDecimals: 2, perUnit: 1000000}), the one "
                "definition of what a credit is worth"
            )
        return data

    api_root: str = Field(pattern=r"^https://")
    refund_api_root: str = Field(pattern=r"^https://")
    credential_env: EnvName = "TOLLGATE_CARRIER_BILLING_TOKEN"
    sink_key_env: EnvName = "TOLLGATE_CARRIER_SINK_KEY"
    # The public ingress the operator posts notifications to (/events/carrier-billing/...).
    notify_url: str = Field(pattern=r"^https://")
    description: str = Field(default="AI inference credits", min_length=1, max_length=200)
    merchant_identifier: str | None = Field(default=None, max_length=200)
    poll_after_seconds: int = Field(default=60, ge=1)


Jurisdiction = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class Autoscaler(_Model):
    """Knative Serving's cluster-wide autoscaler settings the platform sets (ConfigMap
    ``config-autoscaler``, merge-patched on every cluster; unset ones keep Knative's default).
    ``tollgate up``'s autoscaler scales by the same."""

    # How long the last replica stays after the autoscaler wanted zero (Knative: 30s).
    scale_to_zero_grace_period: GracePeriod | None = None


class Warming(_Model):
    """Warm ahead of demand (the route function's warm-keeper, on a ping): a plan with
    ``latencyTargetMs`` keeps the sites that meet it warm until it has had no traffic for
    ``idleSeconds``; a booked slice's sites are warmed ``sliceLeadSeconds`` before it starts."""

    idle_seconds: int = Field(default=900, ge=60, le=86_400)
    slice_lead_seconds: int = Field(default=600, ge=0, le=86_400)


class Roaming(_Model):
    """Where a roaming device's requests may be processed: while a device bound to an account
    roams in country X, the account's requests are narrowed to ``allow[X]`` (a country not
    listed allows only itself). Keys and values are ISO 3166-1 alpha-2."""

    allow: dict[Jurisdiction, tuple[Jurisdiction, ...]] = Field(default_factory=dict)


class LocalTier(_Model):
    emulated_rtt_ms: int = Field(ge=0)


class Local(_Model):
    """How ``tollgate up`` runs this template on one machine."""

    model: Name
    tiers: dict[str, LocalTier]


class Template(_Model):
    api_version: Literal["tollgate.io/v1alpha1"]
    kind: Literal["Platform"]
    metadata: Metadata
    image: str
    admin_secret: Name = "tollgate-admin"
    # Secrets <name>-signing (signing.jwk: the ingress's private key) and <name>-verify
    # (verify.jwks: current and previous public keys) of inference capabilities.
    capability_secret: Name = "tollgate-capability"
    table: Table
    tiers: tuple[Tier, ...] = Field(min_length=1)
    clusters: tuple[Cluster, ...] = Field(min_length=1)
    models: tuple[Model, ...] = Field(min_length=1)
    credit: Credit
    price_book: PriceBook
    plans: tuple[Plan, ...] = ()
    functions: tuple[Function, ...]
    eventing: Eventing
    camara: Camara = Camara()
    carrier_billing: CarrierBilling | None = None
    warming: Warming = Warming()
    roaming: Roaming = Roaming()
    autoscaler: Autoscaler = Autoscaler()
    local: Local

    # -- lookups for the renderer, the router and ``tollgate up`` ---------------------------

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    def tier(self, name: str) -> Tier:
        return _one(self.tiers, name, "tier")

    def cluster(self, name: str) -> Cluster:
        return _one(self.clusters, name, "cluster")

    def plan(self, name: str) -> MonthlyBundle | SubscriptionPlan | PayPerInference | PerSecond:
        return _one(self.plans, name, "plan")

    def model(self, name: str) -> Model:
        """By template name or by the id applications send (``served_name``)."""
        for m in self.models:
            if name in (m.name, m.served_name):
                return m
        raise KeyError(f"no model {name!r}; models: {', '.join(m.name for m in self.models)}")

    def clusters_for_tier(self, tier: str) -> tuple[Cluster, ...]:
        return tuple(c for c in self.clusters if c.tier == tier)

    def function_clusters(self, function: Function) -> tuple[str, ...]:
        return function.clusters or (self.eventing.home,)

    def site_ingresses(self) -> tuple[str, ...]:
        """The clusters other than home that run an ingress of their own (a site ingress)."""
        ingress = next((f for f in self.functions if f.name == "ingress"), None)
        on = self.function_clusters(ingress) if ingress is not None else ()
        return tuple(c.name for c in self.clusters if c.name in on and c.name != self.eventing.home)

    def rtt_from(self, here: str, there: str) -> int:
        """The round trip an application at site ``here`` sees to cluster ``there`` (ms)."""
        site = self.cluster(here)
        if there == here:
            return site.rtt_ms
        return site.rtt_ms + site.peer_rtt_ms.get(there, self.cluster(there).rtt_ms)

    def infer_function(self) -> Function | None:
        return next((f for f in self.functions if f.name == "infer"), None)

    def infer_serving(self, model: Model) -> InferServing:
        """How ``model``'s infer service scales (validated: hosted models have an infer
        function)."""
        base = self.infer_function()
        assert base is not None, "validated: clusters host models only with an infer function"
        s = model.serving
        return InferServing(
            min_scale=base.min_scale if s.min_scale is None else s.min_scale,
            max_scale=s.max_scale or base.max_scale,
            concurrency=base.concurrency if s.concurrency is None else s.concurrency,
            scale_down_delay=s.scale_down_delay or base.scale_down_delay,
            progress_deadline=s.progress_deadline or base.progress_deadline,
            window=s.window or base.window,
        )

    def warm_for_s(self, model: Model) -> int:
        """How long a model's infer function stays up after its last request on Knative: the
        scale-down delay (the model's, else infer's) plus the stable window (60 s unless set)."""
        infer = self.infer_function()
        delay = model.serving.scale_down_delay or (infer.scale_down_delay if infer else None)
        window = model.serving.window or (infer.window if infer else None)
        stable = go_duration_seconds(window) if window else 60
        return stable + (go_duration_seconds(delay) if delay else 0)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def _one(items: Iterable[_N], name: str, what: str) -> _N:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no {what} {name!r}")
