"""Waking a cold tier: the call a router makes to an infer function so that it loads its model
now, without generating anything, and what infer answers.

The router (ingress or warm-keeper) POSTs to ``<infer url>`` + ``WARMUP_PATH`` asynchronously,
never on a request's path; on Knative the call goes through the activator, which scales the
revision from zero as any request would. Infer answers once the engine is loaded."""

from __future__ import annotations

from typing import Final

from events.fields import Count, EventData

WARMUP_PATH: Final = "/v1/warmup"


class WarmedUp(EventData):
    model: str
    cold_start_ms: Count | None = None  # the load this call caused; None: it was already warm
