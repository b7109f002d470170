"""3GPP notifications and their mapping to Tollgate's events.

- NWDAF analytics (TS 29.520, Nnwdaf_EventsSubscription_Notify): a
  NnwdafEventsSubscriptionNotification whose eventNotifications report USER_DATA_CONGESTION
  (congestInfos: congestion level per network area), NETWORK_PERFORMANCE (nwPerfs: gNB usage
  and success ratios per area) or DN_PERFORMANCE (dnPerfInfos[].dnPerf[]:
  perfData.avePacketDelay per DNAI / application server instance). Each observation is judged
  against operator thresholds; a cluster is degraded when any observation at one of its
  locations is beyond a threshold, restored when all are within.
- Provisioning MnS (TS 28.532, notifyMOICreation) of a NetworkSlice (TS 28.541): a slice booked.

Locations are matched by keys the operator declares per cluster (``sites``):
``dnai:<DNAI>``, ``addr:<application server IP or FQDN>``, ``tai:<mcc>-<mnc>-<tac>``,
``ncgi:<mcc>-<mnc>-<nrCellId>``, ``gnb:<mcc>-<mnc>-<gNBValue>`` (hex in lower case).
Observations at locations no cluster declares are not about us and are skipped."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import Field, StrictInt

from events import network
from events.adapter import Mapped, NetworkEventError, mapped, parse
from events.fields import OpenEventData, Timestamp

T = TypeVar("T")
Percent = Annotated[int, Field(strict=True, ge=1, le=100)]


@dataclass(frozen=True)
class Thresholds:
    """Where a measurement turns a site from healthy to degraded (operator configuration)."""

    packet_delay_ms: int = 20  # DN_PERFORMANCE avePacketDelay above this (edge promises 5-15 ms)
    packet_loss_permille: int = 10  # avgPacketLossRate (tenths of a percent) above this
    congestion_level: int = 3  # USER_DATA_CONGESTION nsi.congLevel at or above this
    usage_percent: int = 90  # NETWORK_PERFORMANCE gNB computing/memory/disk usage at or above
    success_percent: int = 95  # NETWORK_PERFORMANCE active/session/handover ratios below this
    degradation_s: int | None = None  # how long a degradation holds unless renewed


DEFAULT_THRESHOLDS: Final = Thresholds()

# -- TS 29.571 common data ------------------------------------------------------------------


class PlmnId(OpenEventData):
    mcc: Annotated[str, Field(pattern=r"^\d{3}$")]
    mnc: Annotated[str, Field(pattern=r"^\d{2,3}$")]


class Tai(OpenEventData):
    plmnId: PlmnId
    tac: Annotated[str, Field(pattern=r"^([A-Fa-f0-9]{4}|[A-Fa-f0-9]{6})$")]


class Ncgi(OpenEventData):
    plmnId: PlmnId
    nrCellId: Annotated[str, Field(pattern=r"^[A-Fa-f0-9]{9}$")]


class GNbId(OpenEventData):
    bitLength: int = Field(strict=True, ge=22, le=32)
    gNBValue: Annotated[str, Field(pattern=r"^[A-Fa-f0-9]{6,8}$")]


class GlobalRanNodeId(OpenEventData):
    plmnId: PlmnId
    gNbId: GNbId | None = None  # other node kinds (N3IWF, ng-eNB) are not our sites


class NetworkAreaInfo(OpenEventData):
    ncgis: list[Ncgi] | None = Field(default=None, min_length=1)
    gRanNodeIds: list[GlobalRanNodeId] | None = Field(default=None, min_length=1)
    tais: list[Tai] | None = Field(default=None, min_length=1)

    def keys(self) -> Iterator[str]:
        for tai in self.tais or ():
            yield f"tai:{tai.plmnId.mcc}-{tai.plmnId.mnc}-{tai.tac}".lower()
        for ncgi in self.ncgis or ():
            yield f"ncgi:{ncgi.plmnId.mcc}-{ncgi.plmnId.mnc}-{ncgi.nrCellId}".lower()
        for node in self.gRanNodeIds or ():
            if node.gNbId is not None:
                plmn = node.plmnId
                yield f"gnb:{plmn.mcc}-{plmn.mnc}-{node.gNbId.gNBValue}".lower()


class TimeWindow(OpenEventData):
    startTime: Timestamp
    stopTime: Timestamp


# -- TS 29.520 analytics --------------------------------------------------------------------


class ThresholdLevel(OpenEventData):
    congLevel: StrictInt | None = Field(default=None, ge=0)


class CongestionInfo(OpenEventData):
    congType: Literal["USER_PLANE", "CONTROL_PLANE", "USER_AND_CONTROL_PLANE"]
    timeIntev: TimeWindow
    nsi: ThresholdLevel
    confidence: StrictInt | None = Field(default=None, ge=0)


class UserDataCongestionInfo(OpenEventData):
    networkArea: NetworkAreaInfo
    congestionInfo: CongestionInfo


USAGE_TYPES: Final = ("GNB_COMPUTING_USAGE", "GNB_MEMORY_USAGE", "GNB_DISK_USAGE")
RATIO_TYPES: Final = ("GNB_ACTIVE_RATIO", "SESS_SUCC_RATIO", "HO_SUCC_RATIO")


class NetworkPerfInfo(OpenEventData):
    networkArea: NetworkAreaInfo | None = None
    nwPerfType: Literal[
        "GNB_ACTIVE_RATIO",
        "GNB_COMPUTING_USAGE",
        "GNB_MEMORY_USAGE",
        "GNB_DISK_USAGE",
        "NUM_OF_UE",
        "SESS_SUCC_RATIO",
        "HO_SUCC_RATIO",
    ]
    relativeRatio: Percent | None = None
    absoluteNum: StrictInt | None = Field(default=None, ge=0)


class IpAddr(OpenEventData):
    ipv4Addr: str | None = None
    ipv6Addr: str | None = None


class AddrFqdn(OpenEventData):
    ipAddr: IpAddr | None = None
    fqdn: str | None = None

    def keys(self) -> Iterator[str]:
        for value in (self.ipAddr and self.ipAddr.ipv4Addr, self.ipAddr and self.ipAddr.ipv6Addr):
            if value:
                yield f"addr:{value}"
        if self.fqdn:
            yield f"addr:{self.fqdn.lower()}"


class PerfData(OpenEventData):
    avePacketDelay: StrictInt | None = Field(default=None, ge=1)  # ms (PacketDelBudget)
    maxPacketDelay: StrictInt | None = Field(default=None, ge=1)
    avgPacketLossRate: StrictInt | None = Field(default=None, ge=0, le=1000)  # tenths of %
    maxPacketLossRate: StrictInt | None = Field(default=None, ge=0, le=1000)


class DnPerf(OpenEventData):
    appServerInsAddr: AddrFqdn | None = None
    dnai: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    perfData: PerfData


class DnPerfInfo(OpenEventData):
    appId: str | None = None
    dnn: str | None = None
    dnPerf: list[DnPerf] = Field(min_length=1)


class EventNotification(OpenEventData):
    event: Annotated[str, Field(min_length=1, max_length=64)]  # NwdafEvent, an open enumeration
    timeStampGen: Timestamp | None = None
    congestInfos: list[UserDataCongestionInfo] | None = Field(default=None, min_length=1)
    nwPerfs: list[NetworkPerfInfo] | None = Field(default=None, min_length=1)
    dnPerfInfos: list[DnPerfInfo] | None = Field(default=None, min_length=1)


class NnwdafEventsSubscriptionNotification(OpenEventData):
    subscriptionId: Annotated[str, Field(min_length=1, max_length=256)]
    # Absent when the notification only reports the subscription's termination (termCause).
    eventNotifications: list[EventNotification] | None = Field(default=None, min_length=1)


@dataclass
class _Site:
    """What one notification says about one cluster."""

    events: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, network.Metric] = field(default_factory=dict)


@dataclass
class _Judge:
    sites: Mapping[str, str]
    thresholds: Thresholds
    seen: dict[str, _Site] = field(default_factory=dict)

    def observe(
        self, keys: Iterator[str], event: str, metric: str, value: int, problem: str | None
    ) -> None:
        """Record one measurement at every cluster one of ``keys`` belongs to."""
        for key in keys:
            cluster = self.sites.get(key)
            if cluster is None:
                continue
            site = self.seen.setdefault(cluster, _Site())
            site.events.add(event)
            site.metrics[f"{metric}@{key}"] = value
            if problem is not None:
                site.problems.append(f"{problem} at {key}")

    def congestion(self, info: UserDataCongestionInfo) -> None:
        level = info.congestionInfo.nsi.congLevel
        if level is None:  # a report without a congestion level says nothing we can judge
            return
        limit = self.thresholds.congestion_level
        kind = info.congestionInfo.congType
        problem = f"{kind} congestion level {level} >= {limit}" if level >= limit else None
        self.observe(info.networkArea.keys(), "USER_DATA_CONGESTION", "congLevel", level, problem)

    def performance(self, perf: NetworkPerfInfo) -> None:
        ratio = perf.relativeRatio
        if perf.networkArea is None or ratio is None or perf.nwPerfType == "NUM_OF_UE":
            return  # UE counts and absolute numbers have no healthy range to judge against
        kind = perf.nwPerfType
        problem = None
        if kind in USAGE_TYPES and ratio >= self.thresholds.usage_percent:
            problem = f"{kind} {ratio}% >= {self.thresholds.usage_percent}%"
        if kind in RATIO_TYPES and ratio < self.thresholds.success_percent:
            problem = f"{kind} {ratio}% < {self.thresholds.success_percent}%"
        self.observe(perf.networkArea.keys(), "NETWORK_PERFORMANCE", kind, ratio, problem)

    def dn_performance(self, perf: DnPerf) -> None:
        keys = [f"dnai:{perf.dnai}"] if perf.dnai else []
        keys += perf.appServerInsAddr.keys() if perf.appServerInsAddr else []
        data, limits = perf.perfData, self.thresholds
        if data.avePacketDelay is not None:
            delay = data.avePacketDelay
            problem = (
                f"avePacketDelay {delay} ms > {limits.packet_delay_ms} ms"
                if delay > limits.packet_delay_ms
                else None
            )
            self.observe(iter(keys), "DN_PERFORMANCE", "avePacketDelay", delay, problem)
        if data.avgPacketLossRate is not None:
            loss = data.avgPacketLossRate
            problem = (
                f"avgPacketLossRate {loss}‰ > {limits.packet_loss_permille}‰"
                if loss > limits.packet_loss_permille
                else None
            )
            self.observe(iter(keys), "DN_PERFORMANCE", "avgPacketLossRate", loss, problem)

    def verdicts(self) -> list[Mapped]:
        out = []
        for cluster, site in self.seen.items():
            source = "3gpp.nnwdaf." + "+".join(sorted(site.events))
            if site.problems:
                degraded = network.SiteDegraded(
                    cluster=cluster,
                    cause="NWDAF: " + "; ".join(site.problems),
                    metrics=site.metrics,
                    expires_in_s=self.thresholds.degradation_s,
                    source_event=source,
                )
                out.append(mapped(network.SITE_DEGRADED, degraded, cluster))
            else:
                restored = network.SiteRestored(
                    cluster=cluster,
                    cause="NWDAF: all analytics within thresholds",
                    metrics=site.metrics,
                    source_event=source,
                )
                out.append(mapped(network.SITE_RESTORED, restored, cluster))
        return out


def from_nwdaf(
    body: Any, *, sites: Mapping[str, str], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Mapped]:
    """One degraded or restored event per cluster the notification reports on, or none."""
    notification = parse(NnwdafEventsSubscriptionNotification, body, "NWDAF notification")
    judge = _Judge(sites, thresholds)
    for index, item in enumerate(notification.eventNotifications or ()):
        where = f"eventNotifications.{index}"
        if item.event == "USER_DATA_CONGESTION":
            for congestion in _required(item.congestInfos, where, item.event, "congestInfos"):
                judge.congestion(congestion)
        elif item.event == "NETWORK_PERFORMANCE":
            for perf in _required(item.nwPerfs, where, item.event, "nwPerfs"):
                judge.performance(perf)
        elif item.event == "DN_PERFORMANCE":
            for info in _required(item.dnPerfInfos, where, item.event, "dnPerfInfos"):
                for dn_perf in info.dnPerf:
                    judge.dn_performance(dn_perf)
        else:
            raise NetworkEventError(
                f"{where}.event: NWDAF event {item.event} is not accepted here; "
                "accepted: USER_DATA_CONGESTION, NETWORK_PERFORMANCE, DN_PERFORMANCE"
            )
    return judge.verdicts()


def _required(items: list[T] | None, where: str, event: str, name: str) -> list[T]:
    if items is None:
        raise NetworkEventError(f"{where}: a {event} notification needs {name}")
    return items


# -- TS 28.532 provisioning notifications ---------------------------------------------------


class NotifyMoiCreation(OpenEventData):
    href: Annotated[str, Field(min_length=1, max_length=2048)]
    notificationId: StrictInt
    notificationType: Literal["notifyMOICreation"]
    eventTime: Timestamp
    systemDN: Annotated[str, Field(min_length=1, max_length=1024)]
    objectClass: Annotated[str, Field(min_length=1, max_length=128)]
    objectInstance: Annotated[str, Field(min_length=1, max_length=1024)]
    attributeList: dict[str, Any] | None = None
    sourceIndicator: (
        Literal["RESOURCE_OPERATION", "MANAGEMENT_OPERATION", "SON_OPERATION", "UNKNOWN"] | None
    ) = None


MOI_CREATION: Final = "3gpp.notifyMOICreation"


def from_moi_creation(body: Any) -> list[Mapped]:
    """A NetworkSlice instance created: booked, OPERATING when it is already enabled and unlocked
    (TS 28.541 operationalState/administrativeState), AVAILABLE otherwise."""
    notification = parse(NotifyMoiCreation, body, "notifyMOICreation")
    if notification.objectClass != "NetworkSlice":
        raise NetworkEventError(
            f"objectClass {notification.objectClass} is not accepted here; only NetworkSlice"
        )
    last = notification.objectInstance.rsplit(",", 1)[-1]
    rdn_class, _, slice_id = last.partition("=")
    if rdn_class.strip() != "NetworkSlice" or not slice_id.strip():
        raise NetworkEventError(
            f"objectInstance {notification.objectInstance!r} does not end in NetworkSlice=<id>"
        )
    attributes = notification.attributeList or {}
    enabled = attributes.get("operationalState") == "ENABLED"
    unlocked = attributes.get("administrativeState") == "UNLOCKED"
    profiles = attributes.get("serviceProfileList")
    profile = profiles[0] if isinstance(profiles, list) and profiles else None
    booked = parse(
        network.SliceBooked,
        {
            "slice_id": slice_id.strip(),
            "status": "OPERATING" if enabled and unlocked else "AVAILABLE",
            "qos_profile": profile,
            "source_event": MOI_CREATION,
        },
        "notifyMOICreation",
    )
    return [mapped(network.SLICE_BOOKED, booked, booked.slice_id)]
