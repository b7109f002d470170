"""Engines for tests that need exact control: a scripted one and a fault-injecting wrapper."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from infer_fn.engines.base import (
    Engine,
    EngineError,
    Generation,
    InvalidRequest,
    LoadSignals,
    Message,
    SamplingParams,
)


class ScriptedEngine:
    """Answers every request with the same words, one token per word, at a set pace.

    A token is only produced when the consumer asks for the next one, as in a real engine, so
    `produced` tells exactly how far a generation got before it was closed."""

    def __init__(
        self,
        words: Sequence[str],
        *,
        name: str = "scripted",
        context_window: int = 64,
        token_seconds: float = 0.0,
        load_seconds: float = 0.0,
    ) -> None:
        self.words = list(words)
        self.name = name
        self._context_window = context_window
        self.token_seconds = token_seconds
        self.load_seconds = load_seconds
        self.loads = 0
        self.unloads = 0
        self.closed = threading.Event()
        self.generations: list[Generation] = []
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def context_window(self) -> int:
        return self._context_window

    def load(self) -> None:
        time.sleep(self.load_seconds)
        self.loads += 1
        self._loaded = True

    def unload(self) -> None:
        self.unloads += 1
        self._loaded = False

    def models(self) -> list[str]:
        return [self.name]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def load_signals(self) -> LoadSignals:
        return LoadSignals()

    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation:
        return self._start(sum(self.count_tokens(str(m["content"])) for m in messages), params)

    def complete(self, prompt: str, params: SamplingParams, *, stream: bool = True) -> Generation:
        return self._start(self.count_tokens(prompt), params)

    def _start(self, prompt_tokens: int, params: SamplingParams) -> Generation:
        if not self._loaded:
            raise EngineError("not loaded")
        limit = params.max_tokens or self._context_window - prompt_tokens
        if prompt_tokens >= self._context_window or prompt_tokens + limit > self._context_window:
            raise InvalidRequest("too long", code="context_length_exceeded")
        gen = Generation(prompt_tokens=prompt_tokens)
        gen.pieces = self._run(gen, limit)
        self.generations.append(gen)
        return gen

    def _run(self, gen: Generation, limit: int) -> Iterator[str]:
        self.closed.clear()
        try:
            for i, word in enumerate(self.words[:limit]):
                time.sleep(self.token_seconds)
                gen.completion_tokens += 1
                yield word if i == 0 else " " + word
            gen.finish_reason = "length" if limit < len(self.words) else "stop"
        finally:
            self.closed.set()


class FaultyEngine:
    """Wraps an engine and breaks every generation after `fail_after` pieces."""

    def __init__(self, inner: Engine, fail_after: int) -> None:
        self.inner = inner
        self.fail_after = fail_after

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    @property
    def context_window(self) -> int | None:
        return self.inner.context_window

    def load(self) -> None:
        self.inner.load()

    def unload(self) -> None:
        self.inner.unload()

    def models(self) -> list[str]:
        return self.inner.models()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def load_signals(self) -> LoadSignals:
        return self.inner.load_signals()

    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation:
        return self._break(self.inner.chat(messages, params, stream=stream))

    def complete(self, prompt: str, params: SamplingParams, *, stream: bool = True) -> Generation:
        return self._break(self.inner.complete(prompt, params, stream=stream))

    def _break(self, gen: Generation) -> Generation:
        inner = gen.pieces

        def pieces() -> Iterator[str]:
            try:
                for count, piece in enumerate(inner, start=1):
                    yield piece
                    if count >= self.fail_after:
                        raise EngineError("injected fault: the engine died")
            finally:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()

        gen.pieces = pieces()
        return gen
