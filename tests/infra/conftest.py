"""Shared helpers for the infra tests: the shipped template and golden-file comparison."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.template.load import load_template
from infra.template.schema import Template

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "template.yaml"
GOLDEN = REPO / "tests" / "golden"
# TOLLGATE_UPDATE_GOLDEN=1 rewrites the golden files from the current output instead of comparing.
UPDATE_GOLDEN = os.environ.get("TOLLGATE_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="session")
def shipped() -> Template:
    return load_template(SHIPPED)


def check_golden(relative: str, actual: str) -> None:
    path = GOLDEN / relative
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"missing golden {path}; run with TOLLGATE_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, (
        f"{relative} differs from its golden file; if the change is intended, regenerate with "
        "TOLLGATE_UPDATE_GOLDEN=1 and review the diff"
    )
