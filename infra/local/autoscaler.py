"""Knative's autoscaler (the KPA) for ``tollgate up``: pure decisions over observed concurrency.

Knative scales a revision on its requests in flight (concurrency) per replica against a target:
containerConcurrency x the target utilization (70 %, config-autoscaler's
``container-concurrency-target-percentage``). At each decision it averages the observed
concurrency over two windows, stable (60 s) and panic (10 % of it, 6 s), and wants
``ceil(average / target)`` replicas from each. When the panic window wants at least twice the
ready replicas (the 200 % panic threshold) it panics: it follows the panic window, never scales
down, and calms down once a stable window has passed without crossing the threshold. One
decision scales up by at most 1000x the ready replicas and down by at most half of them. A
scale-down delay keeps the highest recommendation of the last ``scale_down_delay_s``. The result
is bounded by minScale and maxScale. A revision goes to zero only after it has wanted zero for the
scale-to-zero grace period (30 s); one with no replica and a request waiting (the activator's
poke) gets one at once.

Simplified, on purpose: concurrency arrives as the activator's time-weighted integral between
two decisions (Knative scrapes each replica's queue-proxy every second into 1-second buckets);
a window holding less data than its length (a new revision) averages over what it holds, as
Knative does; decisions come at the local scaler's tick (Knative's autoscaler ticks every 2 s)
and at once on a poke.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# config-autoscaler defaults (knative.dev/serving/config/core/configmaps/autoscaler.yaml).
TARGET_UTILIZATION = 0.70
STABLE_WINDOW_S = 60.0
PANIC_WINDOW_PERCENTAGE = 10.0
PANIC_THRESHOLD_PERCENTAGE = 200.0
MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0
SCALE_TO_ZERO_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class ScalingSpec:
    """One revision's scaling, as its Knative annotations and config-autoscaler set it."""

    concurrency: int  # containerConcurrency: the hard limit per replica
    min_scale: int = 0
    max_scale: int = 1
    scale_down_delay_s: float = 0.0
    target_utilization: float = TARGET_UTILIZATION
    stable_window_s: float = STABLE_WINDOW_S
    panic_window_percentage: float = PANIC_WINDOW_PERCENTAGE
    panic_threshold_percentage: float = PANIC_THRESHOLD_PERCENTAGE
    max_scale_up_rate: float = MAX_SCALE_UP_RATE
    max_scale_down_rate: float = MAX_SCALE_DOWN_RATE
    scale_to_zero_grace_s: float = SCALE_TO_ZERO_GRACE_S

    @property
    def target(self) -> float:
        """Concurrency per replica the autoscaler aims at."""
        return self.concurrency * self.target_utilization

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    panicking: bool
    stable_concurrency: float  # the stable window's average
    panic_concurrency: float  # the panic window's average


class Autoscaler:
    """The scaling state of one revision: what it observed, whether it panics, what it wanted
    lately. Every input (observations, the clock, ready replicas) is passed in."""

    def __init__(self, spec: ScalingSpec) -> None:
        self.spec = spec
        # (end of interval, its length in s, request-seconds in it), oldest first
        self._observed: deque[tuple[float, float, float]] = deque()
        self._panic_since: float | None = None
        self._max_panic = 0
        self._recommended: deque[tuple[float, int]] = deque()  # for the scale-down delay
        self._zero_since: float | None = None

    def observe(self, now: float, seconds: float, request_seconds: float) -> None:
        """The interval of ``seconds`` ending ``now`` held ``request_seconds`` of requests in
        flight (its average concurrency is their ratio)."""
        if seconds <= 0:
            return
        self._observed.append((now, seconds, request_seconds))
        horizon = now - self.spec.stable_window_s
        while self._observed and self._observed[0][0] <= horizon:
            self._observed.popleft()

    def decide(self, now: float, ready: int, *, activating: bool = False) -> Decision:
        """Replicas wanted now, given ``ready`` replicas; ``activating``: a request is waiting
        and no replica is ready."""
        spec = self.spec
        stable = self._average(now, spec.stable_window_s)
        panic = self._average(now, spec.panic_window_s)
        base = max(ready, 1)  # rates and the threshold against at least one replica
        most_up = math.ceil(spec.max_scale_up_rate * base)
        least_down = math.floor(base / spec.max_scale_down_rate)
        want_stable = min(max(math.ceil(stable / spec.target), least_down), most_up)
        want_panic = min(max(math.ceil(panic / spec.target), least_down), most_up)
        if want_panic / base >= spec.panic_threshold_percentage / 100:
            self._panic_since = now  # start, or keep, panicking
        elif self._panic_since is not None and now - self._panic_since >= spec.stable_window_s:
            self._panic_since = None
            self._max_panic = 0
        desired = want_stable
        if self._panic_since is not None:
            self._max_panic = max(self._max_panic, want_panic)
            desired = self._max_panic  # no scale-down while panicking
        desired = self._delayed(now, desired)
        desired = min(max(desired, spec.min_scale), spec.max_scale)
        if activating:
            desired = max(desired, 1)
        desired = self._graced(now, desired, ready)
        return Decision(desired, self._panic_since is not None, stable, panic)

    def _average(self, now: float, window: float) -> float:
        seconds = total = 0.0
        for end, length, request_seconds in reversed(self._observed):
            if end <= now - window:
                break
            seconds += length
            total += request_seconds
        return total / seconds if seconds else 0.0

    def _delayed(self, now: float, desired: int) -> int:
        """The highest recommendation within the scale-down delay."""
        delay = self.spec.scale_down_delay_s
        if delay <= 0:
            return desired
        self._recommended.append((now, desired))
        while self._recommended and self._recommended[0][0] <= now - delay:
            self._recommended.popleft()
        return max(r for _, r in self._recommended)

    def _graced(self, now: float, desired: int, ready: int) -> int:
        """The last replica goes only after zero was wanted for the scale-to-zero grace."""
        if desired > 0 or ready == 0:
            self._zero_since = None
            return desired
        if self._zero_since is None:
            self._zero_since = now
        return 0 if now - self._zero_since >= self.spec.scale_to_zero_grace_s else 1
