"""In-process llama.cpp on CPU (llama-cpp-python).

We drive `Llama.generate` token by token instead of `create_completion`: its stream chunks do not
map one-to-one to tokens and carry no usage, while metering must be exact even when a stream is
cut. Counting follows llama.cpp's own convention (and `llama_cpp.server`'s): the prompt is every
token evaluated, the completion every sampled token except the end-of-generation token."""

from __future__ import annotations

import codecs
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from infer_fn.engines.base import (
    EngineError,
    Generation,
    InvalidRequest,
    LoadSignals,
    Message,
    SamplingParams,
)
from infer_fn.engines.stops import StopMatcher

# llama.cpp's sampling guards, the same defaults `llama_cpp.server` uses; OpenAI's API has no
# top_k/min_p, and a 135M model sampled from its raw distribution at temperature 1 rambles.
TOP_K = 40
MIN_P = 0.05


class LlamaCppEngine:
    def __init__(
        self, model_path: Path, model_name: str, *, n_ctx: int, threads: int | None
    ) -> None:
        self._model_path = model_path
        self._model_name = model_name
        self._n_ctx = n_ctx
        self._threads = threads
        # One Llama object holds one KV cache and is not re-entrant: a generation owns it from its
        # first token to its close.
        self._lock = threading.Lock()
        self._llm: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def context_window(self) -> int:
        return self._n_ctx

    def models(self) -> list[str]:
        return [self._model_name]

    def load(self) -> None:
        if not self._model_path.is_file():
            raise EngineError(f"model file {self._model_path} does not exist")
        llm = llama_cpp.Llama(
            model_path=str(self._model_path),
            n_ctx=self._n_ctx,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        eos = llm.token_eos()
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llm, eos),
                bos_token=_token_text(llm, llm.token_bos()),
                stop_token_ids=[eos],
            )
            if template
            else None
        )
        self._llm = llm

    def unload(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                llm.close()

    def count_tokens(self, text: str) -> int:
        return len(self._require().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def load_signals(self) -> LoadSignals:
        # Queue and running are this function's own admission counters: llama.cpp has no queue.
        llm = self._llm
        return LoadSignals(kv_cache_usage=0.0 if llm is None else llm.n_tokens / self._n_ctx)

    # Generation is lazy whether or not the caller streams: `stream` changes nothing here.
    def chat(
        self, messages: Sequence[Message], params: SamplingParams, *, stream: bool = True
    ) -> Generation:
        llm = self._require()
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
        prompt = llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        stop = rendered.stop or []
        template_stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return self._start(prompt, params, params.stop + template_stops)

    def complete(self, prompt: str, params: SamplingParams, *, stream: bool = True) -> Generation:
        tokens = self._require().tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return self._start(tokens, params, params.stop)

    def _require(self) -> llama_cpp.Llama:
        llm = self._llm
        if llm is None:
            raise EngineError("engine is not loaded")
        return llm

    def _start(
        self, prompt: list[int], params: SamplingParams, stops: tuple[str, ...]
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
        generation = Generation(prompt_tokens=len(prompt))
        generation.pieces = self._run(generation, prompt, params, stops, max_tokens)
        return generation

    def _run(
        self,
        gen: Generation,
        prompt: list[int],
        params: SamplingParams,
        stops: tuple[str, ...],
        max_tokens: int,
    ) -> Iterator[str]:
        last = ""
        with self._lock:
            llm = self._require()
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            llm.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            matcher = StopMatcher(stops)
            tokens = llm.generate(
                prompt,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=TOP_K,
                min_p=MIN_P,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                repeat_penalty=1.0,
                reset=True,
            )
            try:
                stopped_by_sequence = False
                # llama.cpp's token stream is endless: every exit is one of the breaks below.
                for token in tokens:
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        gen.finish_reason = "stop"
                        break
                    gen.completion_tokens += 1
                    scan = matcher.feed(decoder.decode(llm.detokenize([token])))
                    if scan.stopped:
                        gen.finish_reason, last, stopped_by_sequence = "stop", scan.text, True
                        break
                    if gen.completion_tokens >= max_tokens:
                        gen.finish_reason, last = "length", scan.text
                        break
                    if scan.text:
                        yield scan.text
                if not stopped_by_sequence:
                    tail = matcher.feed(decoder.decode(b"", final=True))
                    last += tail.text if tail.stopped else tail.text + matcher.flush()
            finally:
                tokens.close()
        # The last piece is sent after the model is released to the next request.
        if last:
            yield last


def _token_text(llm: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")
