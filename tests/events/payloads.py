"""Notifications as operators' systems send them, built from the CAMARA and 3GPP field lists.

Each builder returns a fresh dict, so a test can break one field without touching the others."""

from __future__ import annotations

from typing import Any

from events.camara import SubscriptionBinding

SOURCE = "https://notifications.demo-telco.example/camara"
CI = "org.camaraproject.connectivity-insights-subscriptions.v0"
NSB = "org.camaraproject.network-slice-booking.v0"
QOD = "org.camaraproject.quality-on-demand.v1"
ROAMING = "org.camaraproject.device-roaming-status-subscriptions.v0"
MEETS = "meets the application requirements"
UNABLE = "unable to meet the application requirements"

LYON = SubscriptionBinding(
    name="quality-edge-lyon-5g-1",
    api="connectivity-insights-subscriptions",
    event_types=frozenset({f"{CI}.network-quality"}),
    cluster="edge-lyon-5g-1",
    degradation_s=600,
)
MARSEILLE = SubscriptionBinding(
    name="quality-edge-marseille-5g-1",
    api="connectivity-insights-subscriptions",
    event_types=frozenset({f"{CI}.network-quality"}),
    cluster="edge-marseille-5g-1",
)
SLICES = SubscriptionBinding(
    name="slice-booking",
    api="network-slice-booking",
    event_types=frozenset({f"{NSB}.status-changed"}),
    cluster="regional-paris-1",
)
QOS = SubscriptionBinding(
    name="qod-edge-lyon",
    api="quality-on-demand",
    event_types=frozenset({f"{QOD}.qos-status-changed"}),
    cluster="edge-lyon-5g-1",
)
ROAMING_SUB = SubscriptionBinding(
    name="roaming-fleet",
    api="device-roaming-status-subscriptions",
    event_types=frozenset({f"{ROAMING}.roaming-status"}),
    cluster="regional-paris-1",
)
BINDINGS = {b.name: b for b in (LYON, MARSEILLE, SLICES, QOS, ROAMING_SUB)}


def envelope(event_type: str, data: dict[str, Any], event_id: str = "5f8e0a8c-1") -> dict[str, Any]:
    return {
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "time": "2026-11-26T21:15:08.312Z",
        "data": data,
    }


SLICE_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def slice_booking(
    slice_id: str = SLICE_ID,
    start: str = "2026-12-01T08:00:00Z",
    end: str | None = "2026-12-31T20:00:00Z",
    event_id: str = "nsb-7781",
) -> dict[str, Any]:
    """network-slice-booking v0 status-changed: the booked slice's SliceInfo."""
    service_time = {"startDate": start} | ({"endDate": end} if end is not None else {})
    return envelope(
        f"{NSB}.status-changed",
        {
            "sliceId": slice_id,
            "serviceTime": service_time,
            "serviceArea": {
                "areaType": "CIRCLE",
                "center": {"latitude": 45.754114, "longitude": 4.860374},
                "radius": 800,
            },
            "sliceQosProfile": {
                "maxNumOfDevices": 5,
                "downStreamRatePerDevice": {"value": 100, "unit": "Mbps"},
                "upStreamRatePerDevice": {"value": 20, "unit": "Mbps"},
                "downStreamDelayBudget": {"value": 12, "unit": "Milliseconds"},
                "upStreamDelayBudget": {"value": 12, "unit": "Milliseconds"},
            },
        },
        event_id=event_id,
    )


def network_quality(**verdicts: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "applicationProfileId": "c7a3f2de-8f0e-4c4e-9d7b-2f7a1c0f6a11",
        "packetDelayBudget": MEETS,
        "targetMinDownstreamRate": MEETS,
        "targetMinUpstreamRate": MEETS,
        "packetlossErrorRate": MEETS,
        "jitter": MEETS,
        "additionalKpis": {"signalStrength": "good", "connectivityType": "5G-SA"},
        **verdicts,
    }
    return envelope(f"{CI}.network-quality", data, event_id="ci-0001")


def qos_status(
    status: str = "UNAVAILABLE", info: str | None = "DURATION_EXPIRED"
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sessionId": "a9b2c7d4-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
        "qosStatus": status,
    }
    if info is not None:
        data["statusInfo"] = info
    return envelope(f"{QOD}.qos-status-changed", data, event_id="qod-4411")


def roaming_status(roaming: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "subscriptionId": "qs15-h556-rt89-1298",
        "device": {"phoneNumber": "+33612345678"},
        "roaming": roaming,
    }
    if roaming:
        data.update(countryCode=222, countryName=["IT"])
    return envelope(f"{ROAMING}.roaming-status", data, event_id="roam-9")


def lifecycle(api_type: str, event: str, **data: Any) -> dict[str, Any]:
    return envelope(
        f"{api_type}.{event}", {"subscriptionId": "ci-sub-lyon-1", **data}, event_id=f"lc-{event}"
    )


