"""In-process llama.cpp on CPU (llama-cpp-python): concurrent requests are decoded together.

This module is the engine's face: it loads the model, renders chat templates, tokenizes and checks
every request against the context window in the caller's thread, so bad input fails before a
response starts. Generation happens in `DecodeLoop` (llamacpp_loop.py), which serves every running
request as one batch of sequences; each request reads its own stream (llamacpp_sequence.py).

We use llama.cpp's C API through llama-cpp-python's bindings rather than `Llama.generate`: the
high-level object owns one sequence, while batching needs one context decoding many."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from infer_fn.engines.base import (
    EngineError,
    Generation,
    InvalidRequest,
    LoadSignals,
    Message,
    SamplingParams,
)
from infer_fn.engines.llamacpp_loop import DecodeLoop
from infer_fn.engines.llamacpp_model import LoadedModel
from infer_fn.engines.llamacpp_sequence import Sequence as DecodeSequence
from infer_fn.engines.llamacpp_sequence import sampler_chain

# llama.cpp reports through this logger (llama-cpp-python's); below ERROR it narrates every load.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def default_threads() -> int:
    """Half the CPUs this process may use, at least one: llama.cpp's choice for generation.
    Every step of a batching engine is a generation step, and its threads spin while they wait
    for each other, so taking every core (the other half serves HTTP and tokenizes) costs more
    than it gives on a busy machine."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (usable or 1) // 2)


class LlamaCppEngine:
    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        n_ctx: int,
        threads: int | None,
        sequences: int = 1,
    ) -> None:
        self._model_path = model_path
        self._model_name = model_name
        self._n_ctx = n_ctx
        self._threads = threads or default_threads()
        self._sequences = sequences
        self._model: LoadedModel | None = None
        self._loop: DecodeLoop | None = None
        self._formatter: Jinja2ChatFormatter | None = None

    @property
    def loaded(self) -> bool:
        # A loop that could not recover from a failure reads as unloaded: the next request
        # loads the engine afresh.
        return self._loop is not None and self._loop.serving

    @property
    def context_window(self) -> int:
        return self._n_ctx

    @property
    def sequences(self) -> int:
        return self._sequences

    def models(self) -> list[str]:
        return [self._model_name]

    def load(self) -> None:
        self.unload()
        if not self._model_path.is_file():
            raise EngineError(f"model file {self._model_path} does not exist")
        model = LoadedModel(self._model_path)
        try:
            loop = DecodeLoop(
                model, n_ctx=self._n_ctx, sequences=self._sequences, threads=self._threads
            )
        except EngineError:
            model.close()
            raise
        template = model.chat_template
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(model, model.eos),
                bos_token=_token_text(model, model.bos),
                stop_token_ids=[model.eos],
            )
            if template
            else None
        )
        self._model, self._loop = model, loop

    def unload(self) -> None:
        loop, self._loop = self._loop, None
        model, self._model = self._model, None
        if loop is not None:
            loop.stop()
        if model is not None:
            model.close()

    def count_tokens(self, text: str) -> int:
        return len(self._require().tokenize(text, add_bos=False))

    def load_signals(self) -> LoadSignals:
        loop = self._loop
        if loop is None:
            return LoadSignals(kv_cache_usage=0.0)
        load = loop.load()
        return LoadSignals(
            waiting=load.waiting,
            running=load.running,
            kv_cache_usage=load.used_cells / load.cells,
        )

    # Generation is lazy whether or not the caller streams: `stream` changes nothing here.
    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation:
        model = self._require()
        if self._formatter is None:
            raise InvalidRequest(
                "this model has no chat template; use /v1/completions", code="no_chat_template"
            )
        try:
            # The template reads plain role/content mappings, whatever llama_cpp's types say.
            rendered = self._formatter(messages=cast(Any, [dict(m) for m in messages]))
        except Exception as exc:  # the template itself rejects what it cannot render (jinja2)
            raise InvalidRequest(
                f"messages rejected by the chat template: {exc}", param="messages"
            ) from exc
        prompt = model.tokenize(rendered.prompt, add_bos=not rendered.added_special)
        stop = rendered.stop or []
        template_stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return self._start(model, prompt, params, params.stop + template_stops)

    def complete(self, prompt: str, params: SamplingParams, *, stream: bool = True) -> Generation:
        model = self._require()
        tokens = model.tokenize(prompt, add_bos=True)
        if not tokens:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return self._start(model, tokens, params, params.stop)

    def _require(self) -> LoadedModel:
        model = self._model
        if model is None or self._loop is None:
            raise EngineError("engine is not loaded")
        return model

    def _start(
        self, model: LoadedModel, prompt: list[int], params: SamplingParams, stops: tuple[str, ...]
    ) -> Generation:
        if len(prompt) >= self._n_ctx:
            raise InvalidRequest(
                f"This model's maximum context length is {self._n_ctx} tokens, "
                f"but the prompt has {len(prompt)} tokens.",
                code="context_length_exceeded",
                param="messages",
            )
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self._n_ctx - len(prompt)
        elif len(prompt) + max_tokens > self._n_ctx:
            raise InvalidRequest(
                f"This model's maximum context length is {self._n_ctx} tokens. However, you "
                f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, "
                f"{max_tokens} in the completion).",
                code="context_length_exceeded",
                param="max_tokens",
            )
        loop = self._loop
        if loop is None:
            raise EngineError("engine is not loaded")
        generation = Generation(prompt_tokens=len(prompt))
        sequence = DecodeSequence(
            generation,
            prompt,
            sampler=sampler_chain(params, model.n_vocab),
            stops=stops,
            max_tokens=max_tokens,
            piece=model.piece,
            is_end=model.is_end,
        )
        generation.pieces = sequence.stream(loop.wake)
        try:
            loop.submit(sequence)
        except EngineError:
            sequence.close_sampler()
            raise
        return generation


def _token_text(model: LoadedModel, token: int) -> str:
    if token < 0:
        return ""
    return model.token_bytes(token, special=True).decode("utf-8", errors="replace")
