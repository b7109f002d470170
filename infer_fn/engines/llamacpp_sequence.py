"""One request inside the llama.cpp decode loop, and the stream its client reads.

A `Sequence` holds everything that is the request's own while it shares the context with others:
its tokens and how many of them are in the KV cache, its sampler chain (sampling parameters, seed,
penalty history), its text assembly (UTF-8 across tokens, stop sequences) and its output queue.
The decode loop thread is the only writer of its state; the client's thread reads the queue and
may cancel. Counting follows llama.cpp's own convention (and `llama_cpp.server`'s): the prompt is
every token evaluated, the completion every sampled token except the end-of-generation token.

The completion count is exact at every moment: a token is counted under the same lock that
cancellation takes, so once `SequenceStream.close()` returns no further token is ever counted."""

from __future__ import annotations

import codecs
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Final

import llama_cpp

from infer_fn.engines.base import EngineError, Generation, SamplingParams
from infer_fn.engines.stops import StopMatcher

# llama.cpp's sampling guards, the same defaults `llama_cpp.server` uses; OpenAI's API has no
# top_k/min_p, and a 135M model sampled from its raw distribution at temperature 1 rambles.
TOP_K = 40
MIN_P = 0.05
# Tokens the penalties look back on: llama-cpp-python's `last_n_tokens_size` default.
PENALTY_LAST_N = 64


class _End:
    """Marks the end of a sequence's output in its queue."""


_END: Final = _End()
Output = str | _End | EngineError


def sampler_chain(params: SamplingParams, n_vocab: int) -> llama_cpp.llama_sampler_p:
    """The chain `Llama.generate` builds for the same parameters, so a seeded request samples
    the same tokens here as through llama-cpp-python's own API. Freed with `llama_sampler_free`
    (which frees its links)."""
    chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
        llama_cpp.llama_sampler_chain_default_params()
    )
    links = [
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty, params.presence_penalty
        )
    ]
    if params.temperature == 0:
        links.append(llama_cpp.llama_sampler_init_greedy())
    else:
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        links += [
            llama_cpp.llama_sampler_init_top_k(TOP_K),
            llama_cpp.llama_sampler_init_typical(1.0, 1),
            llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
            llama_cpp.llama_sampler_init_temp(params.temperature),
            llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF),  # llama.cpp seeds are 32-bit
        ]
    for link in links:
        llama_cpp.llama_sampler_chain_add(chain, link)
    return chain


class Sequence:
    def __init__(
        self,
        gen: Generation,
        prompt: list[int],
        *,
        sampler: llama_cpp.llama_sampler_p,
        stops: tuple[str, ...],
        max_tokens: int,
        piece: Callable[[int], bytes],
        is_end: Callable[[int], bool],
    ) -> None:
        self.gen = gen
        # Prompt then sampled tokens; the first `n_past` are in the KV cache.
        self.tokens = list(prompt)
        self.n_past = 0
        self.seq_id: int | None = None
        self._sampler: llama_cpp.llama_sampler_p | None = sampler
        self._max_tokens = max_tokens
        self._piece = piece
        self._is_end = is_end
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._matcher = StopMatcher(stops)
        self._out: queue.SimpleQueue[Output] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._cancelled = False
        self._ended = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def ended(self) -> bool:
        return self._ended

    def pending(self) -> list[int]:
        """Tokens to evaluate next: the rest of the prompt, or the last sampled token."""
        return self.tokens[self.n_past :]

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        # Samples from the logits of batch row `index` and records the token in the chain
        # (penalty history, RNG state), which is why each sequence has its own chain.
        assert self._sampler is not None
        return int(llama_cpp.llama_sampler_sample(self._sampler, ctx, index))

    def accept(self, token: int) -> bool:
        """Take a sampled token; True when the sequence has ended (its KV cells can go)."""
        with self._lock:
            if self._cancelled:
                self._end()
                return True
            if self._is_end(token):
                self.gen.finish_reason = "stop"
                self._finish(stopped=False, text="")
                return True
            self.gen.completion_tokens += 1
            self.tokens.append(token)
            scan = self._matcher.feed(self._decoder.decode(self._piece(token)))
            if scan.stopped:
                self.gen.finish_reason = "stop"
                self._finish(stopped=True, text=scan.text)
                return True
            if self.gen.completion_tokens >= self._max_tokens:
                self.gen.finish_reason = "length"
                self._finish(stopped=False, text=scan.text)
                return True
            if scan.text:
                self._out.put(scan.text)
            return False

    def cancel(self) -> None:
        """The client is gone: nothing more is counted; the loop frees the cells next step."""
        with self._lock:
            self._cancelled = True

    def fail(self, error: EngineError) -> None:
        with self._lock:
            if not self._ended:
                self._ended = True
                self._out.put(error)

    def drop(self) -> None:
        """End a cancelled sequence's output (the loop calls it as it frees the sequence)."""
        with self._lock:
            self._end()

    def stream(self, wake: Callable[[], None]) -> SequenceStream:
        return SequenceStream(self, wake)

    def next_output(self) -> Output:
        return self._out.get()

    def close_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            llama_cpp.llama_sampler_free(sampler)

    def _finish(self, *, stopped: bool, text: str) -> None:
        # Text held back as a possible stop-sequence start, or bytes of a character split across
        # tokens, is released once the output has ended without a stop sequence.
        if not stopped:
            tail = self._matcher.feed(self._decoder.decode(b"", final=True))
            text += tail.text if tail.stopped else tail.text + self._matcher.flush()
        if text:
            self._out.put(text)
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._out.put(_END)


class SequenceStream(Iterator[str]):
    """What `Generation.pieces` iterates: the sequence's text as the loop produces it. Closing it
    (the client left, or the response was torn down) cancels the sequence."""

    def __init__(self, sequence: Sequence, wake: Callable[[], None]) -> None:
        self._sequence = sequence
        self._wake = wake
        self._done = False

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        item = self._sequence.next_output()
        if isinstance(item, str):
            return item
        self._done = True
        if isinstance(item, EngineError):
            raise item
        raise StopIteration

    def close(self) -> None:
        if not self._sequence.ended:
            self._sequence.cancel()
            self._wake()
        self._done = True
