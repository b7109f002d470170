"""The CAMARA adapters against the official documents (tests/camara_specs/): every example event
the documents give is valid and accepted, and what the adapters accept is what the schemas allow.

The differential test mutates each valid notification one field at a time (delete it, give it
another JSON type, swap a string for every enum value of its document) and checks both ways:
what an adapter accepts the document's schema accepts; what the schema accepts the adapter
accepts, unless the adapter refuses it for one of the reasons listed in STRICTER."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import pytest

from events import catalogue, network
from events.adapter import NetworkEventError
from events.camara import EVENTS, SubscriptionBinding, from_camara
from tests import camara_schemas as specs
from tests.events import payloads as p

NETWORK_DOCS = {
    "network-slice-booking": "network-slice-booking.yaml",
    "connectivity-insights-subscriptions": "connectivity-insights-subscriptions.yaml",
    "quality-on-demand": "quality-on-demand.yaml",
    "device-roaming-status-subscriptions": "device-roaming-status-subscriptions.yaml",
}

# device-roaming-status-subscriptions 0.7.0 maps subscription-ends to SubscriptionEnds, whose
# allOf requires countryCode (a copy slip from RoamingChangeCountry): its own SUBSCRIPTION_ENDS
# example has none. We follow the example and the Commonalities lifecycle data.
KNOWN_DEFECTS = {
    ("device-roaming-status-subscriptions.yaml", "SUBSCRIPTION_ENDS"): [
        "data: 'countryCode' is a required property"
    ],
}

# Where the adapters are deliberately stricter than the documents (the refusal's text).
STRICTER = (
    "data: Field required",  # every event Tollgate reads carries data
    "countries.",  # countryName: ISO 3166-1 alpha-2, as the field's description says
    "no KPI to judge",  # a network-quality insight that judges nothing tells nothing
    "service time must end after it starts",
    "country_code:",  # countryCode is a mobile country code: 0..999
)


def binding(event_type: str) -> SubscriptionBinding:
    """A subscription to the event's API delivering every (non-lifecycle) type of that API."""
    api = EVENTS[event_type].api
    delivered = frozenset(t for t, kind in EVENTS.items() if kind.api == api and not kind.lifecycle)
    return SubscriptionBinding(f"sub-{api}", api, delivered, "edge-lyon-5g-1", degradation_s=600)


def doc_of(event_type: str) -> str:
    return NETWORK_DOCS[EVENTS[event_type].api]


def examples() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for doc in NETWORK_DOCS.values():
        for name, event in specs.notification_examples(doc).items():
            yield doc, name, event


EXAMPLES = list(examples())


def test_the_documents_give_examples_for_the_slice_qod_and_roaming_events() -> None:
    assert sorted(name for _, name, _ in EXAMPLES) == [
        "QOS_STATUS_CHANGED_EXAMPLE",
        "ROAMING_CHANGE_COUNTRY",
        "ROAMING_OFF",
        "ROAMING_ON",
        "ROAMING_STATUS",
        "SLICE_CREATED_EVENT_CIRCLE",
        "SLICE_CREATED_EVENT_POLYGON",
        "SUBSCRIPTION_ENDS",
    ]


@pytest.mark.parametrize(("doc", "name", "event"), EXAMPLES, ids=[n for _, n, _ in EXAMPLES])
def test_every_example_event_is_valid_accepted_and_mapped(
    doc: str, name: str, event: dict[str, Any]
) -> None:
    assert specs.event_errors(doc, event) == KNOWN_DEFECTS.get((doc, name), [])
    mapped = from_camara(copy.deepcopy(event), subscription=binding(event["type"]))
    assert mapped, f"{name} maps to nothing"
    for item in mapped:
        model = catalogue.parse(item.type, item.data)
        assert model.model_dump(mode="json", exclude_none=True) == item.data


