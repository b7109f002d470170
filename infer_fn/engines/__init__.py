"""Inference engines behind one interface, chosen by `TOLLGATE_ENGINE`."""

from __future__ import annotations

from infer_fn.config import EngineKind, InferConfig
from infer_fn.engines.base import Engine


def build_engine(config: InferConfig) -> Engine:
    # Adapters are imported on demand: a vLLM pod need not load the llama.cpp shared library.
    if config.engine is EngineKind.LLAMACPP:
        from infer_fn.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            config.resolved_model_path(),
            config.model_name,
            n_ctx=config.n_ctx,
            threads=config.threads,
            sequences=config.concurrency,
        )
    from infer_fn.engines.openai_upstream import OpenAIUpstreamEngine

    if config.upstream_url is None:
        raise ValueError("the openai-upstream engine needs TOLLGATE_UPSTREAM_URL")
    return OpenAIUpstreamEngine(
        config.upstream_url,
        config.model_name,
        upstream_model=config.upstream_model,
        load_timeout=config.load_timeout_seconds,
        request_timeout=config.request_timeout_seconds,
        connections=config.concurrency,
    )
