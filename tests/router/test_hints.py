"""Request hint headers: parsed in any case, malformed ones refused with the header's name."""

from __future__ import annotations

import pytest

from router_fn.hints import Hints, parse_hints


def test_no_hints() -> None:
    assert parse_hints({"Content-Type": "application/json"}) == Hints()


def test_every_hint_in_any_case() -> None:
    hints = parse_hints(
        {
            "X-Tollgate-Latency-Budget-Ms": " 30 ",
            "x-tollgate-residency": "fr, de,",
            "X-TOLLGATE-TIER": "edge",
        }
    )
    assert hints == Hints(30, frozenset({"FR", "DE"}), "edge")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-tollgate-latency-budget-ms", "fast"),
        ("x-tollgate-latency-budget-ms", "0"),
        ("x-tollgate-latency-budget-ms", "-5"),
        ("x-tollgate-latency-budget-ms", "99999999"),
        ("x-tollgate-residency", "France"),
        ("x-tollgate-residency", ",,"),
        ("x-tollgate-tier", "edge;drop"),
    ],
)
def test_malformed_hints_are_refused(header: str, value: str) -> None:
    with pytest.raises(ValueError, match=header):
        parse_hints({header: value})
