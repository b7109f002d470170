"""NWDAF analytics and TS 28.532 MOI creation -> io.tollgate.network.*.v1, valid and broken."""

from __future__ import annotations

from typing import Any

import pytest

from events import catalogue, network
from events.adapter import Mapped, NetworkEventError
from events.threegpp import Thresholds, from_moi_creation, from_nwdaf
from tests.events import payloads as p

LYON_DNAI = "dnai:edge-lyon-1"
MARSEILLE_ADDR = "addr:10.20.30.40"


def test_dn_performance_delay_over_threshold_degrades_the_cluster_at_that_dnai() -> None:
    body = p.nwdaf(p.dn_performance(lyon_delay=45, marseille_delay=11))
    assert from_nwdaf(body, sites=p.SITES, thresholds=Thresholds(degradation_s=300)) == [
        Mapped(
            network.SITE_DEGRADED,
            {
                "cluster": "edge-lyon-5g-1",
                "cause": f"NWDAF: avePacketDelay 45 ms > 20 ms at {LYON_DNAI}",
                "metrics": {
                    f"avePacketDelay@{LYON_DNAI}": 45,
                    f"avgPacketLossRate@{LYON_DNAI}": 2,
                },
                "expires_in_s": 300,
                "source_event": "3gpp.nnwdaf.DN_PERFORMANCE",
            },
            "edge-lyon-5g-1",
        ),
        Mapped(
            network.SITE_RESTORED,
            {
                "cluster": "edge-marseille-5g-1",
                "cause": "NWDAF: all analytics within thresholds",
                "metrics": {f"avePacketDelay@{MARSEILLE_ADDR}": 11},
                "source_event": "3gpp.nnwdaf.DN_PERFORMANCE",
            },
            "edge-marseille-5g-1",
        ),
    ]


def test_dn_performance_within_thresholds_restores_and_loss_alone_can_degrade() -> None:
    [lyon, marseille] = from_nwdaf(p.nwdaf(p.dn_performance(9, 11)), sites=p.SITES)
    assert (lyon.type, marseille.type) == (network.SITE_RESTORED, network.SITE_RESTORED)
    body = p.nwdaf(p.dn_performance(9, 11))
    body["eventNotifications"][0]["dnPerfInfos"][0]["dnPerf"][0]["perfData"][
        "avgPacketLossRate"
    ] = 25
    [lyon, _] = from_nwdaf(body, sites=p.SITES)
    assert lyon.type == network.SITE_DEGRADED
    assert lyon.data["cause"] == f"NWDAF: avgPacketLossRate 25‰ > 10‰ at {LYON_DNAI}"


def test_user_data_congestion_level_high_degrades_the_cluster_in_that_area() -> None:
    assert from_nwdaf(p.nwdaf(p.congestion(level=4)), sites=p.SITES) == [
        Mapped(
            network.SITE_DEGRADED,
            {
                "cluster": "edge-lyon-5g-1",
                "cause": "NWDAF: USER_PLANE congestion level 4 >= 3 at tai:208-01-00a1b2",
                "metrics": {"congLevel@tai:208-01-00a1b2": 4},
                "source_event": "3gpp.nnwdaf.USER_DATA_CONGESTION",
            },
            "edge-lyon-5g-1",
        )
    ]
    [low] = from_nwdaf(p.nwdaf(p.congestion(level=1)), sites=p.SITES)
    assert low.type == network.SITE_RESTORED


def test_network_performance_judges_usage_high_and_success_ratios_low() -> None:
    ncgi, gnb = "ncgi:208-01-00012a00f", "gnb:208-01-0001a2"
    assert from_nwdaf(p.nwdaf(p.network_performance(usage=95, handover=90)), sites=p.SITES) == [
        Mapped(
            network.SITE_DEGRADED,
            {
                "cluster": "edge-marseille-5g-1",
                "cause": "NWDAF: "
                + "; ".join(
                    [
                        f"GNB_COMPUTING_USAGE 95% >= 90% at {ncgi}",
                        f"GNB_COMPUTING_USAGE 95% >= 90% at {gnb}",
                        f"HO_SUCC_RATIO 90% < 95% at {ncgi}",
                        f"HO_SUCC_RATIO 90% < 95% at {gnb}",
                    ]
                ),
                "metrics": {
                    f"GNB_COMPUTING_USAGE@{ncgi}": 95,
                    f"GNB_COMPUTING_USAGE@{gnb}": 95,
                    f"HO_SUCC_RATIO@{ncgi}": 90,
                    f"HO_SUCC_RATIO@{gnb}": 90,
                },
                "source_event": "3gpp.nnwdaf.NETWORK_PERFORMANCE",
            },
            "edge-marseille-5g-1",
        )
    ]
    [healthy] = from_nwdaf(p.nwdaf(p.network_performance(40, 99)), sites=p.SITES)
    assert healthy.type == network.SITE_RESTORED


