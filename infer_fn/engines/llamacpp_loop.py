"""The llama.cpp decode loop: one thread owns the context and serves every admitted request as one
batch of sequences, each with its own `seq_id`, KV cells and sampler (continuous batching).

Requests join and leave between steps. A step evaluates the next token of every generating
sequence in one `llama_decode`, and up to `PREFILL_TOKENS_PER_STEP` prompt tokens of sequences
still reading their prompt, then samples the next token of every sequence whose input is complete.
Chunking prompts keeps a long prompt from stalling everyone else's stream.

Resources are bounded when the context is made, and checked: at most `sequences` sequences run at
once, each in its own slice of `n_ctx` KV cells (llama.cpp's per-sequence streams), so every
request keeps the full context window the router quotes against and a request validated against it
always fits; KV memory is `n_ctx` x `sequences` cells. A sequence's cells are freed as soon as it
ends or its client leaves.

A request's output is the one it gets alone, token for token (greedy or seeded): each sequence
attends only to its own stream, and every decode gives a sequence's last prompt token the same
company as llama-cpp-python's own API does (see `_schedule`). With one unified KV cache, or a prompt
chunk split by llama.cpp to share a micro-batch with other sequences, logits drift by tenths.

Any failure inside a step fails every sequence in the loop (each client gets an engine error and is
metered as failed with what it had), then the context is made anew and the loop goes on."""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import llama_cpp

from infer_fn.engines.base import EngineError
from infer_fn.engines.llamacpp_model import LoadedModel
from infer_fn.engines.llamacpp_sequence import Sequence

log = logging.getLogger(__name__)

# A sequence and the tokens of it one decode evaluates.
Work = tuple[Sequence, list[int]]

# Prompt tokens evaluated per step, across sequences. On CPU a token costs about the same whatever
# the batch shape, so this trades a new request's time to first token against the pause it puts
# in the streams already running; 64 keeps that pause near one second on a slow core.
PREFILL_TOKENS_PER_STEP = 64


@dataclass(frozen=True)
class LoopLoad:
    running: int
    waiting: int
    used_cells: int
    cells: int


