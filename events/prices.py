"""What a credit is worth and the published price book, written once for every function.

A credit is the platform's one money unit: every amount in the ledger, the API and the template
is an integer number of credits, and one unit of the currency buys ``per_unit`` of them (the
demo: 1,000,000 credits = 1 EUR, so a credit is one micro-euro). The price book is a history of
versions, oldest first; a version applies to holds authorized from its ``effective_from`` on, a
later one is published before it is charged, and a hold settles by the quote it carries. The
ingress quotes and publishes it (``GET /v1/prices``); the ops console shows it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field

from events.fields import Count, EventData, Name, Timestamp
from events.quote import Quote

Status = Literal["upcoming", "current", "superseded"]


class CreditUnit(EventData):
    """One currency unit buys ``per_unit`` credits: a credit is 1/per_unit of the currency."""

    currency: str = Field(pattern=r"^[A-Z]{3}$")  # ISO 4217
    decimals: int = Field(default=2, ge=0, le=4)  # the currency's minor unit
    per_unit: int = Field(strict=True, ge=1)

    def value(self, credits: int) -> Decimal:
        """The exact currency value of ``credits`` (a Decimal: no float ever holds money)."""
        return Decimal(credits) / Decimal(self.per_unit)

    def money(self, credits: int) -> str:
        """E.g. ``20.00 EUR`` or ``0.001234 EUR``: exact, never fewer than the currency's
        decimals, never more than it takes to say the whole value."""
        value = self.value(credits)
        shown = value.quantize(Decimal(1).scaleb(-self.decimals))
        if shown != value:
            shown = value.normalize()
        return f"{shown:f} {self.currency}"

    def definition(self) -> str:
        return f"1 credit = {self.money(1)}; {self.per_unit:,} credits = 1 {self.currency}"


class PriceRow(EventData):
    """Integer credits per million input/output tokens, or per second of engine time."""

    model: Name  # the template's name
    served_name: str  # the id applications send as "model"
    tier: Name
    input_per_million: Count
    output_per_million: Count
    per_engine_second: Count | None = None


class PriceVersion(EventData):
    version: str = Field(min_length=1, max_length=64)
    effective_from: Timestamp
    note: str | None = Field(default=None, max_length=500)  # what changed, for the reader
    prices: tuple[PriceRow, ...]

    @property
    def effective_epoch(self) -> float:
        return self.effective_from.timestamp()

    def quotes(self) -> dict[tuple[str, str], Quote]:
        """(model, tier) -> the quote a hold authorized under this version carries."""
        return {
            (p.model, p.tier): Quote(
                price_book=self.version,
                input_per_million=p.input_per_million,
                output_per_million=p.output_per_million,
                per_engine_second=p.per_engine_second or 0,
            )
            for p in self.prices
        }


class PriceBook(EventData):
    credit: CreditUnit
    versions: tuple[PriceVersion, ...] = Field(min_length=1)  # oldest first

    def in_effect(self, at: float) -> PriceVersion | None:
        """The version that prices a hold authorized at ``at`` (epoch seconds); None before
        the first version takes effect."""
        current = None
        for version in self.versions:
            if version.effective_epoch > at:
                break
            current = version
        return current

    def status(self, version: PriceVersion, at: float) -> Status:
        if version.effective_epoch > at:
            return "upcoming"
        return "current" if version is self.in_effect(at) else "superseded"

    def published(self, at: float, models: Iterable[str] | None = None) -> dict[str, Any]:
        """The price book as ``GET /v1/prices`` answers it: newest version first, each with its
        status at ``at``; rates in integer credits and, exactly, in the currency. ``models``:
        only these (template names), e.g. the models this platform serves."""
        keep = None if models is None else set(models)
        current = self.in_effect(at)
        return {
            "object": "price_book",
            "credit": {
                "currency": self.credit.currency,
                "credits_per_unit": self.credit.per_unit,
                "definition": self.credit.definition(),
            },
            "current_version": current.version if current else None,
            "versions": [
                {
                    "version": v.version,
                    "effective_from": _iso(v.effective_from),
                    "status": self.status(v, at),
                    "note": v.note,
                    "prices": [self._row(p) for p in v.prices if keep is None or p.model in keep],
                }
                for v in reversed(self.versions)
            ],
        }

    def _row(self, p: PriceRow) -> dict[str, Any]:
        row: dict[str, Any] = {
            "model": p.served_name,
            "tier": p.tier,
            "input_per_million": p.input_per_million,
            "output_per_million": p.output_per_million,
            "per_engine_second": p.per_engine_second,
        }
        money = {
            key: f"{self.credit.value(value):f}"
            for key, value in row.items()
            if key != "tier" and isinstance(value, int)
        }
        return {**row, self.credit.currency.lower(): money}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
