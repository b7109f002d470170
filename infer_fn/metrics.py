"""The inference function's Prometheus metrics: the same names whichever engine serves.

The router reads the load gauges; they are computed when `/metrics` is scraped, so they are never
stale. They live in the default registry the function runtime exposes."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from infer_fn.engines.base import LoadSignals

QUEUE_DEPTH = Gauge(
    "tollgate_infer_queue_depth",
    "Requests waiting for a slot: this function's queue plus the engine's own (vLLM waiting).",
)
RUNNING = Gauge("tollgate_infer_running", "Requests the engine is running now.")
LOADED = Gauge("tollgate_infer_loaded", "1 when the model is loaded (warm), 0 when cold.")
KV_CACHE_USAGE = Gauge(
    "tollgate_infer_kv_cache_usage_ratio",
    "Fraction of the engine's KV cache in use (vLLM kv_cache_usage_perc, llama.cpp cells in use).",
)
COLD_STARTS = Counter("tollgate_infer_cold_starts", "Times the engine was loaded on demand.")
COLD_START_SECONDS = Histogram(
    "tollgate_infer_cold_start_seconds",
    "Time to load the engine on demand.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
UNLOADS = Counter("tollgate_infer_unloads", "Times the engine was unloaded after idling.")
TOKENS = Counter("tollgate_infer_tokens", "Tokens processed, by kind.", ["kind"])
TOKENS_PER_SECOND = Gauge(
    "tollgate_infer_tokens_per_second",
    "Completion tokens per engine second of the most recent finished request.",
)
TTFT_SECONDS = Histogram(
    "tollgate_infer_ttft_seconds",
    "Time from request arrival to the first generated text.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUEST_SECONDS = Histogram(
    "tollgate_infer_request_seconds",
    "Time from request arrival to the end of its response.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REQUESTS = Counter(
    "tollgate_infer_requests",
    "Inference requests by endpoint and outcome "
    "(ok, invalid, rejected, unavailable, failed, disconnected).",
    ["endpoint", "outcome"],
)
EMIT_FAILURES = Counter(
    "tollgate_infer_emit_failures",
    "Metering events that could not be owed (the outbox could not write them): lost, loudly.",
)


def bind_load_gauges(
    *,
    queued: Callable[[], int],
    running: Callable[[], int],
    loaded: Callable[[], bool],
    signals: Callable[[], LoadSignals],
) -> None:
    """Compute the load gauges at scrape time from this function's admission and its engine."""

    def engine_signals() -> LoadSignals:
        return signals() if loaded() else LoadSignals()

    QUEUE_DEPTH.set_function(lambda: queued() + (engine_signals().waiting or 0))
    RUNNING.set_function(
        lambda: float(r) if (r := engine_signals().running) is not None else float(running())
    )
    LOADED.set_function(lambda: 1.0 if loaded() else 0.0)
    KV_CACHE_USAGE.set_function(lambda: engine_signals().kv_cache_usage or 0.0)
