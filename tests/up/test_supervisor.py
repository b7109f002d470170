"""The restart policy: each crashed child on its own CrashLoopBackOff clock, never the platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.local.supervisor import BackOff, Child, ProcessSpec, Restarts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def child(name: str, started: float) -> Child:
    spec = ProcessSpec(name, ["true"], 1)
    fake: Any = None  # neither the process nor the log is read by the policy
    return Child(spec, fake, Path("/dev/null"), fake, started=started)


def test_back_off_doubles_from_the_second_crash_and_is_capped() -> None:
    backoff = BackOff(first_s=1, max_s=8)
    assert [backoff.delay(n) for n in range(1, 8)] == [0, 1, 2, 4, 8, 8, 8]


def test_each_child_has_its_own_clock_and_a_stable_child_starts_over() -> None:
    clock = Clock()
    restarts = Restarts(BackOff(first_s=1, max_s=60, stable_after_s=30), clock)
    first = restarts.crashed(child("ledger", started=clock.now - 1))
    assert (first.crashes, first.due) == (1, clock.now)  # at once
    assert [r.child.spec.name for r in restarts.due()] == ["ledger"]
    again = restarts.crashed(child("ledger", started=clock.now - 1))
    assert (again.crashes, again.due - clock.now) == (2, 1)
    other = restarts.crashed(child("route", started=clock.now - 1))
    assert other.crashes == 1  # the ledger's crashes are not the route's
    assert [r.child.spec.name for r in restarts.due()] == ["route"]  # the ledger waits
    clock.now += 1
    assert [r.child.spec.name for r in restarts.due()] == ["ledger"]
    third = restarts.crashed(child("ledger", started=clock.now - 1))
    assert third.crashes == 3 and third.due - clock.now == 2
    restarts.due()
    clock.now += 100
    # Up for longer than stable_after_s: its next crash is a first crash again.
    assert restarts.crashed(child("ledger", started=clock.now - 31)).crashes == 1
