"""``POST /v1/warmup``: load the model now, generate nothing (events/warmup.py).

A router calls it when a cold tier would meet a latency budget once warm, so the next requests
find the model loaded. It is its own small route so the same caller check as the inference
routes can guard it (loading a GPU model is not free). It answers once the engine is loaded:
503 if it cannot be."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from events.warmup import WARMUP_PATH, WarmedUp
from functions.errors import Unavailable
from infer_fn.engines.base import EngineError
from infer_fn.lifecycle import EngineHost


def warmup_blueprint(host: EngineHost, model: str) -> Blueprint:
    blueprint = Blueprint("warmup", __name__)

    @blueprint.post(WARMUP_PATH)
    def warm_up() -> Response:
        try:
            seconds = host.warm_up()
        except EngineError as exc:
            raise Unavailable(f"The engine could not be loaded: {exc}") from exc
        cold = None if seconds is None else round(seconds * 1000)
        return jsonify(WarmedUp(model=model, cold_start_ms=cold).model_dump())

    return blueprint
