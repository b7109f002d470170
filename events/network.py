"""Tollgate's own network events: what the CAMARA and 3GPP adapters turn notifications into.

The router consumes the site, qos and roaming events (tier health, residency); the ledger consumes
the slice events (bundle grants). Neither ever reads a CAMARA or 3GPP payload."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, model_validator

from events.fields import EventData, Name, Timestamp

SLICE_BOOKED: Final = "io.tollgate.network.slice.booked.v1"
SITE_DEGRADED: Final = "io.tollgate.network.site.degraded.v1"
SITE_RESTORED: Final = "io.tollgate.network.site.restored.v1"
QOS_CHANGED: Final = "io.tollgate.network.qos.changed.v1"
ROAMING_CHANGED: Final = "io.tollgate.network.roaming.changed.v1"
SUBSCRIPTION_CHANGED: Final = "io.tollgate.network.subscription.changed.v1"

MAX_DEGRADATION_S = 24 * 3600

# The external type a fact came from, e.g. org.camaraproject.quality-on-demand.v1.qos-status-changed
# or 3gpp.nnwdaf.DN_PERFORMANCE: kept so an operator can trace a routing change to its cause.
SourceEvent = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(max_length=1024)]
Metric = int | float | str | bool


class ServiceTime(EventData):
    """When a booked slice serves: no ``end`` means it has no ending date."""

    start: Timestamp
    end: Timestamp | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ServiceTime:
        if self.end is not None and self.end <= self.start:
            raise ValueError("service time must end after it starts")
        return self


class SliceBooked(EventData):
    """A slice is booked. Its bundle is granted once per slice_id, however often the slice is
    announced; ``service_time.end`` bounds the bundle's validity, and with the service area it
    tells which edge sites to warm and when. ``status`` is the slice's state where the source
    says it (3GPP: reserved AVAILABLE or live OPERATING); CAMARA's booking event has none."""

    slice_id: Name
    status: Literal["AVAILABLE", "OPERATING"] | None = None
    service_time: ServiceTime | None = None
    service_area: dict[str, Any] | None = None  # CAMARA Area (CIRCLE/POLYGON), as sent
    qos_profile: dict[str, Any] | None = None  # CAMARA sliceQosProfile or 3GPP ServiceProfile
    source_event: SourceEvent


class SiteDegraded(EventData):
    """A cluster's network cannot meet its latency/throughput promise. The degradation lapses
    after ``expires_in_s`` (None: the consumer's configured default) unless renewed, so a lost
    "restored" notification cannot strand a site."""

    cluster: Name
    cause: Text
    metrics: dict[str, Metric] = Field(default_factory=dict, max_length=64)
    expires_in_s: int | None = Field(default=None, strict=True, ge=1, le=MAX_DEGRADATION_S)
    source_event: SourceEvent


class SiteRestored(EventData):
    cluster: Name
    cause: Text
    metrics: dict[str, Metric] = Field(default_factory=dict, max_length=64)
    source_event: SourceEvent


class QosChanged(EventData):
    session_id: Annotated[str, Field(min_length=1, max_length=256)]
    available: bool
    info: Text | None = None  # why it became unavailable, e.g. DURATION_EXPIRED
    cluster: Name | None = None  # the site the QoS session serves, from its subscription
    source_event: SourceEvent


class RoamingChanged(EventData):
    device: dict[str, Any] | None = None  # CAMARA Device identifiers, as sent
    roaming: bool
    country_code: int | None = Field(default=None, strict=True, ge=0, le=999)  # the MCC
    countries: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = Field(
        default_factory=list, max_length=16
    )  # ISO 3166-1 alpha-2, comparable with a cluster's jurisdiction
    subscription_id: Annotated[str, Field(max_length=256)] | None = None
    source_event: SourceEvent


class SubscriptionChanged(EventData):
    """A CAMARA subscription started, changed state or ended: an ended or inactive network-quality
    subscription means its site's health is no longer being watched."""

    subscription: Name  # the template's subscription name
    subscription_id: Annotated[str, Field(min_length=1, max_length=256)]
    state: Literal["started", "updated", "ended"]
    # initiationReason, updateReason or terminationReason, e.g. SUBSCRIPTION_EXPIRED
    reason: Annotated[str, Field(max_length=64)] | None = None
    description: Text | None = None
    source_event: SourceEvent


MODELS: Final[dict[str, type[EventData]]] = {
    SLICE_BOOKED: SliceBooked,
    SITE_DEGRADED: SiteDegraded,
    SITE_RESTORED: SiteRestored,
    QOS_CHANGED: QosChanged,
    ROAMING_CHANGED: RoamingChanged,
    SUBSCRIPTION_CHANGED: SubscriptionChanged,
}
