"""The shipped price book is what its comments and the README say: the market table in US
dollars per million tokens, converted to euros at the stated ECB rate, rounded to the cent; each
model placed in its tier's range by size, nearer tiers dearer; engine seconds at the stated
throughput. If a price changes, this table changes with it, so the documentation stays true."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from infra.template.schema import Template

# The market table this project follows, US dollars per million tokens.
RANGES = {"edge": ("1.50", "5.00"), "regional": ("2.50", "10.00"), "cloud": ("3.00", "15.00")}
# Where each model sits (smaller low, larger high; nearer tiers dearer).
USD = {
    ("smollm2-135m", "edge"): "3.50",
    ("smollm2-135m", "regional"): "3.25",
    ("smollm2-135m", "cloud"): "3.00",
    ("llama31-8b", "edge"): "5.00",
    ("llama31-8b", "regional"): "4.50",
    ("llama33-70b", "regional"): "10.00",
    ("llama33-70b", "cloud"): "9.00",
}
# ECB euro reference rates (USD per EUR) of the last business day before each version.
RATES = {"2026-10.1": "1.1355", "2026-11.1": "1.1172"}
TOKENS_PER_ENGINE_SECOND = {"smollm2-135m": 45, "llama31-8b": 18, "llama33-70b": 60}
NEARER_FIRST = ("edge", "regional", "cloud")


def test_the_table_sits_in_the_market_ranges_nearer_tiers_dearer() -> None:
    for (_, tier), usd in USD.items():
        low, high = RANGES[tier]
        assert Decimal(low) <= Decimal(usd) <= Decimal(high)
    for model in {m for m, _ in USD}:
        prices = [Decimal(USD[(model, t)]) for t in NEARER_FIRST if (model, t) in USD]
        assert prices == sorted(prices, reverse=True) and len(set(prices)) == len(prices)
    for tier in NEARER_FIRST:  # within a tier, larger models cost more
        by_size = [USD[(m, tier)] for m in TOKENS_PER_ENGINE_SECOND if (m, tier) in USD]
        assert [Decimal(p) for p in by_size] == sorted(Decimal(p) for p in by_size)


def test_every_version_is_the_table_converted_at_its_rate(shipped: Template) -> None:
    credit = shipped.credit
    assert (credit.currency, credit.currency_decimals, credit.per_unit) == ("EUR", 2, 1_000_000)
    versions = shipped.price_book.versions
    assert [v.version for v in versions] == list(RATES)
    for version in versions:
        rate = Decimal(RATES[version.version])
        assert f"1 EUR = {rate} USD" in (version.note or "")
        assert {(p.model, p.tier) for p in version.prices} == set(USD)
        for p in version.prices:
            eur = (Decimal(USD[(p.model, p.tier)]) / rate).quantize(Decimal("0.01"), ROUND_HALF_UP)
            per_million = int(eur * credit.per_unit)
            assert (p.input_per_million, p.output_per_million) == (per_million, per_million), p
            per_second = Decimal(per_million * TOKENS_PER_ENGINE_SECOND[p.model]) / 10**6
            assert p.per_engine_second == int(per_second.to_integral_value(ROUND_CEILING)), p