class DecodeLoop:
    def __init__(self, model: LoadedModel, *, n_ctx: int, sequences: int, threads: int) -> None:
        if not 1 <= sequences <= llama_cpp.llama_max_parallel_sequences():
            raise EngineError(
                f"{sequences} sequences asked for; llama.cpp runs 1 to "
                f"{llama_cpp.llama_max_parallel_sequences()}"
            )
        self._model = model
        self._n_ctx = n_ctx
        self._sequences = sequences
        self._threads = threads
        # One decode holds a token per generating sequence, or one prompt chunk.
        self._capacity = max(sequences, PREFILL_TOKENS_PER_STEP)
        self._ctx: llama_cpp.llama_context_p | None
        self._ctx, self._memory = self._new_context()
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self._free_ids = list(range(sequences - 1, -1, -1))
        self._running: list[Sequence] = []  # in admission order
        self._waiting: deque[Sequence] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._broken: str | None = None
        self._thread = threading.Thread(target=self._run, name="llamacpp-decode", daemon=True)
        self._thread.start()

    @property
    def serving(self) -> bool:
        """False once the loop stopped, or broke for good (its context could not be remade)."""
        return not self._stopping

    def submit(self, sequence: Sequence) -> None:
        with self._cond:
            if self._stopping or self._broken is not None:
                raise EngineError(self._broken or "engine is unloading")
            self._waiting.append(sequence)
            self._cond.notify()

    def wake(self) -> None:
        """Something changed outside the loop (a client left): look at it before sleeping."""
        with self._cond:
            self._cond.notify()

    def load(self) -> LoopLoad:
        return LoopLoad(
            running=len(self._running),
            waiting=len(self._waiting),
            used_cells=sum(s.n_past for s in tuple(self._running)),
            cells=self._n_ctx * self._sequences,
        )

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._fail_all(EngineError("the engine was unloaded"))
        llama_cpp.llama_batch_free(self._batch)
        self._free_context()

    def _new_context(self) -> tuple[llama_cpp.llama_context_p, llama_cpp.llama_memory_t]:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self._n_ctx * self._sequences
        params.n_batch = self._capacity
        params.n_ubatch = self._capacity
        params.n_seq_max = self._sequences
        params.kv_unified = False
        params.n_threads = self._threads
        params.n_threads_batch = self._threads
        params.no_perf = True
        # As llama-cpp-python's `Llama` does: with flash attention on, llama.cpp sums attention
        # in another order and greedy output drifts from what the reference API answers.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        assert self._model.pointer is not None
        ctx = llama_cpp.llama_init_from_model(self._model.pointer, params)
        if ctx is None:
            raise EngineError("llama.cpp could not make a context")
        memory = llama_cpp.llama_get_memory(ctx)
        made = (int(llama_cpp.llama_n_seq_max(ctx)), int(llama_cpp.llama_n_ctx_seq(ctx)))
        if memory is None or made[0] != self._sequences or made[1] < self._n_ctx:
            llama_cpp.llama_free(ctx)
            raise EngineError(
                f"llama.cpp made a context of {made[0]} sequences x {made[1]} cells, "
                f"not the {self._sequences} x {self._n_ctx} asked for"
            )
        return ctx, memory

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._running and not self._waiting:
                    self._cond.wait()
                if self._stopping:
                    return
                self._admit()
            try:
                self._step()
            except Exception as exc:
                self._recover(exc)

    def _admit(self) -> None:
        """Move waiting sequences into free slots, first come first served."""
        for gone in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(gone)
            self._retire(gone)
        while self._waiting and self._free_ids:
            admitted = self._waiting.popleft()
            admitted.seq_id = self._free_ids.pop()
            self._running.append(admitted)

    def _step(self) -> None:
        for gone in [s for s in self._running if s.cancelled]:
            self._release(gone)
        generating, prompts = self._schedule()
        # Every generating sequence's next token in one decode; each prompt chunk in its own, so
        # llama.cpp never splits a chunk to batch it with other sequences' tokens (see _schedule).
        if generating:
            self._decode(generating)
        for chunk in prompts:
            self._decode([chunk])

    def _schedule(self) -> tuple[list[Work], list[Work]]:
        generating: list[Work] = []
        prompts: list[Work] = []
        budget = PREFILL_TOKENS_PER_STEP
        for sequence in self._running:
            pending = sequence.pending()
            if len(pending) == 1:
                generating.append((sequence, pending))
                continue
            take = min(budget, len(pending))
            if len(pending) - take == 1:
                # llama.cpp attends with another kernel for a lone query token: a prompt whose last
                # token were evaluated alone would get other logits (by tenths) than evaluated with
                # the rest of the prompt, as llama-cpp-python's own API does.
                take -= 1
            if take > 0:
                budget -= take
                prompts.append((sequence, pending[:take]))
        return generating, prompts

    def _decode(self, work: list[Work]) -> None:
        self._fill(work)
        assert self._ctx is not None
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status}")
        row = 0
        for sequence, chunk in work:
            row += len(chunk)
            sequence.n_past += len(chunk)
            if sequence.n_past == len(sequence.tokens):
                token = sequence.sample(self._ctx, row - 1)
                if sequence.accept(token):
                    self._release(sequence)

    def _fill(self, work: list[Work]) -> None:
        batch = self._batch
        i = 0
        for sequence, chunk in work:
            assert sequence.seq_id is not None
            last = len(chunk) - 1
            completes = sequence.n_past + len(chunk) == len(sequence.tokens)
            for j, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = sequence.n_past + j
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence.seq_id
                # Logits only where a token is sampled next: the end of a complete input.
                batch.logits[i] = j == last and completes
                i += 1
        assert i <= self._capacity
        batch.n_tokens = i

    def _release(self, sequence: Sequence) -> None:
        """Free an ended (or abandoned) sequence's KV cells, slot and sampler."""
        assert sequence.seq_id is not None
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        self._free_ids.append(sequence.seq_id)
        sequence.seq_id = None
        self._running.remove(sequence)
        self._retire(sequence)

    @staticmethod
    def _retire(sequence: Sequence) -> None:
        sequence.drop()
        sequence.close_sampler()

    def _recover(self, exc: Exception) -> None:
        log.error("llama.cpp decode step failed; failing its requests: %s", exc, exc_info=exc)
        self._fail_all(EngineError(f"the llama.cpp engine failed: {exc}"))
        # The context's state is unknown after a failed step: start from a fresh one.
        self._free_context()
        try:
            self._ctx, self._memory = self._new_context()
        except EngineError as rebuild:
            log.error("llama.cpp context could not be made again: %s", rebuild)
            with self._cond:
                self._broken = f"the llama.cpp engine is broken: {rebuild}"
                self._stopping = True

    def _free_context(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            llama_cpp.llama_free(ctx)

    def _fail_all(self, error: EngineError) -> None:
        with self._cond:
            lost = [*self._running, *self._waiting]
            self._waiting.clear()
        self._running.clear()
        self._free_ids = list(range(self._sequences - 1, -1, -1))
        for sequence in lost:
            sequence.seq_id = None
            sequence.fail(error)
            sequence.close_sampler()
