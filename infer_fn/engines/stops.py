"""Stop-sequence detection over streamed text.

Text that could be the start of a stop sequence is held back until the next piece settles it, so a
stop sequence split across tokens is never streamed to the client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class StopScan:
    """What may be sent now, and whether a stop sequence ended the text."""

    text: str
    stopped: bool


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, piece: str) -> StopScan:
        pending = self._pending + piece
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return StopScan(pending[: min(hits)], stopped=True)
        keep = self._held_back(pending)
        self._pending = pending[len(pending) - keep :]
        return StopScan(pending[: len(pending) - keep], stopped=False)

    def flush(self) -> str:
        """The held-back text, released once the output ended without a stop."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_back(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
