"""The x-tollgate-* headers: named once, in events/wire.py, and the hold a request carries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from events import wire
from events.wire import BadHold, BilledHold

ROOT = Path(__file__).resolve().parents[2]
SPELLED = re.compile(r"[\"']x-tollgate-[a-z-]+[\"']")


def test_header_names_are_spelled_only_in_events() -> None:
    spelled = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for part in ("functions", "ledger_fn", "router_fn", "infer_fn", "infra", "bench")
        for path in sorted((ROOT / part).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SPELLED.search(line)
    ]
    assert spelled == []


def test_every_name_is_a_lower_case_tollgate_header() -> None:
    names = [v for k, v in vars(wire).items() if k.isupper() and isinstance(v, str)]
    assert len(names) == len(set(names))
    assert all(n == n.lower() and n.startswith(("x-tollgate-", "x-request-")) for n in names)


def test_a_billed_hold_survives_its_headers() -> None:
    hold = BilledHold("acme:7", "acme", "edge", "edge-lyon-1")
    assert BilledHold.from_headers(hold.headers(), tier="x", cluster="y") == hold


def test_a_request_without_a_hold_carries_none_and_defaults_fill_in() -> None:
    assert BilledHold.from_headers({}, tier="edge", cluster="c") is None
    sent = {wire.HOLD_ID: "acme:1", wire.ACCOUNT_ID: "acme"}
    assert BilledHold.from_headers(sent, tier="edge", cluster="c") == BilledHold(
        "acme:1", "acme", "edge", "c"
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({wire.HOLD_ID: "acme:1"}, f"{wire.HOLD_ID} needs {wire.ACCOUNT_ID}"),
        ({wire.HOLD_ID: "acme:1", wire.ACCOUNT_ID: "a b"}, wire.ACCOUNT_ID),
        ({wire.HOLD_ID: "h", wire.ACCOUNT_ID: "a"}, wire.HOLD_ID),
        ({wire.HOLD_ID: "acme:1", wire.ACCOUNT_ID: "a", wire.TIER: "no tier"}, wire.TIER),
    ],
)
def test_bad_hold_headers_are_refused_naming_the_header(
    headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(BadHold, match=reason):
        BilledHold.from_headers(headers, tier="edge", cluster="c")
