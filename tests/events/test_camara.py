"""CAMARA notifications -> io.tollgate.network.*.v1, valid and broken, mappings asserted exactly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from events import catalogue, network
from events.adapter import Mapped, NetworkEventError
from events.camara import from_camara, subscription_for
from tests.events import payloads as p


def test_a_slice_booking_is_booked_with_its_time_area_and_profile() -> None:
    event = p.slice_booking()
    assert from_camara(event, subscription=p.SLICES) == [
        Mapped(
            network.SLICE_BOOKED,
            {
                "slice_id": p.SLICE_ID,
                "service_time": {"start": "2026-12-01T08:00:00Z", "end": "2026-12-31T20:00:00Z"},
                "service_area": {
                    "areaType": "CIRCLE",
                    "center": {"latitude": 45.754114, "longitude": 4.860374},
                    "radius": 800,
                },
                "qos_profile": event["data"]["sliceQosProfile"],
                "source_event": "org.camaraproject.network-slice-booking.v0.status-changed",
            },
            p.SLICE_ID,
        )
    ]


def test_a_slice_without_an_end_date_is_booked_without_end() -> None:
    [booked] = from_camara(p.slice_booking(end=None), subscription=p.SLICES)
    assert booked.data["service_time"] == {"start": "2026-12-01T08:00:00Z"}


def test_a_status_field_is_not_part_of_the_booking_and_is_ignored() -> None:
    event = p.slice_booking()
    event["data"]["status"] = "OPERATING"
    [booked] = from_camara(event, subscription=p.SLICES)
    assert "status" not in booked.data


def test_network_quality_unable_on_any_kpi_degrades_the_subscriptions_site() -> None:
    event = p.network_quality(packetDelayBudget=p.UNABLE, jitter=p.UNABLE)
    assert from_camara(event, subscription=p.LYON) == [
        Mapped(
            network.SITE_DEGRADED,
            {
                "cluster": "edge-lyon-5g-1",
                "cause": "CAMARA network quality: unable to meet packetDelayBudget, jitter",
                "metrics": {
                    "packetDelayBudget": "unable",
                    "targetMinDownstreamRate": "meets",
                    "targetMinUpstreamRate": "meets",
                    "packetlossErrorRate": "meets",
                    "jitter": "unable",
                    "signalStrength": "good",
                    "connectivityType": "5G-SA",
                },
                "expires_in_s": 600,
                "source_event": f"{p.CI}.network-quality",
            },
            "edge-lyon-5g-1",
        )
    ]


def test_network_quality_meeting_every_kpi_restores_the_site() -> None:
    event = p.network_quality()
    del event["data"]["additionalKpis"]
    assert from_camara(event, subscription=p.MARSEILLE) == [
        Mapped(
            network.SITE_RESTORED,
            {
                "cluster": "edge-marseille-5g-1",
                "cause": "CAMARA network quality: meets the application requirements",
                "metrics": {
                    "packetDelayBudget": "meets",
                    "targetMinDownstreamRate": "meets",
                    "targetMinUpstreamRate": "meets",
                    "packetlossErrorRate": "meets",
                    "jitter": "meets",
                },
                "source_event": f"{p.CI}.network-quality",
            },
            "edge-marseille-5g-1",
        )
    ]


def test_qos_status_changes_map_to_availability_with_the_reason() -> None:
    assert from_camara(p.qos_status("UNAVAILABLE", "DURATION_EXPIRED"), subscription=p.QOS) == [
        Mapped(
            network.QOS_CHANGED,
            {
                "session_id": "a9b2c7d4-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
                "available": False,
                "info": "DURATION_EXPIRED",
                "cluster": "edge-lyon-5g-1",
                "source_event": f"{p.QOD}.qos-status-changed",
            },
            "a9b2c7d4-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
        )
    ]
    [available] = from_camara(p.qos_status("AVAILABLE", None), subscription=p.QOS)
    assert available.data["available"] is True and "info" not in available.data


def test_roaming_status_carries_country_code_and_iso_countries() -> None:
    assert from_camara(p.roaming_status(True), subscription=p.ROAMING_SUB) == [
        Mapped(
            network.ROAMING_CHANGED,
            {
                "device": {"phoneNumber": "+33612345678"},
                "roaming": True,
                "country_code": 222,
                "countries": ["IT"],
                "subscription_id": "qs15-h556-rt89-1298",
                "source_event": f"{p.ROAMING}.roaming-status",
            },
            "qs15-h556-rt89-1298",
        )
    ]
    [home] = from_camara(p.roaming_status(False), subscription=p.ROAMING_SUB)
    assert home.data["roaming"] is False and home.data["countries"] == []


@pytest.mark.parametrize(
    ("event", "data", "state", "reason"),
    [
        ("subscription-started", {"initiationReason": "SUBSCRIPTION_CREATED"}, "started", None),
        ("subscription-updated", {"updateReason": "SUBSCRIPTION_INACTIVE"}, "updated", None),
        (
            "subscription-ended",
            {
                "terminationReason": "ACCESS_TOKEN_EXPIRED",
                "terminationDescription": "sink token expired at 2026-11-26T21:00:00Z",
            },
            "ended",
            "sink token expired at 2026-11-26T21:00:00Z",
        ),
    ],
)
def test_subscription_lifecycle_maps_to_subscription_changed(
    event: str, data: dict[str, Any], state: str, reason: str | None
) -> None:
    notification = p.lifecycle(p.CI, event, **data)
    expected: dict[str, Any] = {
        "subscription": "quality-edge-lyon-5g-1",
        "subscription_id": "ci-sub-lyon-1",
        "state": state,
        "reason": next(v for k, v in data.items() if k.endswith("Reason")),
        "source_event": f"{p.CI}.{event}",
    }
    if reason is not None:
        expected["description"] = reason
    assert from_camara(notification, subscription=p.LYON) == [
        Mapped(network.SUBSCRIPTION_CHANGED, expected, "quality-edge-lyon-5g-1")
    ]


def test_roaming_subscription_ends_is_its_subscription_ending() -> None:
    event = p.lifecycle(p.ROAMING, "subscription-ends", terminationReason="SUBSCRIPTION_EXPIRED")
    assert from_camara(event, subscription=p.ROAMING_SUB) == [
        Mapped(
            network.SUBSCRIPTION_CHANGED,
            {
                "subscription": "roaming-fleet",
                "subscription_id": "ci-sub-lyon-1",
                "state": "ended",
                "reason": "SUBSCRIPTION_EXPIRED",
                "source_event": f"{p.ROAMING}.subscription-ends",
            },
            "roaming-fleet",
        )
    ]


@pytest.mark.parametrize(
    ("event", "roaming", "countries"),
    [
        ("roaming-on", True, []),
        ("roaming-off", False, []),
        ("roaming-change-country", True, ["ES"]),
    ],
)
def test_roaming_on_off_and_country_changes_say_whether_the_device_roams(
    event: str, roaming: bool, countries: list[str]
) -> None:
    data: dict[str, Any] = {"subscriptionId": "qs15-h556-rt89-1298"}
    if event == "roaming-change-country":
        data.update(countryCode=214, countryName=["ES"])
    binding = replace(p.ROAMING_SUB, event_types=frozenset({f"{p.ROAMING}.{event}"}))
    [changed] = from_camara(p.envelope(f"{p.ROAMING}.{event}", data), subscription=binding)
    assert (changed.data["roaming"], changed.data["countries"]) == (roaming, countries)


def test_every_mapped_event_is_valid_against_the_catalogue() -> None:
    samples = [
        (p.slice_booking(), p.SLICES),
        (p.slice_booking(end=None), p.SLICES),
        (p.network_quality(jitter=p.UNABLE), p.LYON),
        (p.network_quality(), p.LYON),
        (p.qos_status(), p.QOS),
        (p.roaming_status(), p.ROAMING_SUB),
        (p.lifecycle(p.CI, "subscription-ended", terminationReason="NETWORK_TERMINATED"), p.LYON),
    ]
    for event, binding in samples:
        for item in from_camara(event, subscription=binding):
            assert (
                catalogue.parse(item.type, item.data).model_dump(mode="json", exclude_none=True)
                == item.data
            )


def _broken(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with ... delete) one field, path like 'data.sliceId'."""
    *parents, last = path.split(".")
    target = event
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return event