@pytest.mark.parametrize("name", ["SLICE_CREATED_EVENT_CIRCLE", "SLICE_CREATED_EVENT_POLYGON"])
def test_the_slice_booking_examples_book_the_slice_with_its_time_area_and_profile(
    name: str,
) -> None:
    event = specs.notification_examples("network-slice-booking.yaml")[name]
    [booked] = from_camara(copy.deepcopy(event), subscription=binding(event["type"]))
    assert booked.type == network.SLICE_BOOKED
    assert booked.subject == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert booked.data == {
        "slice_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "service_time": {"start": "2024-06-01T12:00:00Z", "end": "2024-06-02T12:00:00Z"},
        "service_area": event["data"]["serviceArea"],
        "qos_profile": event["data"]["sliceQosProfile"],
        "source_event": "org.camaraproject.network-slice-booking.v0.status-changed",
    }


# Types the documents give no example event for, built from their schemas' fields.
BUILT = {
    "network-quality": p.network_quality(),
    "network-quality-unable": p.network_quality(jitter=p.UNABLE),
    "subscription-started": p.lifecycle(
        p.CI, "subscription-started", initiationReason="SUBSCRIPTION_CREATED"
    ),
    "subscription-updated": p.lifecycle(
        p.CI, "subscription-updated", updateReason="SUBSCRIPTION_INACTIVE"
    ),
    "subscription-ended": p.lifecycle(
        p.CI,
        "subscription-ended",
        terminationReason="ACCESS_TOKEN_EXPIRED",
        terminationDescription="sink token expired",
    ),
    "slice-without-end": p.slice_booking(end=None),
    "qos-available": p.qos_status("AVAILABLE", None),
}


def _errors(event: dict[str, Any]) -> list[str]:
    return specs.event_errors(doc_of(event["type"]), event)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_events_built_from_the_schemas_are_valid_and_accepted(name: str) -> None:
    event = BUILT[name]
    assert from_camara(copy.deepcopy(event), subscription=binding(event["type"]))
    assert _errors(event) == []


# -- differential ---------------------------------------------------------------------------

OTHER_JSON: tuple[Any, ...] = (None, 7, -1, 1.5, "x", True, [], {})


@functools.cache
def enum_strings(doc: str) -> tuple[str, ...]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(specs.document(doc))
    return tuple(sorted(found))


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if path:
        yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))


def _set(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    mutant = copy.deepcopy(event)
    target: Any = mutant
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return mutant


_DELETE = object()


def mutants(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    strings = enum_strings(doc_of(event["type"]))
    for path, value in _leaves(event):
        where = "/".join(str(part) for part in path)
        if isinstance(path[-1], str):
            yield f"delete {where}", _set(event, path, _DELETE)
        for other in OTHER_JSON:
            yield f"{where}={other!r}", _set(event, path, other)
        if isinstance(value, str):
            for other in (*strings, "NOT_IN_ANY_ENUM"):
                yield f"{where}={other!r}", _set(event, path, other)


def _accepted(event: dict[str, Any]) -> str | None:
    """None when the adapter accepts, else its reason."""
    try:
        from_camara(event, subscription=binding(event["type"]))
    except NetworkEventError as exc:
        return str(exc)
    return None


def _schema_valid(event: dict[str, Any]) -> bool:
    return not specs.event_errors(doc_of(event["type"]), event)


BASES = [
    *((name, event) for _, name, event in EXAMPLES if name != "SUBSCRIPTION_ENDS"),
    *BUILT.items(),
]


@pytest.mark.parametrize(("name", "event"), BASES, ids=[n for n, _ in BASES])
def test_adapters_accept_exactly_what_the_documents_allow(name: str, event: dict[str, Any]) -> None:
    accepted_invalid: list[str] = []
    refused_valid: list[str] = []
    for change, mutant in mutants(event):
        if not isinstance(mutant.get("type"), str) or mutant["type"] not in EVENTS:
            with pytest.raises(NetworkEventError):
                from_camara(mutant, subscription=binding(event["type"]))
            continue
        reason = _accepted(mutant)
        valid = _schema_valid(mutant)
        if reason is None and not valid:
            accepted_invalid.append(change)
        if reason is not None and valid and not any(s in reason for s in STRICTER):
            refused_valid.append(f"{change}: {reason}")
    assert accepted_invalid == [], "the adapter accepts what the document forbids"
    assert refused_valid == [], "the adapter refuses what the document allows"
