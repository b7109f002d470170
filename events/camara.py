"""CAMARA notifications (CloudEvents 1.0, structured mode) and their mapping to Tollgate's events.

Shapes follow the CAMARA API definitions: the envelope and the subscription lifecycle data from
Commonalities' CAMARA_event_common.yaml; network-quality from connectivity-insights-subscriptions
(v0); roaming-status from device-roaming-status-subscriptions (v0); qos-status-changed from
quality-on-demand (v1); status-changed from network-slice-booking (v0: sliceId, serviceTime,
serviceArea, sliceQosProfile and the slice lifecycle status PENDING/AVAILABLE/OPERATING/DELETED).
Fields we do not read are ignored (CAMARA adds fields between versions); fields we read are
checked strictly, and any problem refuses the whole notification."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from events import network
from events.adapter import Mapped, NetworkEventError, mapped, parse
from events.fields import OpenEventData, Timestamp

EVENT_TYPE: Final = re.compile(
    r"^org\.camaraproject\.(?P<api>[a-z0-9-]+)\.(?P<version>v\d+)\.(?P<event>[a-z0-9-]+)$"
)
Id = Annotated[str, Field(min_length=1, max_length=256)]


@dataclass(frozen=True)
class SubscriptionBinding:
    """A CAMARA subscription the template declares (``camara.subscriptions``): which API and
    event types it delivers and which cluster its notifications are about."""

    name: str
    api: str
    event_types: frozenset[str]
    cluster: str
    degradation_s: int | None = None  # how long a degradation holds unless renewed


class CamaraNotification(OpenEventData):
    """The CAMARA notification envelope. ``time`` is mandatory in CAMARA (optional in CloudEvents);
    extension attributes are allowed and ignored."""

    specversion: Literal["1.0"]
    id: Id
    source: Annotated[str, Field(min_length=1, max_length=2048)]
    type: Annotated[str, Field(min_length=1, max_length=512)]
    time: Timestamp
    datacontenttype: Literal["application/json"] | None = None
    data: dict[str, Any]


Handler = Callable[[CamaraNotification, SubscriptionBinding], list[Mapped]]


# -- network-slice-booking ------------------------------------------------------------------


class TimePeriod(OpenEventData):
    startDate: Timestamp
    endDate: Timestamp


class Point(OpenEventData):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Area(OpenEventData):
    areaType: Literal["CIRCLE", "POLYGON"]
    center: Point | None = None
    radius: float | None = Field(default=None, ge=1)
    boundary: list[Point] | None = Field(default=None, min_length=3, max_length=15)

    @model_validator(mode="after")
    def _complete(self) -> Area:
        if self.areaType == "CIRCLE" and (self.center is None or self.radius is None):
            raise ValueError("a CIRCLE needs center and radius")
        if self.areaType == "POLYGON" and self.boundary is None:
            raise ValueError("a POLYGON needs boundary")
        return self


class SliceStatusChanged(OpenEventData):
    sliceId: Id
    status: Literal["PENDING", "AVAILABLE", "OPERATING", "DELETED"]
    serviceTime: TimePeriod | None = None
    serviceArea: Area | None = None
    sliceQosProfile: dict[str, Any] | None = None


def _slice_status_changed(event: CamaraNotification, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(SliceStatusChanged, event.data, f"{event.type} data")
    if data.status == "PENDING":  # requested, not yet reserved: nothing to grant or release
        return []
    if data.status == "DELETED":
        released = network.SliceReleased(slice_id=data.sliceId, source_event=event.type)
        return [mapped(network.SLICE_RELEASED, released, data.sliceId)]
    period = data.serviceTime
    booked = parse(
        network.SliceBooked,
        {
            "slice_id": data.sliceId,
            "status": data.status,
            "service_time": period and {"start": period.startDate, "end": period.endDate},
            "service_area": data.serviceArea and data.serviceArea.model_dump(exclude_none=True),
            "qos_profile": data.sliceQosProfile,
            "source_event": event.type,
        },
        f"{event.type} data",
    )
    return [mapped(network.SLICE_BOOKED, booked, data.sliceId)]


# -- connectivity-insights-subscriptions ----------------------------------------------------

MEETS: Final = "meets the application requirements"
UNABLE: Final = "unable to meet the application requirements"
Confidence = Literal[
    "meets the application requirements", "unable to meet the application requirements"
]
KPIS: Final = (
    "packetDelayBudget",
    "targetMinDownstreamRate",
    "targetMinUpstreamRate",
    "packetlossErrorRate",
    "jitter",
)


class AdditionalKpis(OpenEventData):
    signalStrength: Literal["excellent", "good", "fair", "poor", "no signal"] | None = None
    connectivityType: Literal["5G-SA", "5G-NSA", "4G", "3G"] | None = None


class NetworkQuality(OpenEventData):
    applicationProfileId: str | None = None
    packetDelayBudget: Confidence | None = None
    targetMinDownstreamRate: Confidence | None = None
    targetMinUpstreamRate: Confidence | None = None
    packetlossErrorRate: Confidence | None = None
    jitter: Confidence | None = None
    additionalKpis: AdditionalKpis | None = None

    @model_validator(mode="after")
    def _judged(self) -> NetworkQuality:
        if all(getattr(self, kpi) is None for kpi in KPIS):
            raise ValueError(f"no KPI to judge: expected at least one of {', '.join(KPIS)}")
        return self


def _network_quality(event: CamaraNotification, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(NetworkQuality, event.data, f"{event.type} data")
    judged = {kpi: getattr(data, kpi) for kpi in KPIS if getattr(data, kpi) is not None}
    metrics: dict[str, network.Metric] = {
        kpi: "meets" if verdict == MEETS else "unable" for kpi, verdict in judged.items()
    }
    if data.additionalKpis is not None:
        metrics.update(data.additionalKpis.model_dump(exclude_none=True))
    unmet = [kpi for kpi, verdict in judged.items() if verdict == UNABLE]
    if unmet:
        degraded = network.SiteDegraded(
            cluster=binding.cluster,
            cause=f"CAMARA network quality: unable to meet {', '.join(unmet)}",
            metrics=metrics,
            expires_in_s=binding.degradation_s,
            source_event=event.type,
        )
        return [mapped(network.SITE_DEGRADED, degraded, binding.cluster)]
    restored = network.SiteRestored(
        cluster=binding.cluster,
        cause="CAMARA network quality: meets the application requirements",
        metrics=metrics,
        source_event=event.type,
    )
    return [mapped(network.SITE_RESTORED, restored, binding.cluster)]


# -- quality-on-demand ----------------------------------------------------------------------


class QosStatusChanged(OpenEventData):
    sessionId: Id
    qosStatus: Literal["AVAILABLE", "UNAVAILABLE"]
    statusInfo: Literal["DURATION_EXPIRED", "NETWORK_TERMINATED", "DELETE_REQUESTED"] | None = None


def _qos_status_changed(event: CamaraNotification, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(QosStatusChanged, event.data, f"{event.type} data")
    changed = network.QosChanged(
        session_id=data.sessionId,
        available=data.qosStatus == "AVAILABLE",
        info=data.statusInfo,
        cluster=binding.cluster,
        source_event=event.type,
    )
    return [mapped(network.QOS_CHANGED, changed, data.sessionId)]


# -- device-roaming-status-subscriptions ----------------------------------------------------


class RoamingStatus(OpenEventData):
    subscriptionId: Id
    device: dict[str, Any] | None = None
    roaming: StrictBool
    countryCode: StrictInt | None = None
    countryName: list[str] | None = None


def _roaming_status(event: CamaraNotification, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(RoamingStatus, event.data, f"{event.type} data")
    changed = parse(
        network.RoamingChanged,
        {
            "device": data.device,
            "roaming": data.roaming,
            "country_code": data.countryCode,
            "countries": data.countryName or [],
            "subscription_id": data.subscriptionId,
            "source_event": event.type,
        },
        f"{event.type} data",
    )
    return [mapped(network.ROAMING_CHANGED, changed, data.subscriptionId)]


# -- subscription lifecycle (every API with explicit subscriptions) -------------------------


class SubscriptionStarted(OpenEventData):
    subscriptionId: Id
    initiationReason: Literal["SUBSCRIPTION_CREATED"]
    initiationDescription: str | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.initiationReason, self.initiationDescription


class SubscriptionUpdated(OpenEventData):
    subscriptionId: Id
    updateReason: Literal["SUBSCRIPTION_ACTIVE", "SUBSCRIPTION_INACTIVE"]
    updateDescription: str | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.updateReason, self.updateDescription


class SubscriptionEnded(OpenEventData):
    subscriptionId: Id
    terminationReason: Literal[
        "MAX_EVENTS_REACHED",
        "NETWORK_TERMINATED",
        "SUBSCRIPTION_EXPIRED",
        "ACCESS_TOKEN_EXPIRED",
        "SUBSCRIPTION_DELETED",
    ]
    terminationDescription: str | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.terminationReason, self.terminationDescription


def _lifecycle(
    state: Literal["started", "updated", "ended"],
    model: type[SubscriptionStarted | SubscriptionUpdated | SubscriptionEnded],
) -> Handler:
    def handle(event: CamaraNotification, binding: SubscriptionBinding) -> list[Mapped]:
        data = parse(model, event.data, f"{event.type} data")
        reason, description = data.reason()
        changed = parse(
            network.SubscriptionChanged,
            {
                "subscription": binding.name,
                "subscription_id": data.subscriptionId,
                "state": state,
                "reason": reason,
                "description": description,
                "source_event": event.type,
            },
            f"{event.type} data",
        )
        return [mapped(network.SUBSCRIPTION_CHANGED, changed, binding.name)]

    return handle


# Keyed by "<api>.<version>.<event>": a new API version is a new contract, added on purpose.
HANDLERS: Final[Mapping[str, Handler]] = {
    "network-slice-booking.v0.status-changed": _slice_status_changed,
    "connectivity-insights-subscriptions.v0.network-quality": _network_quality,
    "quality-on-demand.v1.qos-status-changed": _qos_status_changed,
    "device-roaming-status-subscriptions.v0.roaming-status": _roaming_status,
}
# Lifecycle events carry Commonalities' data whatever the API; "subscription-ends" is the name
# older API versions (e.g. connectivity-insights-subscriptions v0) gave to "subscription-ended".
LIFECYCLE: Final[Mapping[str, Handler]] = {
    "subscription-started": _lifecycle("started", SubscriptionStarted),
    "subscription-updated": _lifecycle("updated", SubscriptionUpdated),
    "subscription-ended": _lifecycle("ended", SubscriptionEnded),
    "subscription-ends": _lifecycle("ended", SubscriptionEnded),
}


def from_camara(envelope: Any, *, subscription: SubscriptionBinding) -> list[Mapped]:
    """Map one CAMARA notification received for ``subscription``; NetworkEventError says why a
    notification can never be accepted."""
    if not isinstance(envelope, dict):
        raise NetworkEventError("a CAMARA notification is a JSON object (a structured CloudEvent)")
    event = parse(CamaraNotification, envelope, "CloudEvent")
    match = EVENT_TYPE.match(event.type)
    if match is None:
        raise NetworkEventError(
            f"type {event.type!r} is not a CAMARA event type "
            "(org.camaraproject.<api>.<version>.<event>)"
        )
    api, version, name = match.group("api", "version", "event")
    lifecycle = LIFECYCLE.get(name)
    if lifecycle is not None:
        if api != subscription.api:
            raise NetworkEventError(
                f"subscription {subscription.name} is to {subscription.api}, "
                f"not {api} (type {event.type})"
            )
        return lifecycle(event, subscription)
    if event.type not in subscription.event_types:
        raise NetworkEventError(
            f"subscription {subscription.name} does not deliver {event.type}; it delivers "
            + ", ".join(sorted(subscription.event_types))
        )
    handler = HANDLERS.get(f"{api}.{version}.{name}")
    if handler is None:
        raise NetworkEventError(
            f"unknown CAMARA event type {event.type}; accepted: "
            + ", ".join(f"org.camaraproject.{key}" for key in HANDLERS)
            + " and the subscription-started/updated/ended lifecycle events"
        )
    return handler(event, subscription)


def subscription_for(
    envelope: Any, subscriptions: Mapping[str, SubscriptionBinding]
) -> SubscriptionBinding:
    """The one subscription a notification sent to the shared sink belongs to, told by its type.
    Subscriptions sharing a type (one network-quality subscription per edge site) cannot be told
    apart this way: their sinks must name them (``/events/<subscription>``)."""
    event_type = envelope.get("type") if isinstance(envelope, dict) else None
    if not isinstance(event_type, str):
        raise NetworkEventError("type: a CAMARA notification needs a string type")
    match = EVENT_TYPE.match(event_type)
    lifecycle_api = match.group("api") if match and match.group("event") in LIFECYCLE else None
    candidates = sorted(
        name
        for name, binding in subscriptions.items()
        if event_type in binding.event_types or binding.api == lifecycle_api
    )
    if len(candidates) == 1:
        return subscriptions[candidates[0]]
    if not candidates:
        raise NetworkEventError(f"no subscription delivers {event_type}")
    raise NetworkEventError(
        f"{event_type} is delivered by several subscriptions ({', '.join(candidates)}); "
        "their sinks must name them: POST /events/<subscription>"
    )
