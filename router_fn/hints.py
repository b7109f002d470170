"""The request hints applications send as headers, parsed for the ingress's route request. Bad
values are refused (ValueError naming the header), never silently ignored:
a dropped residency hint would send data where the caller said it must not go."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from events import wire

MAX_BUDGET_MS = 3_600_000
_JURISDICTION = re.compile(r"^[A-Z]{2}$")
_TIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Hints:
    latency_budget_ms: int | None = None
    residency: frozenset[str] = frozenset()
    tier: str | None = None


def parse_hints(headers: Mapping[str, str]) -> Hints:
    """Hints from request headers (any case); raises ValueError for a malformed one."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    budget: int | None = None
    if raw := lowered.get(wire.LATENCY_BUDGET_MS):
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_BUDGET_MS:
            raise ValueError(
                f"{wire.LATENCY_BUDGET_MS} must be milliseconds, 1..{MAX_BUDGET_MS}: {raw!r}"
            )
        budget = int(raw)
    residency: frozenset[str] = frozenset()
    if raw := lowered.get(wire.RESIDENCY):
        codes = {code.strip().upper() for code in raw.split(",") if code.strip()}
        bad = sorted(c for c in codes if not _JURISDICTION.match(c))
        if bad or not codes:
            raise ValueError(
                f"{wire.RESIDENCY} must list ISO 3166-1 alpha-2 codes, e.g. FR,DE: {raw!r}"
            )
        residency = frozenset(codes)
    tier: str | None = None
    if raw := lowered.get(wire.TIER):
        if not _TIER.match(raw):
            raise ValueError(f"{wire.TIER} must be a tier name: {raw!r}")
        tier = raw
    return Hints(budget, residency, tier)
