"""Per-request metering: exact tokens and timings, reported as metrics and as
`inference.completed` / `inference.failed` events for settlement, billed to the hold the
attempt's capability names (and carrying that capability, which settle and refund check).

Event data is built with the catalogue's own models (`events.ledger`), so what settle and refund
validate is what we send. Every number is an integer (token counts, milliseconds): money
downstream is integral. A held request's event is owed — written to the function's durable
outbox (functions/outbox.py) — before its response's last bytes go out (`bill`), so a response a
client saw end is never unbilled, even if this process dies the next instant; delivery happens
afterwards and never delays a client. A client that disconnects mid-stream got what was produced:
that is `completed`, with the usage up to the cut; an engine that fails after producing output is
`failed` with that usage (the ledger charges it; with no output it voids the hold).
The outbox sends the `completed` events due at once as one `inference.usage` batch
(`USAGE_BATCHING`): one call to the ledger for many requests, each still its own record."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from events.ledger import (
    MAX_USAGE_REPORTS,
    InferenceCompleted,
    InferenceError,
    InferenceFailed,
    Timings,
    usage_batch,
)
from events.quote import Usage
from events.types import INFERENCE_COMPLETED, INFERENCE_FAILED, INFERENCE_USAGE
from functions.emit import EmitFailed
from functions.outbox import Batching, Entry, OutboxError
from infer_fn import metrics
from infer_fn.capability import Vouched
from infer_fn.engines.base import Generation

log = logging.getLogger(__name__)


def _usage(entries: Sequence[Entry]) -> dict[str, Any]:
    return usage_batch((entry.id, entry.data) for entry in entries)


# How the outbox delivers owed `inference.completed`: what is due in one `inference.usage` event
# (settle takes each report as its own event); `inference.failed` goes alone, to refund.
USAGE_BATCHING = Batching(INFERENCE_USAGE, MAX_USAGE_REPORTS, _usage)
# After a delivery pass that was not full, the outbox waits this long, so a steady stream of
# requests is reported in fewer, larger batches (the first after a quiet spell goes at once).
# bench/gateway.py, leased path at concurrency 1, ledger CPU per request: 3.9 ms with none,
# 2.6 with 10 or 20 ms, 2.1 with 50 ms; settlement trails the answer by at most this much more.
METERING_LINGER_S = 0.02


class EventSink(Protocol):
    """The slice of `functions.emit.Emitter` metering uses (tests pass their own)."""

    def emit(
        self, type: str, source: str, data: dict[str, Any], *, id: str | None = None
    ) -> None: ...


@dataclass
class Meter:
    """One request's clock, from its arrival to the end of its response."""

    request_id: str
    model: str
    endpoint: str
    attempt: Vouched
    arrived: float = field(default_factory=time.perf_counter)
    first_text: float | None = None
    billed: bool = False

    def mark_text(self) -> None:
        if self.first_text is None:
            self.first_text = time.perf_counter()
            metrics.TTFT_SECONDS.observe(self.first_text - self.arrived)

    def finish(self, gen: Generation, *, outcome: str) -> None:
        """Record the request's metrics, once, when its response is closed."""
        prompt, completion, engine_seconds = (
            gen.prompt_tokens,
            gen.completion_tokens,
            gen.engine_seconds,
        )
        metrics.REQUESTS.labels(self.endpoint, outcome).inc()
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - self.arrived)
        metrics.TOKENS.labels("prompt").inc(prompt)
        metrics.TOKENS.labels("completion").inc(completion)
        if completion and engine_seconds > 0:
            metrics.TOKENS_PER_SECOND.set(completion / engine_seconds)

    def bill(
        self, gen: Generation, sink: EventSink, *, error: tuple[str, str] | None = None
    ) -> None:
        """Owe the hold's metering event, once: `error` (type, message) makes it
        `inference.failed`. Every attempt is billed to the hold its capability names."""
        if self.billed:
            return
        self.billed = True
        total_ms = _ms(time.perf_counter() - self.arrived)
        prompt, completion = gen.prompt_tokens, gen.completion_tokens
        usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        ttft = self.first_text
        timings = Timings(
            ttft_ms=total_ms if ttft is None else _ms(ttft - self.arrived),
            total_ms=total_ms,
            engine_ms=_ms(gen.engine_seconds),
        )
        hold = self.attempt.capability
        common: dict[str, Any] = {
            "hold_id": hold.hold_id,
            "account_id": hold.account_id,
            "model": self.model,
            "tier": hold.tier,
            "cluster": hold.cluster,
            "usage": usage,
            "timings": timings,
            "capability": self.attempt.token,
        }
        event: InferenceCompleted | InferenceFailed
        if error is None:
            event = InferenceCompleted(**common)
        else:
            failure = InferenceError(type=error[0][:128], message=error[1][:4096])
            event = InferenceFailed(**common, error=failure)
        kind = INFERENCE_FAILED if error is not None else INFERENCE_COMPLETED
        data = event.model_dump(mode="json")
        source = f"/tollgate/infer/{hold.tier}/{hold.cluster}"
        try:
            sink.emit(kind, source, data, id=self.request_id)
        except (EmitFailed, OutboxError):  # the work is done: a lost event is loud, not fatal
            metrics.EMIT_FAILURES.inc()
            log.exception("could not owe %s for hold %s", kind, hold.hold_id)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