def test_one_notification_yields_one_verdict_per_cluster_worst_wins() -> None:
    body = p.nwdaf(p.congestion(level=1), p.dn_performance(45, 11), p.network_performance(40, 99))
    [lyon, marseille] = from_nwdaf(body, sites=p.SITES)
    assert (lyon.type, lyon.subject) == (network.SITE_DEGRADED, "edge-lyon-5g-1")
    assert lyon.data["source_event"] == "3gpp.nnwdaf.DN_PERFORMANCE+USER_DATA_CONGESTION"
    assert (marseille.type, marseille.subject) == (network.SITE_RESTORED, "edge-marseille-5g-1")
    assert marseille.data["source_event"] == "3gpp.nnwdaf.DN_PERFORMANCE+NETWORK_PERFORMANCE"
    for item in (lyon, marseille):
        assert (
            catalogue.parse(item.type, item.data).model_dump(mode="json", exclude_none=True)
            == item.data
        )


def test_locations_no_cluster_declares_and_termination_only_notifications_map_to_nothing() -> None:
    assert from_nwdaf(p.nwdaf(p.dn_performance(300, 300)), sites={}) == []
    assert (
        from_nwdaf({"subscriptionId": "nwdaf-sub-17", "termCause": "NF_UNAVAILABLE"}, sites={})
        == []
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.pop("subscriptionId"), "subscriptionId: Field required"),
        (
            lambda b: b.update(eventNotifications=[]),
            "eventNotifications: List should have at least",
        ),
        (
            lambda b: b["eventNotifications"][0].update(event="QOS_SUSTAINABILITY"),
            "eventNotifications.0.event: NWDAF event QOS_SUSTAINABILITY is not accepted",
        ),
        (
            lambda b: b["eventNotifications"][0].pop("dnPerfInfos"),
            "eventNotifications.0: a DN_PERFORMANCE notification needs dnPerfInfos",
        ),
        (
            lambda b: b["eventNotifications"][0]["dnPerfInfos"][0]["dnPerf"][0]["perfData"].update(
                avePacketDelay="45ms"
            ),
            "perfData.avePacketDelay: Input should be a valid integer",
        ),
        (
            lambda b: b["eventNotifications"][0]["dnPerfInfos"][0].update(dnPerf=[]),
            "dnPerf: List should have at least 1 item",
        ),
    ],
)
def test_broken_nwdaf_notifications_are_refused_with_the_reason(mutate: Any, reason: str) -> None:
    body = p.nwdaf(p.dn_performance())
    mutate(body)
    with pytest.raises(NetworkEventError) as caught:
        from_nwdaf(body, sites=p.SITES)
    assert reason in str(caught.value)


def test_broken_congestion_and_performance_reports_are_refused() -> None:
    body = p.nwdaf(p.congestion())
    body["eventNotifications"][0]["congestInfos"][0]["congestionInfo"]["congType"] = "RADIO"
    with pytest.raises(NetworkEventError, match="congType: Input should be 'USER_PLANE'"):
        from_nwdaf(body, sites=p.SITES)
    body = p.nwdaf(p.network_performance())
    body["eventNotifications"][0]["nwPerfs"][0]["relativeRatio"] = 140
    with pytest.raises(NetworkEventError, match="relativeRatio: Input should be less than"):
        from_nwdaf(body, sites=p.SITES)


def test_a_network_slice_created_enabled_and_unlocked_is_booked_operating() -> None:
    body = p.moi_creation()
    assert from_moi_creation(body) == [
        Mapped(
            network.SLICE_BOOKED,
            {
                "slice_id": "nsi-42",
                "status": "OPERATING",
                "qos_profile": body["attributeList"]["serviceProfileList"][0],
                "source_event": "3gpp.notifyMOICreation",
            },
            "nsi-42",
        )
    ]
    [locked] = from_moi_creation(p.moi_creation(administrativeState="LOCKED"))
    assert locked.data["status"] == "AVAILABLE"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("notificationType", "notifyMOIDeletion", "notificationType: Input should be"),
        ("eventTime", ..., "eventTime: Field required"),
        ("notificationId", "90817", "notificationId: Input should be a valid integer"),
        ("objectClass", "NetworkSliceSubnet", "objectClass NetworkSliceSubnet is not accepted"),
        ("objectInstance", "SubNetwork=France", "does not end in NetworkSlice=<id>"),
        ("objectInstance", "SubNetwork=France,NetworkSlice=", "does not end in NetworkSlice=<id>"),
        ("objectInstance", "SubNetwork=France,NetworkSlice=a b", "slice_id: String should match"),
    ],
)
def test_broken_moi_creations_are_refused_with_the_reason(
    field: str, value: Any, reason: str
) -> None:
    body = p.moi_creation()
    if value is ...:
        del body[field]
    else:
        body[field] = value
    with pytest.raises(NetworkEventError) as caught:
        from_moi_creation(body)
    assert reason in str(caught.value)