# -- 3GPP -----------------------------------------------------------------------------------

PLMN = {"mcc": "208", "mnc": "01"}
SITES = {
    "dnai:edge-lyon-1": "edge-lyon-5g-1",
    "addr:10.20.30.40": "edge-marseille-5g-1",
    "tai:208-01-00a1b2": "edge-lyon-5g-1",
    "ncgi:208-01-00012a00f": "edge-marseille-5g-1",
    "gnb:208-01-0001a2": "edge-marseille-5g-1",
}


def nwdaf(*notifications: dict[str, Any]) -> dict[str, Any]:
    return {
        "subscriptionId": "nwdaf-sub-17",
        "notifCorrId": "tollgate-edge",
        "eventNotifications": list(notifications),
    }


def dn_performance(lyon_delay: int = 9, marseille_delay: int = 11) -> dict[str, Any]:
    return {
        "event": "DN_PERFORMANCE",
        "start": "2026-11-26T21:00:00Z",
        "expiry": "2026-11-26T21:15:00Z",
        "timeStampGen": "2026-11-26T21:10:00Z",
        "dnPerfInfos": [
            {
                "appId": "tollgate-inference",
                "dnn": "internet.mnc001.mcc208.gprs",
                "snssai": {"sst": 1, "sd": "000001"},
                "dnPerf": [
                    {
                        "dnai": "edge-lyon-1",
                        "perfData": {
                            "avgTrafficRate": "120 Mbps",
                            "maxTrafficRate": "300 Mbps",
                            "avePacketDelay": lyon_delay,
                            "maxPacketDelay": lyon_delay * 3,
                            "avgPacketLossRate": 2,
                        },
                    },
                    {
                        "appServerInsAddr": {"ipAddr": {"ipv4Addr": "10.20.30.40"}},
                        "perfData": {"avePacketDelay": marseille_delay},
                    },
                    {  # a DNAI no cluster of ours sits at: not about us
                        "dnai": "edge-nice-1",
                        "perfData": {"avePacketDelay": 250},
                    },
                ],
                "confidence": 80,
            }
        ],
    }


def congestion(level: int = 1) -> dict[str, Any]:
    return {
        "event": "USER_DATA_CONGESTION",
        "timeStampGen": "2026-11-26T21:10:00Z",
        "congestInfos": [
            {
                "networkArea": {"tais": [{"plmnId": PLMN, "tac": "00A1B2"}]},
                "congestionInfo": {
                    "congType": "USER_PLANE",
                    "timeIntev": {
                        "startTime": "2026-11-26T21:00:00Z",
                        "stopTime": "2026-11-26T21:10:00Z",
                    },
                    "nsi": {"congLevel": level},
                    "confidence": 70,
                },
                "snssai": {"sst": 1},
            }
        ],
    }


def network_performance(usage: int = 40, handover: int = 99) -> dict[str, Any]:
    area = {
        "ncgis": [{"plmnId": PLMN, "nrCellId": "00012A00F"}],
        "gRanNodeIds": [{"plmnId": PLMN, "gNbId": {"bitLength": 24, "gNBValue": "0001A2"}}],
    }
    return {
        "event": "NETWORK_PERFORMANCE",
        "nwPerfs": [
            {"networkArea": area, "nwPerfType": "GNB_COMPUTING_USAGE", "relativeRatio": usage},
            {"networkArea": area, "nwPerfType": "HO_SUCC_RATIO", "relativeRatio": handover},
            {"networkArea": area, "nwPerfType": "NUM_OF_UE", "absoluteNum": 412},
        ],
    }


def moi_creation(**attributes: Any) -> dict[str, Any]:
    return {
        "href": "https://mns.demo-telco.example/ProvMnS/v1800/SubNetwork=France/NetworkSlice=nsi-42",
        "notificationId": 90817,
        "notificationType": "notifyMOICreation",
        "eventTime": "2026-11-26T21:12:44Z",
        "systemDN": "DC=demo-telco.example,SubNetwork=France,ManagementNode=nsmf-1",
        "objectClass": "NetworkSlice",
        "objectInstance": "SubNetwork=France,NetworkSlice=nsi-42",
        "attributeList": {
            "operationalState": "ENABLED",
            "administrativeState": "UNLOCKED",
            "networkSliceSubnetRef": "SubNetwork=France,NetworkSliceSubnet=nssi-7",
            "serviceProfileList": [
                {
                    "serviceProfileId": "sp-enterprise-1",
                    "sNSSAIList": [{"sst": 1, "sd": "000042"}],
                    "plmnInfoList": [{"plmnId": PLMN, "snssai": {"sst": 1, "sd": "000042"}}],
                    "maxNumberofUEs": 500,
                    "latency": 10,
                    "dLThptPerSlice": {"guaThpt": 1000000, "maxThpt": 2000000},
                }
            ],
            **attributes,
        },
        "sourceIndicator": "MANAGEMENT_OPERATION",
    }
