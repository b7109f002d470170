"""``POST /v1/warmup``: the model loads without generating; a second call finds it warm; an
engine that cannot load answers 503; whole responses report first-token times."""

from __future__ import annotations

from events import wire
from events.warmup import WARMUP_PATH, WarmedUp
from infer_fn.config import InferConfig
from infer_fn.engines.base import EngineError
from tests.infer.conftest import create_app
from tests.infer.fakes import ScriptedEngine


def test_a_warm_up_loads_without_generating(config: InferConfig) -> None:
    engine = ScriptedEngine(["a", "b"], name="scripted", load_seconds=0.05)
    client = create_app(config, engine=engine).test_client()
    first = client.post(WARMUP_PATH)
    assert first.status_code == 200
    warmed = WarmedUp.model_validate(first.get_json())
    assert warmed.cold_start_ms is not None and warmed.cold_start_ms >= 50
    assert (engine.loads, engine.generations) == (1, [])
    again = WarmedUp.model_validate(client.post(WARMUP_PATH).get_json())
    assert again.cold_start_ms is None and engine.loads == 1


def test_an_engine_that_cannot_load_answers_503(config: InferConfig) -> None:
    class Broken(ScriptedEngine):
        def load(self) -> None:
            raise EngineError("no GPU memory")

    client = create_app(config, engine=Broken(["a"])).test_client()
    answer = client.post(WARMUP_PATH)
    assert answer.status_code == 503
    assert "no GPU memory" in answer.get_json()["error"]["message"]


def test_whole_responses_report_time_to_first_token_and_prefill(config: InferConfig) -> None:
    client = create_app(config, engine=ScriptedEngine(["a", "b", "c"])).test_client()
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.get_json()
    ttft, prefill = int(answer.headers[wire.TTFT_MS]), int(answer.headers[wire.PREFILL_MS])
    assert 0 <= prefill <= ttft
