"""CAMARA notifications (CloudEvents 1.0, structured mode) and their mapping to Tollgate's events.

Every shape here is read from the official API definitions (copies and provenance in
tests/camara_specs/, where tests validate each model against its document's schema and feed the
documents' own example events through ``from_camara``):

- network-slice-booking v0 (wip, NetworkSliceBooking@d21ca98): ``status-changed`` carries the
  booked slice's ``SliceInfo`` (sliceId, serviceTime, serviceArea, sliceQosProfile) and no status
  field: it announces the booking. The API sends no deletion event (the consumer deletes a slice).
- connectivity-insights-subscriptions v0 (wip, ConnectivityInsights@fe98a77): ``network-quality``
  (NetworkQualityInsight) and Commonalities' ``subscription-started/-updated/-ended``.
- quality-on-demand v1 (wip, QualityOnDemand@e29b052): ``qos-status-changed`` only; QoD sessions
  are implicit subscriptions and send no lifecycle events.
- device-roaming-status-subscriptions v0 (0.7.0, DeviceStatus@a628ed7): ``roaming-status``,
  ``roaming-on``, ``roaming-off``, ``roaming-change-country`` and ``subscription-ends``.

Fields we do not read are ignored (CAMARA adds fields between versions); fields we read are
checked as strictly as the documents say, and any problem refuses the whole notification."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from events import network
from events.adapter import Mapped, NetworkEventError, mapped, parse
from events.fields import OpenEventData, Timestamp

EVENT_TYPE: Final = re.compile(
    r"^org\.camaraproject\.(?P<api>[a-z0-9-]+)\.(?P<version>v\d+)\.(?P<event>[a-z0-9-]+)$"
)
# CloudEvents ids and sources key deduplication records and the ids of the events published for
# them: longer than this many UTF-8 bytes they would overflow a store key, so they are refused.
MAX_ATTRIBUTE_BYTES: Final = 256


def _short_attribute(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size > MAX_ATTRIBUTE_BYTES:
        raise ValueError(
            f"is {size} bytes long; CloudEvent ids and sources are at most "
            f"{MAX_ATTRIBUTE_BYTES} bytes (UTF-8) here"
        )
    return value


Attribute = Annotated[str, Field(min_length=1), AfterValidator(_short_attribute)]
Id = Annotated[str, Field(min_length=1, max_length=256)]
Uuid = Annotated[
    str,
    Field(
        max_length=36,
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    ),
]
Description = Annotated[str, Field(max_length=512)]


RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$"
)


def _text(value: Any) -> Any:
    # A missing offset is let through so that the timezone check names it.
    if not isinstance(value, str) or not RFC3339.match(value):
        raise ValueError("an RFC 3339 date-time string is needed, e.g. 2026-12-31T23:59:59Z")
    return value


# A JSON date-time string with its time zone (pydantic alone would also take epoch numbers).
DateTime = Annotated[Timestamp, BeforeValidator(_text)]


class CamaraData(OpenEventData):
    """Data from a CAMARA document: no field is nullable there (OpenAPI 3.0 without
    ``nullable``), so an explicit null is refused; an absent optional field is fine."""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, value: Any) -> Any:
        if isinstance(value, dict):
            nulls = [k for k, v in value.items() if v is None and k in cls.model_fields]
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: null is not allowed (omit the field)")
        return value


@dataclass(frozen=True)
class SubscriptionBinding:
    """A CAMARA subscription the template declares (``camara.subscriptions``): which API and
    event types it delivers and which cluster its notifications are about."""

    name: str
    api: str
    event_types: frozenset[str]
    cluster: str
    degradation_s: int | None = None  # how long a degradation holds unless renewed


class CamaraEnvelope(CamaraData):
    """The CAMARA notification envelope (Commonalities' CloudEvent). ``time`` is mandatory in
    CAMARA (optional in CloudEvents); every event Tollgate reads carries ``data``. Extension
    attributes are allowed and ignored."""

    specversion: Literal["1.0"]
    id: Attribute
    source: Attribute
    type: Annotated[str, Field(min_length=1, max_length=512)]
    time: DateTime
    datacontenttype: Literal["application/json"] | None = None
    data: dict[str, Any]


def envelope_of(body: Any) -> CamaraEnvelope:
    if not isinstance(body, dict):
        raise NetworkEventError("a CAMARA notification is a JSON object (a structured CloudEvent)")
    return parse(CamaraEnvelope, body, "CloudEvent")


Handler = Callable[[CamaraEnvelope, SubscriptionBinding], list[Mapped]]


# -- network-slice-booking v0 ---------------------------------------------------------------


class TimePeriod(CamaraData):
    """A start and, optionally, an end: without ``endDate`` the period has no ending date."""

    startDate: DateTime
    endDate: DateTime | None = None


Number = StrictFloat  # any JSON number (an integer too), never a numeric string


class Point(CamaraData):
    latitude: Annotated[Number, Field(ge=-90, le=90)]
    longitude: Annotated[Number, Field(ge=-180, le=180)]


class Area(CamaraData):
    """``Circle`` (center, radius in metres >= 1) or ``Polygon`` (3 to 15 points)."""

    areaType: Literal["CIRCLE", "POLYGON"]
    center: Point | None = None
    radius: Annotated[Number, Field(ge=1)] | None = None
    boundary: list[Point] | None = Field(default=None, min_length=3, max_length=15)

    @model_validator(mode="after")
    def _complete(self) -> Area:
        if self.areaType == "CIRCLE" and (self.center is None or self.radius is None):
            raise ValueError("a CIRCLE needs center and radius")
        if self.areaType == "POLYGON" and self.boundary is None:
            raise ValueError("a POLYGON needs boundary")
        return self


class Rate(CamaraData):
    value: Annotated[StrictInt, Field(ge=0, le=1024)] | None = None
    unit: Literal["bps", "kbps", "Mbps", "Gbps", "Tbps"] | None = None


class Duration(CamaraData):
    value: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | None = None
    unit: (
        Literal[
            "Days", "Hours", "Minutes", "Seconds", "Milliseconds", "Microseconds", "Nanoseconds"
        ]
        | None
    ) = None


class SliceQosProfile(CamaraData):
    maxNumOfDevices: Annotated[StrictInt, Field(ge=1, le=20)] | None = None
    downStreamRatePerDevice: Rate | None = None
    upStreamRatePerDevice: Rate | None = None
    downStreamDelayBudget: Duration | None = None
    upStreamDelayBudget: Duration | None = None


class SliceInfo(CamaraData):
    sliceId: Uuid
    serviceTime: TimePeriod
    serviceArea: Area
    sliceQosProfile: SliceQosProfile


def _slice_booked(event: CamaraEnvelope, binding: SubscriptionBinding) -> list[Mapped]:
    """The booked slice: its time bounds the bundle's validity and the edge warm-up window,
    its area says which sites serve it."""
    data = parse(SliceInfo, event.data, f"{event.type} data")
    period = data.serviceTime
    booked = parse(
        network.SliceBooked,
        {
            "slice_id": data.sliceId,
            "service_time": {"start": period.startDate, "end": period.endDate},
            "service_area": event.data["serviceArea"],
            "qos_profile": event.data["sliceQosProfile"],
            "source_event": event.type,
        },
        f"{event.type} data",
    )
    return [mapped(network.SLICE_BOOKED, booked, data.sliceId)]


# -- connectivity-insights-subscriptions v0 -------------------------------------------------

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


class AdditionalKpis(CamaraData):
    signalStrength: Literal["excellent", "good", "fair", "poor", "no signal"] | None = None
    connectivityType: Literal["5G-SA", "5G-NSA", "4G", "3G"] | None = None


class NetworkQualityInsight(CamaraData):
    applicationProfileId: Uuid | None = None
    packetDelayBudget: Confidence | None = None
    targetMinDownstreamRate: Confidence | None = None
    targetMinUpstreamRate: Confidence | None = None
    packetlossErrorRate: Confidence | None = None
    jitter: Confidence | None = None
    additionalKpis: AdditionalKpis | None = None

    @model_validator(mode="after")
    def _judged(self) -> NetworkQualityInsight:
        if all(getattr(self, kpi) is None for kpi in KPIS):
            raise ValueError(f"no KPI to judge: expected at least one of {', '.join(KPIS)}")
        return self


def _network_quality(event: CamaraEnvelope, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(NetworkQualityInsight, event.data, f"{event.type} data")
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


# -- quality-on-demand v1 -------------------------------------------------------------------


class QosStatusChanged(CamaraData):
    sessionId: Uuid
    qosStatus: Literal["AVAILABLE", "UNAVAILABLE"]
    statusInfo: Literal["DURATION_EXPIRED", "NETWORK_TERMINATED", "DELETE_REQUESTED"] | None = None


def _qos_status_changed(event: CamaraEnvelope, binding: SubscriptionBinding) -> list[Mapped]:
    data = parse(QosStatusChanged, event.data, f"{event.type} data")
    changed = network.QosChanged(
        session_id=data.sessionId,
        available=data.qosStatus == "AVAILABLE",
        info=data.statusInfo,
        cluster=binding.cluster,
        source_event=event.type,
    )
    return [mapped(network.QOS_CHANGED, changed, data.sessionId)]


# -- device-roaming-status-subscriptions v0 -------------------------------------------------


class DeviceIpv4Addr(CamaraData):
    publicAddress: IPv4Address | None = None
    privateAddress: IPv4Address | None = None
    publicPort: Annotated[StrictInt, Field(ge=0, le=65535)] | None = None

    @model_validator(mode="after")
    def _identifies(self) -> DeviceIpv4Addr:
        if self.publicAddress is None or (self.privateAddress is None and self.publicPort is None):
            raise ValueError("ipv4Address needs publicAddress and privateAddress or publicPort")
        return self


class Device(CamaraData):
    """At least one identifier; kept as sent in Tollgate's event."""

    phoneNumber: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{4,14}$")] | None = None
    networkAccessIdentifier: StrictStr | None = None
    ipv4Address: DeviceIpv4Addr | None = None
    ipv6Address: IPv6Address | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value:
            raise ValueError("a device needs at least one identifier")
        return value


class DeviceEvent(CamaraData):
    """BasicDeviceEventData: roaming-on and roaming-off carry only this."""

    subscriptionId: Id
    device: Device | None = None


class RoamingStatus(DeviceEvent):
    roaming: StrictBool
    countryCode: StrictInt | None = None
    countryName: list[StrictStr] | None = None


class RoamingChangeCountry(DeviceEvent):
    countryCode: StrictInt
    countryName: list[StrictStr]


def _roaming(
    model: type[DeviceEvent], roaming: bool | None = None
) -> Callable[[CamaraEnvelope, SubscriptionBinding], list[Mapped]]:
    """roaming-status says whether the device roams; roaming-on/-off say it by their type; a
    device that changes country while roaming is still roaming."""

    def handle(event: CamaraEnvelope, binding: SubscriptionBinding) -> list[Mapped]:
        data = parse(model, event.data, f"{event.type} data")
        changed = parse(
            network.RoamingChanged,
            {
                "device": event.data.get("device"),
                "roaming": getattr(data, "roaming", roaming),
                "country_code": getattr(data, "countryCode", None),
                "countries": getattr(data, "countryName", None) or [],
                "subscription_id": data.subscriptionId,
                "source_event": event.type,
            },
            f"{event.type} data",
        )
        return [mapped(network.ROAMING_CHANGED, changed, data.subscriptionId)]

    return handle


# -- subscription lifecycle -----------------------------------------------------------------

TerminationReason = Literal[
    "MAX_EVENTS_REACHED",
    "NETWORK_TERMINATED",
    "SUBSCRIPTION_EXPIRED",
    "ACCESS_TOKEN_EXPIRED",
    "SUBSCRIPTION_DELETED",
]


class SubscriptionStarted(CamaraData):
    """Commonalities' SubscriptionStarted."""

    subscriptionId: Id
    initiationReason: Literal["SUBSCRIPTION_CREATED"]
    initiationDescription: Description | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.initiationReason, self.initiationDescription


class SubscriptionUpdated(CamaraData):
    """Commonalities' SubscriptionUpdated."""

    subscriptionId: Id
    updateReason: Literal["SUBSCRIPTION_ACTIVE", "SUBSCRIPTION_INACTIVE"]
    updateDescription: Description | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.updateReason, self.updateDescription


class SubscriptionEnded(CamaraData):
    """Commonalities' SubscriptionEnded; device-roaming-status-subscriptions v0's SubscriptionEnds
    has the same fields (plus the device, which is not read)."""

    subscriptionId: Id
    terminationReason: TerminationReason
    terminationDescription: Description | None = None

    def reason(self) -> tuple[str, str | None]:
        return self.terminationReason, self.terminationDescription


def _lifecycle(
    state: Literal["started", "updated", "ended"],
    model: type[SubscriptionStarted | SubscriptionUpdated | SubscriptionEnded],
) -> Handler:
    def handle(event: CamaraEnvelope, binding: SubscriptionBinding) -> list[Mapped]:
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


# -- what is accepted -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventKind:
    api: str
    handle: Handler
    # Sent on the subscription's own account (lifecycle), whatever event types it subscribed to.
    lifecycle: bool = False


_STARTED: Final = _lifecycle("started", SubscriptionStarted)
_UPDATED: Final = _lifecycle("updated", SubscriptionUpdated)
_ENDED: Final = _lifecycle("ended", SubscriptionEnded)
_NSB: Final = "network-slice-booking"
_CI: Final = "connectivity-insights-subscriptions"
_QOD: Final = "quality-on-demand"
_ROAMING: Final = "device-roaming-status-subscriptions"

# Every accepted type, exactly as the documents spell it: a new API version is a new contract,
# added on purpose.
EVENTS: Final[Mapping[str, EventKind]] = {
    f"org.camaraproject.{_NSB}.v0.status-changed": EventKind(_NSB, _slice_booked),
    f"org.camaraproject.{_CI}.v0.network-quality": EventKind(_CI, _network_quality),
    f"org.camaraproject.{_CI}.v0.subscription-started": EventKind(_CI, _STARTED, True),
    f"org.camaraproject.{_CI}.v0.subscription-updated": EventKind(_CI, _UPDATED, True),
    f"org.camaraproject.{_CI}.v0.subscription-ended": EventKind(_CI, _ENDED, True),
    f"org.camaraproject.{_QOD}.v1.qos-status-changed": EventKind(_QOD, _qos_status_changed),
    f"org.camaraproject.{_ROAMING}.v0.roaming-status": EventKind(_ROAMING, _roaming(RoamingStatus)),
    f"org.camaraproject.{_ROAMING}.v0.roaming-on": EventKind(_ROAMING, _roaming(DeviceEvent, True)),
    f"org.camaraproject.{_ROAMING}.v0.roaming-off": EventKind(
        _ROAMING, _roaming(DeviceEvent, False)
    ),
    f"org.camaraproject.{_ROAMING}.v0.roaming-change-country": EventKind(
        _ROAMING, _roaming(RoamingChangeCountry, True)
    ),
    f"org.camaraproject.{_ROAMING}.v0.subscription-ends": EventKind(_ROAMING, _ENDED, True),
}


def from_camara(body: Any, *, subscription: SubscriptionBinding) -> list[Mapped]:
    """Map one CAMARA notification received for ``subscription``; NetworkEventError says why a
    notification can never be accepted."""
    event = envelope_of(body)
    if EVENT_TYPE.match(event.type) is None:
        raise NetworkEventError(
            f"type {event.type!r} is not a CAMARA event type "
            "(org.camaraproject.<api>.<version>.<event>)"
        )
    kind = EVENTS.get(event.type)
    if kind is None:
        raise NetworkEventError(
            f"unknown CAMARA event type {event.type}; accepted: " + ", ".join(EVENTS)
        )
    if kind.api != subscription.api:
        raise NetworkEventError(
            f"subscription {subscription.name} is to {subscription.api}, "
            f"not {kind.api} (type {event.type})"
        )
    if not kind.lifecycle and event.type not in subscription.event_types:
        raise NetworkEventError(
            f"subscription {subscription.name} does not deliver {event.type}; it delivers "
            + ", ".join(sorted(subscription.event_types))
        )
    return kind.handle(event, subscription)


def subscription_for(
    body: Any, subscriptions: Mapping[str, SubscriptionBinding]
) -> SubscriptionBinding:
    """The one subscription a notification sent to the shared sink belongs to, told by its type.
    Subscriptions sharing a type (one network-quality subscription per edge site) cannot be told
    apart this way: their sinks must name them (``/events/<subscription>``)."""
    event_type = body.get("type") if isinstance(body, dict) else None
    if not isinstance(event_type, str):
        raise NetworkEventError("type: a CAMARA notification needs a string type")
    kind = EVENTS.get(event_type)
    candidates = sorted(
        name
        for name, binding in subscriptions.items()
        if event_type in binding.event_types
        or (kind is not None and kind.lifecycle and binding.api == kind.api)
    )
    if len(candidates) == 1:
        return subscriptions[candidates[0]]
    if not candidates:
        raise NetworkEventError(f"no subscription delivers {event_type}")
    raise NetworkEventError(
        f"{event_type} is delivered by several subscriptions ({', '.join(candidates)}); "
        "their sinks must name them: POST /events/<subscription>"
    )
