"""Metrics every function exposes on /metrics (prometheus-client's default registry)."""

from prometheus_client import Counter, Histogram

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
