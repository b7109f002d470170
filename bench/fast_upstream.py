"""A fast OpenAI-compatible upstream for bench/gateway.py: a canned answer, no model, so what is
measured is the gateway's own cost. Like the infer function it checks the attempt's capability
(signature and cluster: what infer pays per request) and emits `inference.completed` carrying it
(to K_SINK, with its token, after answering), so holds are settled as in production. Unlike
infer it lets a capability be reused (the direct figure reuses one).
Run: K_SINK=<ledger url> TOLLGATE_CAPABILITY_KEYS=... TOLLGATE_TOKEN_DIR=... \
     python bench/fast_upstream.py PORT"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, Response, request

from events import wire
from events.capability import verify
from events.types import INFERENCE_COMPLETED
from functions.auth.keys import VerifyKeys, keys_dir_from_env
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
    keys = VerifyKeys(keys_dir_from_env())
    background = ThreadPoolExecutor(max_workers=2)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        token = request.headers.get(wire.CAPABILITY, "")
        capability = verify(token, keys.get(), audience="regional-paris-1")
        if capability.attempt != "direct":
            data = {
                "hold_id": capability.hold_id,
                "account_id": capability.account_id,
                "model": "smollm2-135m",
                "tier": capability.tier,
                "cluster": capability.cluster,
                "usage": USAGE,
                "capability": token,
            }
            background.submit(emitter.emit, INFERENCE_COMPLETED, "/bench/upstream", data)
        return Response(ANSWER, mimetype="application/json")

    @app.get("/readyz")
    def ready() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


if __name__ == "__main__":
    serve(create_app(), port=int(sys.argv[1]), host="127.0.0.1")
