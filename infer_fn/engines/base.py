"""The one small interface every inference engine implements, and the errors it raises.

A `Generation` is returned *after* the request has been validated against the model (prompt
tokenized, context window checked), so bad input fails before a response starts. Iterating it
produces text pieces; its counters are exact at every moment, including after `close()` — that is
what metering reads when a client disconnects or the engine fails mid-stream."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]
Message = Mapping[str, Any]


@dataclass(frozen=True)
class SamplingParams:
    # None: generate until the model stops or the context window is full.
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class LoadSignals:
    """What the engine itself knows about its load; None where it has no such notion."""

    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None


@dataclass
class Generation:
    """One request's output stream with its running, exact token accounting."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    # Seconds spent inside the engine on this request: the basis of per-second pricing.
    engine_seconds: float = 0.0
    # Set by the engine right after construction: its generator updates the counters above.
    pieces: Iterator[str] = field(default_factory=lambda: iter(()))

    def __iter__(self) -> Iterator[str]:
        # Time is measured here, inside each step of the engine, so it is the same for every
        # engine and never includes the time the caller spends writing to a slow client.
        pieces = self.pieces
        while True:
            started = time.perf_counter()
            try:
                piece = next(pieces)
            except StopIteration:
                return
            finally:
                self.engine_seconds += time.perf_counter() - started
            yield piece

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


class EngineError(Exception):
    """The engine failed while serving; the request is metered as failed."""


class InvalidRequest(Exception):
    """The request can never succeed on this model (answered 400, engine unaffected)."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class Engine(Protocol):
    @property
    def loaded(self) -> bool: ...

    @property
    def context_window(self) -> int | None:
        """Tokens the model attends to, None when not known (an upstream that does not say)."""

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def models(self) -> list[str]: ...

    # `stream` says whether the caller consumes output piece by piece; when it does not, an
    # engine may produce the whole answer in one go (an upstream then reports exact usage).
    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation: ...

    def complete(
        self, prompt: str, params: SamplingParams, *, stream: bool = True
    ) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...

    def load_signals(self) -> LoadSignals: ...
