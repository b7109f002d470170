"""What a credit is worth and which price book version is in effect, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from events.prices import CreditUnit, PriceBook, PriceRow, PriceVersion

EUR = CreditUnit(currency="EUR", decimals=2, per_unit=1_000_000)


@pytest.mark.parametrize(
    ("credits", "shown"),
    [
        (20_000_000, "20.00 EUR"),
        (1_000_000, "1.00 EUR"),
        (10_000, "0.01 EUR"),
        (1_234, "0.001234 EUR"),
        (1, "0.000001 EUR"),
        (0, "0.00 EUR"),
        (500_000_000_123, "500000.000123 EUR"),
    ],
)
def test_money_is_exact_and_readable(credits: int, shown: str) -> None:
    assert EUR.money(credits) == shown
    assert EUR.value(credits) == Decimal(credits) / 1_000_000


def test_a_currency_without_minor_units() -> None:
    yen = CreditUnit(currency="JPY", decimals=0, per_unit=1000)
    assert yen.money(5000) == "5 JPY" and yen.money(1500) == "1.5 JPY"
    assert yen.definition() == "1 credit = 0.001 JPY; 1,000 credits = 1 JPY"


def test_the_rate_is_a_whole_number() -> None:
    with pytest.raises(ValidationError):
        CreditUnit(currency="EUR", per_unit=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CreditUnit(currency="euro", per_unit=100)


def _version(name: str, at: datetime) -> PriceVersion:
    row = PriceRow(
        model="m", served_name="M", tier="edge", input_per_million=1, output_per_million=1
    )
    return PriceVersion(version=name, effective_from=at, prices=(row,))


def test_the_version_in_effect_changes_at_its_effective_second() -> None:
    nov = datetime(2026, 11, 1, tzinfo=UTC)
    dec = datetime(2026, 12, 1, tzinfo=UTC)
    book = PriceBook(credit=EUR, versions=(_version("a", nov), _version("b", dec)))
    assert book.in_effect(nov.timestamp() - 1) is None
    assert book.in_effect(nov.timestamp()) == book.versions[0]
    assert book.in_effect(dec.timestamp() - 0.001) == book.versions[0]
    assert book.in_effect(dec.timestamp()) == book.versions[1]
    at = nov.timestamp() + 60
    assert [book.status(v, at) for v in book.versions] == ["current", "upcoming"]
    later = dec.timestamp() + 60
    assert [book.status(v, later) for v in book.versions] == ["superseded", "current"]
    assert book.versions[1].quotes()[("m", "edge")].price_book == "b"


def test_effective_times_need_a_zone() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        _version("a", datetime(2026, 11, 1))
