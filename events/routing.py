"""Data of the route function's request and decision (types in events/types.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from events.fields import Count, EventData, Name

Jurisdiction = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]  # ISO 3166-1 alpha-2
Milliseconds = Annotated[int, Field(strict=True, ge=0, le=86_400_000)]


class RouteRequested(EventData):
    model: Name  # served name or template name
    latency_budget_ms: Annotated[int, Field(strict=True, ge=1, le=3_600_000)] | None = None
    residency: list[Jurisdiction] | None = Field(default=None, min_length=1, max_length=64)
    tier: Name | None = None  # pin
    plan: Name | None = None  # the caller's plan: its defaults and limits apply
    prompt_tokens: Count = 0
    max_tokens: Count | None = None
    exclude: list[Name] = Field(default_factory=list, max_length=64)  # failed already


class RouteAlternative(EventData):
    cluster: Name
    tier: Name
    url: str
    predicted_ms: Milliseconds


class RouteDecided(EventData):
    model: Name
    cluster: Name
    tier: Name
    url: str
    predicted_ms: Milliseconds
    budget_ms: Milliseconds | None = None
    reasons: list[str]
    alternatives: list[RouteAlternative]
    rejected: dict[str, str]


class TiersWarm(EventData):
    """The warm-keeper's tick: warm what demand says must be warm now."""
