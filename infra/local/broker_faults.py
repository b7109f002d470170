"""Delivery faults for chaos runs of the local broker: never on unless ``TOLLGATE_BROKER_FAULTS``
names a spec (bench/chaos.py sets it; nothing else does).

The spec (JSON) gives each fault a probability per delivery attempt, a seed, an end (seconds
from the broker's start) and a cap on how many faults in all; each injected fault is appended as
a JSON line to ``log`` so a run can count them by kind:
- ``drop``: the delivery never reaches the subscriber (the broker sees no answer and retries);
- ``lose_reply``: it does, but its answer is lost (the broker retries: a duplicate);
- ``duplicate``: it is delivered twice;
- ``delay``: it waits up to ``delay_max_s`` first;
- ``reorder``: it waits 1 s to ``reorder_max_s``, so later events overtake it.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ENV = "TOLLGATE_BROKER_FAULTS"
KINDS = ("drop", "lose_reply", "duplicate", "delay", "reorder")
T = TypeVar("T")


@dataclass(frozen=True)
class FaultSpec:
    log: Path
    seed: int = 0
    drop: float = 0.0
    lose_reply: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    reorder: float = 0.0
    delay_max_s: float = 1.0
    reorder_max_s: float = 3.0
    max_faults: int = 1000
    for_s: float = 3600.0


class DeliveryFaults:
    def __init__(self, spec: FaultSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._random = random.Random(spec.seed)
        self._clock = clock
        self._ends = clock() + spec.for_s
        self._lock = threading.Lock()
        self.injected = 0

    @classmethod
    def from_env(cls) -> DeliveryFaults | None:
        path = os.environ.get(ENV)
        if not path:
            return None
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(FaultSpec(**{**raw, "log": Path(raw["log"])}))

    def deliver(self, send: Callable[[], T], lost: Callable[[], T], event: str) -> T:
        """Attempt one delivery (``send``), perhaps with a fault; ``lost`` is what the broker
        sees when no answer came back."""
        kind = self._pick()
        if kind is None:
            return send()
        self._record(kind, event)
        if kind == "drop":
            return lost()
        if kind == "lose_reply":
            send()
            return lost()
        if kind == "duplicate":
            send()
            return send()
        low, high = (
            (0.05, self.spec.delay_max_s) if kind == "delay" else (1.0, self.spec.reorder_max_s)
        )
        time.sleep(self._random.uniform(low, max(low, high)))
        return send()

    def _pick(self) -> str | None:
        with self._lock:
            if self.injected >= self.spec.max_faults or self._clock() > self._ends:
                return None
            roll = self._random.random()
            for kind in KINDS:
                roll -= float(getattr(self.spec, kind))
                if roll < 0:
                    self.injected += 1
                    return kind
        return None

    def _record(self, kind: str, event: str) -> None:
        line = json.dumps({"kind": kind, "event": event, "at": time.time()})
        with self._lock, self.spec.log.open("a", encoding="utf-8") as log:
            log.write(line + "\n")
