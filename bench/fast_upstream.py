"""A fast OpenAI-compatible upstream for bench/gateway.py: a canned answer, no model, so what is
measured is the gateway's own cost. Like the infer function it checks the attempt's capability
(signature and cluster: what infer pays per request) and meters as infer does: each request's
`inference.completed` carrying the capability is owed in a durable outbox before the answer
(`TOLLGATE_OUTBOX_DIR`), and the outbox delivers what is due to K_SINK (with its token) as one
`inference.usage` batch (infer_fn/metering.py's USAGE_BATCHING); `BENCH_METER_BATCH=0` delivers
one event per request instead, for comparison. Unlike infer it lets a capability be reused (the
direct figure reuses one, and is not metered).
Run: K_SINK=<ledger url> TOLLGATE_CAPABILITY_KEYS=... TOLLGATE_TOKEN_DIR=... \
     TOLLGATE_OUTBOX_DIR=... python bench/fast_upstream.py PORT"""

from __future__ import annotations

import json
import os
import sys

from flask import Flask, Response, request

from events import wire
from events.capability import verify
from events.types import INFERENCE_COMPLETED
from functions.auth.keys import VerifyKeys, keys_dir_from_env
from functions.emit import Emitter
from functions.outbox import SINK, OutboxSettings, batched_sink_route, sink_route
from functions.server import serve
from infer_fn.metering import METERING_LINGER_S, USAGE_BATCHING

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
    batched = os.environ.get("BENCH_METER_BATCH", "1") != "0"
    route = (
        batched_sink_route(emitter, {INFERENCE_COMPLETED: USAGE_BATCHING})
        if batched
        else sink_route(emitter)
    )
    settings = OutboxSettings.from_env("fast-upstream", linger_s=METERING_LINGER_S)
    outbox = settings.open("fast-upstream", {SINK: route})

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
            outbox.put(INFERENCE_COMPLETED, "/bench/upstream", data, id=capability.attempt)
        return Response(ANSWER, mimetype="application/json")

    @app.get("/readyz")
    def ready() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


if __name__ == "__main__":
    serve(create_app(), port=int(sys.argv[1]), host="127.0.0.1")