@pytest.mark.parametrize(
    ("event", "path", "value", "reason"),
    [
        (p.slice_booking(), "time", ..., "invalid CloudEvent: time: Field required"),
        (p.slice_booking(), "time", "2026-11-26T21:15:08", "time: Value error, timestamp needs"),
        (p.slice_booking(), "time", 1764191708, "time: Value error, an RFC 3339 date-time"),
        (p.slice_booking(), "datacontenttype", None, "datacontenttype: null is not allowed"),
        (p.slice_booking(), "specversion", "0.3", "specversion: Input should be '1.0'"),
        (p.slice_booking(), "id", ..., "id: Field required"),
        (p.slice_booking(), "source", "", "source: String should have at least 1 character"),
        (p.slice_booking(), "datacontenttype", "text/xml", "datacontenttype: Input should be"),
        (p.slice_booking(), "data", ..., "data: Field required"),
        (p.slice_booking(), "data", [1], "data: Input should be a valid dictionary"),
        (p.slice_booking(), "data.sliceId", ..., "status-changed data: sliceId: Field required"),
        (p.slice_booking(), "data.sliceId", "slice-9", "sliceId: String should match pattern"),
        (p.slice_booking(), "data.serviceTime", ..., "serviceTime: Field required"),
        (p.slice_booking(), "data.serviceArea", ..., "serviceArea: Field required"),
        (p.slice_booking(), "data.sliceQosProfile", ..., "sliceQosProfile: Field required"),
        (p.slice_booking(), "data.serviceArea.radius", "800", "radius: Input should be"),
        (p.slice_booking(), "data.serviceArea.radius", ..., "a CIRCLE needs center and radius"),
        (p.slice_booking(), "data.serviceTime.endDate", "2026-11-01T00:00:00Z", "must end after"),
        (p.network_quality(), "data.jitter", "fine", "jitter: Input should be 'meets the"),
        (p.qos_status(), "data.qosStatus", "REQUESTED", "qosStatus: Input should be 'AVAILABLE'"),
        (p.qos_status(), "data.sessionId", "qod-1", "sessionId: String should match pattern"),
        (p.qos_status(), "data.statusInfo", "EXPIRED", "statusInfo: Input should be"),
        (p.roaming_status(), "data.roaming", "yes", "roaming: Input should be a valid boolean"),
        (p.roaming_status(), "data.subscriptionId", ..., "subscriptionId: Field required"),
        (p.roaming_status(), "data.countryName", ["Italy"], "countries.0: String should match"),
    ],
)
def test_broken_notifications_are_refused_with_the_reason(
    event: dict[str, Any], path: str, value: Any, reason: str
) -> None:
    binding = {
        "status-changed": p.SLICES,
        "network-quality": p.LYON,
        "qos-status-changed": p.QOS,
        "roaming-status": p.ROAMING_SUB,
    }[event["type"].rsplit(".", 1)[1]]
    with pytest.raises(NetworkEventError) as caught:
        from_camara(_broken(event, path, value), subscription=binding)
    assert reason in str(caught.value)


def test_network_quality_without_any_kpi_is_refused() -> None:
    profile = "c7a3f2de-8f0e-4c4e-9d7b-2f7a1c0f6a11"
    event = p.envelope(f"{p.CI}.network-quality", {"applicationProfileId": profile})
    with pytest.raises(NetworkEventError, match="no KPI to judge"):
        from_camara(event, subscription=p.LYON)


def test_unknown_types_and_types_the_subscription_does_not_deliver_are_refused() -> None:
    with pytest.raises(NetworkEventError, match="not a CAMARA event type"):
        from_camara(p.envelope("com.example.thing.happened", {}), subscription=p.LYON)
    unknown = p.envelope(f"{p.NSB}.status-changed", {}) | {"type": f"{p.CI}.network-speed"}
    binding = replace(p.LYON, event_types=frozenset({unknown["type"]}))
    with pytest.raises(NetworkEventError, match=r"unknown CAMARA event type .*network-speed"):
        from_camara(unknown, subscription=binding)
    with pytest.raises(NetworkEventError, match=r"does not deliver .*roaming-on"):
        roaming_on = p.envelope(f"{p.ROAMING}.roaming-on", {"subscriptionId": "s-1"})
        from_camara(roaming_on, subscription=p.ROAMING_SUB)
    with pytest.raises(NetworkEventError, match=r"is to connectivity-insights.*status-changed"):
        from_camara(p.slice_booking(), subscription=p.LYON)
    with pytest.raises(NetworkEventError, match="is to connectivity-insights-subscriptions"):
        from_camara(
            p.lifecycle(p.ROAMING, "subscription-ends", terminationReason="NETWORK_TERMINATED"),
            subscription=p.LYON,
        )
    no_lifecycle = r"unknown CAMARA event type .*quality-on-demand.v1.subscription-ended;"
    with pytest.raises(NetworkEventError, match=no_lifecycle):
        from_camara(
            p.lifecycle(p.QOD, "subscription-ended", terminationReason="NETWORK_TERMINATED"),
            subscription=p.QOS,
        )
    with pytest.raises(NetworkEventError, match="terminationReason: Input should be"):
        from_camara(
            p.lifecycle(p.CI, "subscription-ended", terminationReason="BORED"),
            subscription=p.LYON,
        )
    with pytest.raises(NetworkEventError, match="JSON object"):
        from_camara([p.slice_booking()], subscription=p.SLICES)


def test_a_notification_on_the_shared_sink_is_attributed_by_its_type_when_unambiguous() -> None:
    assert subscription_for(p.slice_booking(), p.BINDINGS) is p.SLICES
    assert (
        subscription_for(
            p.lifecycle(p.ROAMING, "subscription-ends", terminationReason="SUBSCRIPTION_DELETED"),
            p.BINDINGS,
        )
        is p.ROAMING_SUB
    )
    with pytest.raises(NetworkEventError, match=r"several subscriptions \(quality-edge-lyon"):
        subscription_for(p.network_quality(), p.BINDINGS)
    with pytest.raises(NetworkEventError, match="no subscription delivers"):
        subscription_for(p.envelope(f"{p.CI}.network-speed", {}), p.BINDINGS)
    with pytest.raises(NetworkEventError, match="needs a string type"):
        subscription_for({"id": "1"}, p.BINDINGS)
