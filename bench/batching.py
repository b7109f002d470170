"""The llama.cpp engine batching concurrent requests against serving them one after another, in
one run: aggregate tokens/s and time to first token at 1, 4 and 8 concurrent streaming clients.

Starts two `tollgate serve infer` processes on loopback, configured only through the environment
as Knative would: "sequential" decodes one sequence at a time (TOLLGATE_CONCURRENCY=1: the others
queue in the function), "batched" decodes up to 8 sequences per step (TOLLGATE_CONCURRENCY=8).
Rounds alternate between the two at each concurrency and repeat, and the batched/sequential
ratio is taken per pair of rounds (median), so load from other processes on a shared machine
drifts out of the comparison. Each client streams its requests back to back (chat, temperature
0, a story that runs to max_tokens), reading SSE with a thin client; tokens are the usage each
response reports. Also printed: tokens per CPU-second of the serving process (its threads' time
on a core, from /proc schedstat), which stays meaningful when other processes take the cores; the
share of the round its busiest thread (the decode loop) spent runnable but waiting for a core,
which tells a round starved by other load from a slow one; and the peak RSS.

    .venv/bin/python bench/batching.py [--rounds N] [--requests N] [--max-tokens N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.infer import over_http  # noqa: E402
from bench.machine import describe  # noqa: E402
from functions.auth import keys, senders  # noqa: E402

# Both servers check the capabilities this bench signs (as infer checks the ingress's); they take
# no events, so their trust file allows no sender.
WORK = Path(tempfile.mkdtemp(prefix="tollgate-batching-"))
KEYS = WORK / "keys"
TRUST = WORK / "trust.json"

CONCURRENCY = (1, 4, 8)
TOPICS = ("a robot who learns to paint", "a lighthouse keeper", "a lost dragon", "a tiny island")


@dataclass(frozen=True)
class Round:
    seconds: float
    tokens: int
    cpu_seconds: float
    # Of the thread that ran most: seconds runnable but waiting for a core (other processes').
    waited_seconds: float
    ttfts: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


class Server:
    def __init__(self, name: str, concurrency: int, threads: int | None) -> None:
        self.name = name
        port = _free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "TOLLGATE_CONCURRENCY": str(concurrency),
            "TOLLGATE_QUEUE_SIZE": "32",
            "TOLLGATE_QUEUE_TIMEOUT_SECONDS": "600",
            "TOLLGATE_IDLE_SECONDS": "0",
            keys.KEYS_ENV: str(KEYS),
            senders.TRUST_ENV: str(TRUST),
            senders.AUDIENCE_ENV: "bench",
            senders.DISCOVERY_ENV: "http://127.0.0.1:9",  # never asked: nobody may send events
        }
        if threads:
            env["TOLLGATE_ENGINE_THREADS"] = str(threads)
        tollgate = Path(sys.executable).with_name("tollgate")
        self.process = subprocess.Popen(
            [str(tollgate), "serve", "infer"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} infer process did not start")
            time.sleep(0.2)

    def schedstat(self) -> dict[str, tuple[float, float]]:
        """Per thread: (seconds on a core, seconds runnable waiting for one)."""
        threads = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                ran, waited, _ = (task / "schedstat").read_text().split()
            except FileNotFoundError:  # the thread ended
                continue
            threads[task.name] = (int(ran) / 1e9, int(waited) / 1e9)
        return threads

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stream(url: str, topic: str, max_tokens: int) -> tuple[float, int]:
    """One streamed chat request: (time to first text, completion tokens)."""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": f"Write a short story about {topic}."}
    ]
    run = over_http(url, max_tokens, KEYS, messages, timeout=900)
    return run.ttft, run.tokens


def run_round(server: Server, clients: int, per_client: int, max_tokens: int) -> Round:
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start.wait()
        for i in range(per_client):
            ttft, produced = stream(server.url, TOPICS[(index + i) % len(TOPICS)], max_tokens)
            with lock:
                ttfts.append(ttft)
                tokens[0] += produced

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for worker in workers:
        worker.start()
    before = server.schedstat()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - began
    after = server.schedstat()
    ran = {t: after[t][0] - before.get(t, (0.0, 0.0))[0] for t in after}
    busiest = max(ran, key=ran.__getitem__)
    waited = after[busiest][1] - before.get(busiest, (0.0, 0.0))[1]
    return Round(seconds, tokens[0], sum(ran.values()), waited, ttfts)


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ttft(runs: list[Round]) -> str:
    values = [t for run in runs for t in run.ttfts]
    return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"


def per_cpu_second(runs: list[Round]) -> float:
    return sum(r.tokens for r in runs) / sum(r.cpu_seconds for r in runs)


def waiting(runs: list[Round]) -> float:
    return sum(r.waited_seconds for r in runs) / sum(r.seconds for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="TOLLGATE_ENGINE_THREADS")
    args = parser.parse_args()
    keys.rotate(KEYS)
    TRUST.write_text('{"sinks": {}}', encoding="utf-8")

    console = Console(width=170)
    console.print(f"[bold]machine[/]: {describe()}")
    servers = {
        "sequential": Server("sequential", 1, args.threads),
        "batched": Server("batched", max(CONCURRENCY), args.threads),
    }
    try:
        for server in servers.values():  # load the model (a cold start is not what we measure)
            stream(server.url, TOPICS[0], 4)
        rounds: dict[tuple[str, int], list[Round]] = {}
        for _ in range(args.rounds):
            for clients in CONCURRENCY:
                for name, server in servers.items():
                    rounds.setdefault((name, clients), []).append(
                        run_round(server, clients, args.requests, args.max_tokens)
                    )
        peak = {name: server.peak_rss_mb() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.close()

    table = Table(
        title=(
            f"SmolLM2-135M-Instruct on llama.cpp, {args.rounds} rounds of {args.requests} "
            f"streamed requests per client, {args.max_tokens} tokens each"
        )
    )
    for column in (
        "clients",
        "tokens/s sequential",
        "tokens/s batched",
        "batched / sequential",
        "TTFT p50 / p99 sequential, s",
        "TTFT p50 / p99 batched, s",
        "tokens per CPU-s seq / batched",
        "decode thread waiting for a core, seq / batched",
    ):
        table.add_column(column, justify="right")
    for clients in CONCURRENCY:
        seq, bat = rounds[("sequential", clients)], rounds[("batched", clients)]
        ratio = statistics.median(
            b.tokens_per_second / s.tokens_per_second for s, b in zip(seq, bat, strict=True)
        )

        table.add_row(
            str(clients),
            f"{statistics.median(r.tokens_per_second for r in seq):.1f}",
            f"{statistics.median(r.tokens_per_second for r in bat):.1f}",
            f"{ratio:.2f}x",
            ttft(seq),
            ttft(bat),
            f"{per_cpu_second(seq):.0f} / {per_cpu_second(bat):.0f}",
            f"{waiting(seq):.0%} / {waiting(bat):.0%}",
        )
    console.print(table)
    console.print(
        f"peak RSS: sequential {peak['sequential']:.0f} MB, batched (8 sequences) "
        f"{peak['batched']:.0f} MB; engine threads: {args.threads or 'default'}; "
        f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
