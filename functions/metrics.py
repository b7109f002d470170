"""Metrics every function exposes on /metrics (prometheus-client's default registry).

Label values come from a bounded set: an event type is a label only if the function handles it;
any other (a dead-letter sink takes every type a sender may invent) counts as "other", so no
sender can grow the metric without bound."""

from collections.abc import Container

from prometheus_client import Counter, Histogram

OTHER = "other"

EVENTS = Counter(
    "tollgate_events_total",
    "CloudEvents handled, by function, type and HTTP status class",
    ["function", "type", "status"],
)
EVENT_SECONDS = Histogram(
    "tollgate_event_seconds",
    "Time to handle one CloudEvent",
    ["function", "type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def event_type_label(event_type: str, handled: Container[str]) -> str:
    return event_type if event_type in handled else OTHER
