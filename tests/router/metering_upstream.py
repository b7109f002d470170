"""An upstream that meters as infer does, for the lease race tests (run as its own process:
``python -m tests.router.metering_upstream PORT``).

Like infer it serves only attempts with a valid capability (signature, model, ``max_tokens``
within the bound), answers with usage, and owes ``inference.completed`` carrying the capability
in a durable outbox (``METER_OUTBOX_DIR``) before answering, delivered to K_SINK (with its token)
as infer delivers it: what is due in one ``inference.usage`` batch (infer_fn/metering.py), retried
until the ledger takes it; each is due a little later than owed, so that captures race the
ingress's lease renewals and returns. Each report it owed is a line of ``METER_LOG`` (JSON: the
attempt, its hold, the usage), which the test holds the journal to. Usage: ``METER_EXACT=1`` uses
all of the worst case (the prompt bound and every token), otherwise a seeded share of it. A request
whose first message reads ``wait <seconds>`` is answered that much later (a request that keeps
running)."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from events import wire
from events.capability import CapabilityError, verify
from events.openai import ChatRequest
from events.types import INFERENCE_COMPLETED
from functions.auth.keys import VerifyKeys, keys_dir_from_env
from functions.emit import Emitter
from functions.outbox import SINK, OutboxSettings, batched_sink_route
from functions.server import serve
from infer_fn.metering import METERING_LINGER_S, USAGE_BATCHING


def create_app() -> Flask:
    app = Flask("metering-upstream")
    emitter = Emitter.from_env()
    keys = VerifyKeys(keys_dir_from_env())
    route = batched_sink_route(emitter, {INFERENCE_COMPLETED: USAGE_BATCHING})
    settings = OutboxSettings(
        Path(os.environ["METER_OUTBOX_DIR"]), max_backoff_s=0.5, linger_s=METERING_LINGER_S
    )
    outbox = settings.open("metering-upstream", {SINK: route})
    exact = os.environ.get("METER_EXACT") == "1"
    log_path = os.environ["METER_LOG"]
    log_lock = threading.Lock()
    served: set[str] = set()
    chance = random.Random(int(os.environ.get("METER_SEED", "13")))

    def report(data: dict[str, Any], attempt: str) -> None:
        delay = chance.uniform(0, 0.05)
        outbox.put(INFERENCE_COMPLETED, "/tests/upstream", data, id=attempt, delay_s=delay)
        with log_lock, open(log_path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"attempt": attempt, **data, "capability": None}) + "\n")

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        token = request.headers.get(wire.CAPABILITY, "")
        try:
            capability = verify(token, keys.get(), audience=None)
        except CapabilityError as exc:
            return Response(json.dumps({"error": {"message": str(exc)}}), status=401)
        body = ChatRequest.model_validate(request.get_json())
        limit = body.max_tokens or 1
        if capability.attempt in served or limit > capability.max_tokens:
            return Response('{"error": {"message": "refused"}}', status=409)
        served.add(capability.attempt)
        bound = body.prompt_tokens_bound()
        if exact:
            usage = {"prompt_tokens": bound, "completion_tokens": limit}
        else:
            usage = {"prompt_tokens": bound // 2, "completion_tokens": chance.randint(1, limit)}
        data = {
            "hold_id": capability.hold_id,
            "account_id": capability.account_id,
            "model": capability.model,
            "tier": capability.tier,
            "cluster": capability.cluster,
            "usage": usage,
            "capability": token,
        }
        time.sleep(_delay_s(body))
        report(data, capability.attempt)
        answer = {
            "object": "chat.completion",
            "model": capability.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
            "usage": {**usage, "total_tokens": sum(usage.values())},
        }
        return Response(json.dumps(answer), mimetype="application/json")

    @app.get("/readyz")
    def ready() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


def _delay_s(body: ChatRequest) -> float:
    words = body.messages[0].text.split()
    return float(words[1]) if len(words) == 2 and words[0] == "wait" else 0.0


if __name__ == "__main__":
    serve(create_app(), port=int(sys.argv[1]), host="127.0.0.1")
