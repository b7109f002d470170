"""A fast OpenAI-compatible upstream for bench/gateway.py: a canned answer, no model, so what is
measured is the gateway's own cost. Like the infer function it emits `inference.completed` for a
held request (to K_SINK, after answering), so holds are settled as in production.
Run: K_SINK=<ledger url> python bench/fast_upstream.py PORT"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, Response, request

from events import wire
from events.types import INFERENCE_COMPLETED
from functions.emit import Emitter
from functions.server import serve

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "SmolLM2-135M-Instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)


def create_app() -> Flask:
    app = Flask("fast-upstream")
    emitter = Emitter.from_env()
    background = ThreadPoolExecutor(max_workers=2)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        hold_id = request.headers.get(wire.HOLD_ID)
        if hold_id:
            data = {
                "hold_id": hold_id,
                "account_id": request.headers[wire.ACCOUNT_ID],
                "model": "smollm2-135m",
                "tier": request.headers.get(wire.TIER),
                "usage": USAGE,
            }
            background.submit(emitter.emit, INFERENCE_COMPLETED, "/bench/upstream", data)
        return Response(ANSWER, mimetype="application/json")

    @app.get("/readyz")
    def ready() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


if __name__ == "__main__":
    serve(create_app(), port=int(sys.argv[1]), host="127.0.0.1")
