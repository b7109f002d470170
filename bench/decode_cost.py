"""What one llama.cpp decode step costs in C, by batch size: is a token cheaper beside others?

Batching can only raise tokens/s on a CPU if a token costs less CPU when it shares a decode with
other sequences' tokens. This measures that directly, without HTTP or Python in the way: a context
made as the engine makes it (one KV stream per sequence, no flash attention), a 40-token prompt
read into each of 8 sequences, then decode steps of 1, 4 and 8 sequences one token each (logits
for every row, as sampling needs), with 1 thread (the engine's default on 2 cores; `--threads 1,2`
adds 2). Besides the shipped GGUF (Q4_1) it
measures the same weights requantized by llama.cpp itself (`llama_model_quantize`, into a temp
dir; nothing is downloaded) to Q4_0, Q8_0 and F16, whose CPU kernels multiply several rows at once.

Then the engine's own loop (`DecodeLoop`, in process, 1/4/8 concurrent 64-token chats): the share
of its wall time spent inside `llama_decode`, which says whether time goes anywhere else.

CPU milliseconds per token (process CPU time) stay meaningful on a shared machine where wall time
does not; with 2 threads they include the time threads spin waiting for each other.

    .venv/bin/python bench/decode_cost.py [--steps N] [--threads 1,2] [--quants Q4_0,Q8_0,F16]
                                          [--no-loop]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from infer_fn.engines.base import SamplingParams
from infer_fn.engines.llamacpp import LlamaCppEngine
from infer_fn.model_file import default_model_path

SEQUENCES = 8
BATCHES = (1, 4, 8)
PROMPT_TOKENS = 40


@dataclass(frozen=True)
class Cost:
    wall_ms_per_step: float
    cpu_ms_per_token: float


def quiet_llama() -> None:
    def drop(level: int, text: bytes, user_data: object) -> None:
        pass

    callback = llama_cpp.llama_log_callback(drop)
    quiet_llama.callback = callback  # type: ignore[attr-defined]  # kept alive for C
    llama_cpp.llama_log_set(callback, None)


def requantize(source: Path, folder: Path, name: str) -> Path:
    target = folder / f"{name}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not requantize {source} to {name}")
    return target


def measure(path: Path, threads: int, steps: int) -> dict[str, Cost]:
    model = llama_cpp.llama_model_load_from_file(
        str(path).encode(), llama_cpp.llama_model_default_params()
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 512 * SEQUENCES
    params.n_batch = params.n_ubatch = 64
    params.n_seq_max = SEQUENCES
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    memory = llama_cpp.llama_get_memory(ctx)
    costs: dict[str, Cost] = {}
    try:

        def timed(rows: list[tuple[int, int, int]]) -> tuple[float, float]:
            """Decode rows of (sequence, position, token), each with logits."""
            for i, (sequence, position, token) in enumerate(rows):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence
                batch.logits[i] = True
            batch.n_tokens = len(rows)
            wall, cpu = time.perf_counter(), time.process_time()
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return time.perf_counter() - wall, time.process_time() - cpu

        prompt = [(0, p, 100 + p) for p in range(PROMPT_TOKENS)]
        prefill = []
        for _ in range(4):
            llama_cpp.llama_memory_clear(memory, True)
            prefill.append(timed(prompt))
        costs["prompt"] = _cost(prefill[1:], PROMPT_TOKENS)  # the first one warms up
        llama_cpp.llama_memory_clear(memory, True)
        for sequence in range(SEQUENCES):
            timed([(sequence, p, 100 + p) for p in range(PROMPT_TOKENS)])
        for size in BATCHES:
            samples = []
            for step in range(steps):
                position = PROMPT_TOKENS + step
                samples.append(timed([(s, position, 200 + step) for s in range(size)]))
            costs[f"batch {size}"] = _cost(samples, size)
            for sequence in range(size):
                llama_cpp.llama_memory_seq_rm(memory, sequence, PROMPT_TOKENS, -1)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return costs


def _cost(samples: list[tuple[float, float]], tokens: int) -> Cost:
    return Cost(
        wall_ms_per_step=statistics.median(w for w, _ in samples) * 1000,
        cpu_ms_per_token=statistics.median(c for _, c in samples) * 1000 / tokens,
    )


def loop_share(path: Path, clients: int) -> tuple[float, float, int]:
    """(wall seconds, seconds inside llama_decode, tokens evaluated) for `clients` chats."""
    inside = [0.0, 0]
    real: Callable[[llama_cpp.llama_context_p, llama_cpp.llama_batch], int]
    real = llama_cpp.llama_decode

    def counted(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> int:
        began = time.perf_counter()
        try:
            return real(ctx, batch)
        finally:
            inside[0] += time.perf_counter() - began
            inside[1] += batch.n_tokens

    engine = LlamaCppEngine(path, "bench", n_ctx=2048, threads=1, sequences=SEQUENCES)
    engine.load()
    llama_cpp.llama_decode = counted  # what the loop calls, looked up per call
    try:

        def chat(topic: str) -> None:
            messages = [{"role": "user", "content": f"Write a short story about {topic}."}]
            for _ in engine.chat(messages, SamplingParams(max_tokens=64, temperature=0)):
                pass

        workers = [threading.Thread(target=chat, args=(f"island {i}",)) for i in range(clients)]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - began, inside[0], int(inside[1])
    finally:
        llama_cpp.llama_decode = real
        engine.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="decode steps per batch size")
    parser.add_argument("--threads", default="1", help="llama.cpp thread counts to measure")
    parser.add_argument("--quants", default="Q4_0,Q8_0,F16", help="requantized copies to add")
    parser.add_argument("--no-loop", action="store_true", help="skip the engine loop's share")
    args = parser.parse_args()
    quiet_llama()
    console = Console(width=150)
    console.print(f"[bold]machine[/]: {describe()}")
    shipped = default_model_path()
    with tempfile.TemporaryDirectory(prefix="tollgate-quants-") as folder:
        models = {"Q4_1 (shipped)": shipped}
        for name in filter(None, args.quants.split(",")):
            models[name] = requantize(shipped, Path(folder), name)
        table = Table(
            title=(
                "llama_decode alone: CPU ms per token (wall ms per step), "
                f"{PROMPT_TOKENS}-token prompt then 1 token per sequence per step"
            )
        )
        for column in ("model", "threads", "prompt", *(f"batch {b}" for b in BATCHES)):
            table.add_column(column, justify="right")
        table.add_column("CPU per token, batch 4 / batch 1", justify="right")
        for name, path in models.items():
            for threads in (int(t) for t in args.threads.split(",")):
                costs = measure(path, threads, args.steps)
                table.add_row(
                    name,
                    str(threads),
                    *(
                        f"{c.cpu_ms_per_token:.1f} ({c.wall_ms_per_step:.0f})"
                        for c in costs.values()
                    ),
                    f"{costs['batch 4'].cpu_ms_per_token / costs['batch 1'].cpu_ms_per_token:.2f}",
                )
        console.print(table)
    if not args.no_loop:
        loop = Table(
            title="The engine's DecodeLoop (1 thread, 64-token chats): time in llama_decode"
        )
        for column in ("clients", "wall s", "inside llama_decode", "tokens evaluated"):
            loop.add_column(column, justify="right")
        for clients in BATCHES:
            wall, inside, tokens = loop_share(shipped, clients)
            loop.add_row(str(clients), f"{wall:.2f}", f"{inside / wall:.1%}", str(tokens))
        console.print(loop)


if __name__ == "__main__":
    main()
