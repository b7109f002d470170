"""What the ingress reads of an OpenAI request: the model, the prompt's size, max_tokens, stream.

The body is forwarded to the infer function as sent (but for ``model`` and ``max_tokens``), so
only the fields the ingress prices and routes by are modelled; the rest passes through."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Byte-level BPE tokenizers (GPT-2 style, SmolLM2's and Llama 3's) never make more tokens than
# the text has UTF-8 bytes, so bytes bound the prompt's tokens from above; the chat template adds
# a few tokens per message. The quote is a worst case by construction.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_BASE = 16
DEFAULT_MAX_TOKENS = 4096

Kind = Literal["chat", "completions"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, strict=True, ge=1)
    max_completion_tokens: int | None = Field(default=None, strict=True, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


def prompt_tokens_bound(request: ChatRequest | CompletionRequest) -> int:
    """An upper bound of the prompt's tokens, without the model's tokenizer."""
    if isinstance(request, ChatRequest):
        size = sum(
            len(json.dumps(m.get("content"), ensure_ascii=False).encode()) for m in request.messages
        )
        return TEMPLATE_TOKENS_BASE + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages) + size
    prompt = request.prompt
    if isinstance(prompt, str):
        return len(prompt.encode()) + TEMPLATE_TOKENS_BASE
    if prompt and isinstance(prompt[0], int):
        return len(prompt)  # already token ids
    if prompt and isinstance(prompt[0], list):
        return max(len(p) for p in prompt if isinstance(p, list))
    return max((len(p.encode()) for p in prompt if isinstance(p, str)), default=0) + 16


def completion_limit(request: OpenAIRequest, context_length: int) -> int:
    """The max_tokens the request runs with (and is quoted at): what it asked, else a default,
    never more than the model's context."""
    asked = request.max_completion_tokens or request.max_tokens
    return min(asked or DEFAULT_MAX_TOKENS, context_length)
