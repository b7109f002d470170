"""Time to first token as the client sees it (what a latency budget promises, events/sla.py),
measured at the ingress from the request's arrival (the emulated RTT is slept inside it).

- A stream: when the first chunk carrying generated text leaves the ingress (a chat stream opens
  with a role-only chunk, which is not a token).
- A whole response reaches the client at once, after the generation: its first token is when
  infer produced it, which the ingress accounts as the time its answer arrived less the
  generation after the first token (infer's engine time less its prefill, both reported).
A response that ends without any token counts from arrival to its end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping

from events import wire


class FirstToken:
    def __init__(self, started: float) -> None:
        self.started = started
        self.at: float | None = None

    def whole(self, headers: Mapping[str, str]) -> None:
        """A whole response has just arrived with these infer headers."""
        arrived = time.perf_counter()
        generating_ms = header_int(headers.get(wire.ENGINE_MS)) - header_int(
            headers.get(wire.PREFILL_MS)
        )
        self.at = max(self.started, arrived - max(generating_ms, 0) / 1000)

    def watch(self, first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The stream's bytes unchanged, noting when the first token passes."""
        if first:
            self._see(first)
            yield first
        for chunk in chunks:
            self._see(chunk)
            yield chunk

    def ms(self) -> int:
        """The measured time to first token (to now if none came)."""
        end = self.at if self.at is not None else time.perf_counter()
        return round((end - self.started) * 1000)

    def _see(self, chunk: bytes) -> None:
        if self.at is None and _has_text(chunk):
            self.at = time.perf_counter()


def _has_text(chunk: bytes) -> bool:
    """Whether an SSE chunk from infer carries generated text (chat delta or completion)."""
    for line in chunk.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            choices = json.loads(line[6:]).get("choices") or []
        except ValueError:
            continue
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                return True
    return False


def header_int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
