"""The quote a hold is priced at: the price-book rates in force when it was authorized.

Settlement charges by the quote carried on the hold, never by a newer price book, so a quote
never surprises. Rates are integer credits per million tokens (or per engine second); the only
division is explicit and rounds in the direction the price book names."""

from __future__ import annotations

from typing import Literal

from events.fields import Count, EventData, Name

PER_MILLION = 1_000_000
MS_PER_SECOND = 1000


class Usage(EventData):
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count | None = None


class Quote(EventData):
    price_book: Name  # the price book version, e.g. "2026-11-01"
    unit: Literal["token", "engine_second"] = "token"
    input_per_million: Count = 0
    output_per_million: Count = 0
    per_engine_second: Count = 0
    rounding: Literal["up", "down"] = "up"

    def charge(self, usage: Usage, engine_ms: int = 0) -> int:
        """Credits owed for this usage, rounded once, in the price book's direction."""
        if self.unit == "engine_second":
            return _divide(engine_ms * self.per_engine_second, MS_PER_SECOND, self.rounding)
        micro = (
            usage.prompt_tokens * self.input_per_million
            + usage.completion_tokens * self.output_per_million
        )
        return _divide(micro, PER_MILLION, self.rounding)

    def worst_case(self, prompt_tokens: int, max_tokens: int, max_engine_ms: int = 0) -> int:
        """The most a request can cost: the amount to hold before running it."""
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=max_tokens)
        return max(1, self.charge(usage, max_engine_ms))


def _divide(numerator: int, denominator: int, rounding: Literal["up", "down"]) -> int:
    assert numerator >= 0 and denominator > 0
    return -(-numerator // denominator) if rounding == "up" else numerator // denominator
