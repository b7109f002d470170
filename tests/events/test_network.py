"""Tollgate's network events: registered in the catalogue, strict about what they carry."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from events import catalogue, network


def test_every_network_type_is_in_the_catalogue_with_a_json_schema() -> None:
    schemas = catalogue.json_schemas()
    for event_type, model in network.MODELS.items():
        assert event_type.startswith("io.tollgate.network.") and event_type.endswith(".v1")
        assert catalogue.MODELS[event_type] is model
        assert schemas[event_type]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("event_type", "data", "problem"),
    [
        (
            network.SITE_DEGRADED,
            {"cluster": "edge-lyon-5g-1", "cause": "x", "source_event": "s", "expires_in_s": 0},
            "expires_in_s",
        ),
        (
            network.SITE_DEGRADED,
            {"cluster": "edge lyon", "cause": "x", "source_event": "s"},
            "cluster",
        ),
        (
            network.SLICE_BOOKED,
            {"slice_id": "s-1", "status": "AVAILABLE", "source_event": "s", "account": "a"},
            "account",
        ),
        (
            network.SLICE_BOOKED,
            {
                "slice_id": "s-1",
                "status": "AVAILABLE",
                "source_event": "s",
                "service_time": {"start": "2026-12-01T08:00:00Z", "end": "2026-12-01T08:00:00"},
            },
            "service_time.end",
        ),
        (
            network.ROAMING_CHANGED,
            {"roaming": True, "countries": ["ita"], "source_event": "s"},
            "countries.0",
        ),
        (
            network.SUBSCRIPTION_CHANGED,
            {"subscription": "q", "subscription_id": "1", "state": "paused", "source_event": "s"},
            "state",
        ),
    ],
)
def test_network_events_refuse_bad_or_unknown_fields(
    event_type: str, data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        catalogue.parse(event_type, data)
    assert problem in str(caught.value)
