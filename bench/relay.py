"""What reading usage off a relayed stream costs the ingress, per server-sent event.

Run: `.venv/bin/python bench/relay.py`. Feeds infer-shaped chat chunks carrying continuous usage
through router_fn/relay.py's StreamRelay — as the client asked nothing (usage stripped from each
chunk, the usage chunk dropped) and as it asked for both (passed as sent) — against passing the
same bytes through untouched, in one run. Per event, next to what one token takes to generate on
this machine's CPU engine (about 25 ms at 40 tokens/s, bench/infer.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from router_fn.relay import StreamRelay  # noqa: E402

EVENTS = 20_000
TOKEN_MS = 25.0


def stream(n: int) -> list[bytes]:
    chunks = []
    for i in range(1, n + 1):
        body = {
            "id": "chatcmpl-0123456789abcdef0123456789abcdef",
            "object": "chat.completion.chunk",
            "created": 1_800_000_000,
            "model": "SmolLM2-135M-Instruct",
            "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
            "usage": {"prompt_tokens": 31, "completion_tokens": i, "total_tokens": 31 + i},
        }
        chunks.append(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")
    return chunks


def per_event_us(chunks: list[bytes], relay: StreamRelay | None) -> float:
    started = time.perf_counter()
    out = 0
    for chunk in chunks:
        out += len(relay.feed(chunk) if relay is not None else chunk)
    assert out > 0
    return (time.perf_counter() - started) / len(chunks) * 1e6


def main() -> None:
    console = Console()
    console.print(describe())
    chunks = stream(EVENTS)
    rows = [
        ("bytes passed through (no relay)", per_event_us(chunks, None)),
        (
            "usage read, stripped (client asked none)",
            per_event_us(chunks, StreamRelay(chunk_usage=False, usage_chunk=False)),
        ),
        (
            "usage read, passed (client asked for it)",
            per_event_us(chunks, StreamRelay(chunk_usage=True, usage_chunk=True)),
        ),
    ]
    table = Table(title=f"StreamRelay, {EVENTS} events", title_justify="left")
    for column in ("path", "µs per event", f"share of one token ({TOKEN_MS:.0f} ms)"):
        table.add_column(column, justify="right")
    for name, us in rows:
        table.add_row(name, f"{us:.2f}", f"{us / (TOKEN_MS * 1000):.4%}")
    console.print(table)


if __name__ == "__main__":
    main()
