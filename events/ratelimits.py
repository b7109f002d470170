"""Rate limits: what a plan (template.yaml ``plans[].rateLimits``) or one API key's override
allows per minute and at once, and OpenAI's ``x-ratelimit-*`` headers that report them.

One shape for the template, the admin API (a key's override) and the stored key, camelCase as in
the template (snake_case is accepted too). An unset field is not limited; an override replaces
the plan's fields it sets and keeps the others."""

from __future__ import annotations

import math
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

MAX_PER_MINUTE = 10**12
MAX_CONCURRENT = 10**6

PerMinute = Annotated[int, Field(strict=True, ge=1, le=MAX_PER_MINUTE)]

# OpenAI's names (https://platform.openai.com/docs/guides/rate-limits), sent on every response.
LIMIT_REQUESTS: Final = "x-ratelimit-limit-requests"
LIMIT_TOKENS: Final = "x-ratelimit-limit-tokens"
REMAINING_REQUESTS: Final = "x-ratelimit-remaining-requests"
REMAINING_TOKENS: Final = "x-ratelimit-remaining-tokens"
RESET_REQUESTS: Final = "x-ratelimit-reset-requests"
RESET_TOKENS: Final = "x-ratelimit-reset-tokens"
# Ours, in the same family: the concurrency limit (OpenAI has none to mirror).
LIMIT_CONCURRENT: Final = "x-ratelimit-limit-concurrent-requests"
# The openai client honours this over its own rules: "false" stops it retrying a 429 that can
# never pass (one request larger than the whole tokens-per-minute limit).
SHOULD_RETRY: Final = "x-should-retry"


class RateLimits(BaseModel):
    """``requestsPerMinute`` and ``tokensPerMinute`` (prompt + completion) count per window of a
    minute; ``concurrentRequests`` counts requests running at once."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    concurrent_requests: Annotated[int, Field(strict=True, ge=1, le=MAX_CONCURRENT)] | None = None

    def over(self, override: RateLimits | None) -> RateLimits:
        """These limits with ``override``'s set fields in their place."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))

    @property
    def empty(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
        )

    def wire(self) -> dict[str, int]:
        """As stored and shown: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True)


def reset_after(seconds: float) -> str:
    """A duration in OpenAI's reset format (Go's): "12ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs
