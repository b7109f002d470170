"""Small pieces on their own: stop sequences, admission, configuration, the default model file."""

from __future__ import annotations

import threading

import pytest

from infer_fn.admission import Admission, QueueFull
from infer_fn.config import EngineKind, InferConfig
from infer_fn.engines.stops import StopMatcher
from infer_fn.model_file import default_model_path


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        scan = matcher.feed(piece)
        out += scan.text
        if scan.stopped:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ([], ["a", "b"], ("ab", False)),
        (["."], [" Paris", ".", " Then"], (" Paris", True)),
        (["<|im_end|>"], ["Hi", "<|im", "_end|>", "x"], ("Hi", True)),
        (["<|im_end|>"], ["a <", "b"], ("a <b", False)),
        (["END", "ND!"], ["E", "N", "D"], ("", True)),
        (["xyz"], ["abxy"], ("abxy", False)),
    ],
)
def test_stop_sequences_split_across_pieces(
    stops: list[str], pieces: list[str], expected: tuple[str, bool]
) -> None:
    assert _run(stops, pieces) == expected


def test_held_back_text_is_not_streamed_early() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.feed("hello </").text == "hello "
    assert matcher.feed("b>").text == "</b>"


def test_admission_queues_then_refuses() -> None:
    admission = Admission(concurrency=1, queue_size=1, timeout=5)
    admission.acquire()
    admitted = threading.Event()

    def waiter() -> None:
        admission.acquire()
        admitted.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    while admission.waiting == 0:
        threading.Event().wait(0.01)
    with pytest.raises(QueueFull):
        admission.acquire()
    admission.release()
    assert admitted.wait(5)
    thread.join()
    assert (admission.running, admission.waiting) == (1, 0)


def test_admission_times_out_a_waiter() -> None:
    admission = Admission(concurrency=1, queue_size=4, timeout=0.05)
    admission.acquire()
    with pytest.raises(QueueFull, match="within"):
        admission.acquire()
    assert admission.waiting == 0


def test_config_from_env() -> None:
    config = InferConfig.from_env(
        {
            "TOLLGATE_ENGINE": "openai-upstream",
            "TOLLGATE_UPSTREAM_URL": "http://127.0.0.1:8000/",
            "TOLLGATE_MODEL_NAME": "llama-3.1-8b",
            "TOLLGATE_IDLE_SECONDS": "30",
            "TOLLGATE_QUEUE_SIZE": "0",
            "TOLLGATE_TIER": "regional",
            "TOLLGATE_CLUSTER": "fra-1",
        }
    )
    assert config.engine is EngineKind.OPENAI_UPSTREAM
    assert config.upstream_url == "http://127.0.0.1:8000"
    assert (config.model_name, config.idle_seconds, config.queue_size) == ("llama-3.1-8b", 30, 0)
    assert config.concurrency == 32  # vLLM batches: many requests at once by default
    assert (config.tier, config.cluster) == ("regional", "fra-1")
    assert InferConfig.from_env({}).concurrency == 4  # llama.cpp decodes 4 sequences at once


@pytest.mark.parametrize(
    "env",
    [
        {"TOLLGATE_ENGINE": "tensorrt"},
        {"TOLLGATE_ENGINE": "openai-upstream"},
        {"TOLLGATE_CONCURRENCY": "0"},
        {"TOLLGATE_IDLE_SECONDS": "-1"},
        {"TOLLGATE_MAX_BODY_BYTES": "lots"},
    ],
)
def test_bad_config_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        InferConfig.from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TOLLGATE_ENGINE": "tensorrt"}, "TOLLGATE_ENGINE: Input should be 'llamacpp' or"),
        ({"TOLLGATE_ENGINE": "openai-upstream"}, "openai-upstream needs TOLLGATE_UPSTREAM_URL"),
        ({"TOLLGATE_CONCURRENCY": "0"}, "TOLLGATE_CONCURRENCY: Input should be greater than"),
        ({"TOLLGATE_MAX_BODY_BYTES": "lots"}, "TOLLGATE_MAX_BODY_BYTES: Input should be a valid"),
        ({"TOLLGATE_ENGINE_THREADS": "0"}, "TOLLGATE_ENGINE_THREADS: Input should be greater"),
    ],
)
def test_bad_config_names_the_variable_and_what_was_set(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match="invalid infer configuration") as refused:
        InferConfig.from_env(env)
    assert named in str(refused.value)
    assert "default factory" not in str(refused.value)  # only the variable that is wrong


def test_only_from_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_TIER", "regional")
    monkeypatch.setenv("TOLLGATE_ENGINE_THREADS", " 3 ")
    monkeypatch.setenv("TOLLGATE_CLUSTER", "")  # set but empty: unset
    assert InferConfig().tier == "edge"
    config = InferConfig.from_env()
    assert (config.tier, config.threads, config.cluster) == ("regional", 3, "local")
    with pytest.raises(ValueError):
        InferConfig(tierr="x")  # type: ignore[call-arg]  # a misspelt setting is refused


def test_default_model_ships_in_the_package() -> None:
    path = default_model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert InferConfig().resolved_model_path() == path
