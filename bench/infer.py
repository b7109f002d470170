"""Inference speed: the llama.cpp engine called directly vs through infer_fn over HTTP, in one run.

Runs alternate (direct, HTTP, direct, ...) on one loaded model; each HTTP run is compared with the
direct run just before it and the median of those paired ratios is reported, so load from other
processes on a shared machine drifts out of the comparison. The HTTP runs read the SSE stream with
a thin client in this same process: what a client does with each chunk is its cost, not infer_fn's
(the official client is used for the cold start). Also measured: the cold start (the first request
loads the model) and the peak resident memory of this process with the default model loaded.

    .venv/bin/python bench/infer.py [--runs N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import requests
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.table import Table
from waitress.server import create_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from bench.trust import bench_capability
from events import wire
from events.capability import sign
from functions.auth.keys import SigningKey, VerifyKeys, rotate
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy
from functions.auth.senders import Senders
from infer_fn.app import create_app
from infer_fn.config import DEFAULT_MODEL_NAME, InferConfig
from infer_fn.engines.base import SamplingParams
from infer_fn.engines.llamacpp import LlamaCppEngine

PROMPT = "Write a short story about a robot who learns to paint."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


@dataclass(frozen=True)
class Run:
    ttft: float
    total: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.total


def direct(engine: LlamaCppEngine, max_tokens: int) -> Run:
    started = time.perf_counter()
    gen = engine.chat(
        [{"role": "user", "content": PROMPT}], SamplingParams(max_tokens=max_tokens, temperature=0)
    )
    first = None
    for _ in gen:
        first = first or time.perf_counter()
    ended = time.perf_counter()
    return Run((first or ended) - started, ended - started, gen.completion_tokens)


def capability(keys: Path, max_tokens: int) -> dict[str, str]:
    """What the ingress sends with each attempt (minted before the clock starts: its cost is the
    gateway's, bench/gateway.py and bench/trust.py)."""
    claims = bench_capability("bench:1", "local", f"bench-{time.monotonic_ns()}", max_tokens)
    return {wire.CAPABILITY: sign(claims, SigningKey(keys).get())}


def over_http(
    url: str,
    max_tokens: int,
    keys: Path,
    messages: list[ChatCompletionMessageParam] = MESSAGES,
    timeout: float = 120,
) -> Run:
    """One streamed chat request read with a thin SSE client; tokens are its reported usage."""
    headers = capability(keys, max_tokens)
    body = {
        "model": DEFAULT_MODEL_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    with requests.post(url, json=body, headers=headers, stream=True, timeout=timeout) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines(chunk_size=None):
            if first is None and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter()
            elif line.startswith(b'data: {"id"') and b'"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    ended = time.perf_counter()
    return Run((first or ended) - started, ended - started, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    console = Console(width=120)
    console.print(f"[bold]machine[/]: {describe()}")
    config = InferConfig(idle_seconds=0)
    engine = LlamaCppEngine(
        config.resolved_model_path(), config.model_name, n_ctx=config.n_ctx, threads=config.threads
    )
    keys = Path(tempfile.mkdtemp()) / "keys"
    rotate(keys)
    # Infer takes no events: nobody may POST it one (its sender check is never reached here).
    nobody = Senders(TokenVerifier(Discovery("http://127.0.0.1:9"), "infer"), SenderPolicy("-"))
    server = create_server(
        create_app(config, senders=nobody, capability_keys=VerifyKeys(keys), engine=engine),
        host="127.0.0.1",
        port=0,
        threads=config.server_threads,
    )
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}/v1"
    client = openai.OpenAI(base_url=base, api_key="-", max_retries=0)

    # The first request finds no model: it loads it (the cold start a scaled-to-zero pod pays).
    cold = client.chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL_NAME, messages=MESSAGES, max_tokens=1, extra_headers=capability(keys, 1)
    )
    cold_seconds = int(cold.headers[wire.COLD_START_MS]) / 1000
    direct(engine, 8)  # warm the prompt cache the same way for both paths

    runs: dict[str, list[Run]] = {"direct": [], "http": []}
    for _ in range(args.runs):
        runs["direct"].append(direct(engine, args.max_tokens))
        runs["http"].append(over_http(f"{base}/chat/completions", args.max_tokens, keys))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def median(path: str, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs[path]))

    table = Table(title=f"SmolLM2-135M-Instruct, {args.runs} runs of {args.max_tokens} tokens")
    table.add_column("measure")
    table.add_column("engine directly", justify="right")
    table.add_column("infer_fn over HTTP", justify="right")
    table.add_column("HTTP / direct", justify="right")
    paired = statistics.median(
        h.tokens_per_second / d.tokens_per_second
        for d, h in zip(runs["direct"], runs["http"], strict=True)
    )
    table.add_row(
        "tokens per second (median)",
        f"{median('direct', 'tokens_per_second'):.1f}",
        f"{median('http', 'tokens_per_second'):.1f}",
        f"{paired:.3f} (aim ≥ 0.97)",
    )
    ttft_direct = median("direct", "ttft") * 1000
    ttft_http = median("http", "ttft") * 1000
    table.add_row(
        "time to first token, ms (median)",
        f"{ttft_direct:.1f}",
        f"{ttft_http:.1f}",
        f"+{ttft_http - ttft_direct:.1f} ms",
    )
    tokens = {path: {run.tokens for run in runs[path]} for path in runs}
    table.add_row("completion tokens per run", str(tokens["direct"]), str(tokens["http"]), "")
    table.add_row("cold start (model load), s", "", f"{cold_seconds:.3f}", "")
    table.add_row("peak RSS with model loaded, MB", "", f"{peak_mb:.0f} (aim < 500)", "")
    console.print(table)
    server.close()


if __name__ == "__main__":
    main()
