"""Fixtures the ledger's tests share."""

from __future__ import annotations

import pytest

from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    """The ledger's clock, moved by hand (a test that needs a date overrides it)."""
    return Clock()
