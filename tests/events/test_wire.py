"""The x-tollgate-* headers: named once, in events/wire.py."""

from __future__ import annotations

import re
from pathlib import Path

from events import wire

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
