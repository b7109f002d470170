"""The OpenAI request bodies Tollgate serves: one model for both ends. The ingress validates a
request with it before it prices and routes it; infer validates the same body before it runs it.
What one end accepts, the other accepts, so no request is held, refused and refunded.

Strict where a request is priced: ``max_tokens`` (or its newer name ``max_completion_tokens``) is
a JSON integer, and the prompt is text. Lenient elsewhere: unknown fields are ignored, as
OpenAI-compatible servers do, so newer clients keep working; what we cannot honour (``n`` > 1,
several prompts) is refused rather than ignored.

Token-id prompts (``"prompt": [1, 2, 3]``) are refused at both ends, before any hold: ids mean
something to one tokenizer only, while a served model may run as a GGUF on an edge CPU and as
Hugging Face weights under vLLM elsewhere; an id outside the vocabulary aborts llama.cpp; and the
engines take text.

The ``openai`` package types responses as pydantic models (infer_fn/responses.py builds them) but
requests as TypedDicts of iterables, which pydantic validates into one-shot iterators: so the
request models are ours, with OpenAI's field names and limits."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

Endpoint = Literal["chat", "completions"]
PATHS: Final[Mapping[Endpoint, str]] = MappingProxyType(
    {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
)

# What a request that names no max_tokens is priced at and may generate (less when the prompt
# would not fit the model's context beside it): the ingress quotes it and sends it on to infer;
# the route policy estimates service time with it.
DEFAULT_MAX_TOKENS: Final = 4096

# Byte-level BPE tokenizers (GPT-2 style, SmolLM2's, Llama 3's) never make more tokens than the
# text has UTF-8 bytes, so bytes bound a prompt's tokens from above. A chat template adds a fixed
# part, a default system prompt included when the request has none (SmolLM2's is 22 tokens,
# Llama 3's date header about 30), and a few tokens per message (5 in SmolLM2's); a raw prompt
# gets at most a few special tokens (BOS). The quote is a worst case by construction.
CHAT_TEMPLATE_TOKENS: Final = 64
CHAT_TOKENS_PER_MESSAGE: Final = 8
PROMPT_SPECIAL_TOKENS: Final = 16

MaxTokens = Annotated[int, Field(strict=True, ge=1)]


class ContextExceeded(ValueError):
    """max_tokens the model's context window cannot hold: a 400 with OpenAI's code and param."""

    code: Final = "context_length_exceeded"
    param: Final = "max_tokens"


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None
    # vLLM's extension: the usage so far on every chunk. The ingress asks infer for both on
    # every stream (what it relays is then known even if infer dies mid-stream) and strips them
    # from what the client sees unless the client asked.
    continuous_usage_stats: bool | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as the chat template renders it: text parts joined."""
        content = self.content
        return "".join(p.text for p in content) if isinstance(content, list) else content or ""

    def for_template(self) -> dict[str, str]:
        """The flat {role, content} a chat template renders."""
        # Chat templates know "system"; OpenAI's newer "developer" role means the same.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text}


class OpenAIRequest(BaseModel):
    """What chat and completions requests share."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    max_tokens: MaxTokens | None = None
    # The newer name of max_tokens; either may be sent, this one wins.
    max_completion_tokens: MaxTokens | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def check_max_tokens(self, context_window: int) -> None:
        """A requested max_tokens leaves no room for the prompt at or beyond the window."""
        asked = self.requested_max_tokens
        if asked is not None and asked >= context_window:
            raise ContextExceeded(
                f"max_tokens is {asked}, but this model's context window is {context_window}."
            )

    def completion_limit(self, context_window: int) -> int:
        """The max_tokens the request is priced at and runs with: what it asked (checked as
        infer checks it), else the default, lowered so that the prompt still fits."""
        self.check_max_tokens(context_window)
        room = context_window - self.prompt_tokens_bound()
        return self.requested_max_tokens or max(1, min(DEFAULT_MAX_TOKENS, room))

    def prompt_tokens_bound(self) -> int:
        """An upper bound of the prompt's tokens, without the model's tokenizer."""
        raise NotImplementedError

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)

    def prompt_tokens_bound(self) -> int:
        size = sum(len(m.text.encode()) for m in self.messages)
        return CHAT_TEMPLATE_TOKENS + CHAT_TOKENS_PER_MESSAGE * len(self.messages) + size


class CompletionRequest(OpenAIRequest):
    # A list is OpenAI's batch form: accepted with one prompt, as we serve one per request.
    prompt: Annotated[str, Field(min_length=1)] | list[str]

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text_prompt(cls, prompt: Any) -> Any:
        if not isinstance(prompt, list):
            return prompt
        if any(isinstance(p, int | list) for p in prompt):
            raise PydanticCustomError(
                "token_ids", "token-id prompts are not served: send the prompt as text"
            )
        if len(prompt) != 1:
            raise PydanticCustomError(
                "one_prompt", "one prompt per request: a string, or a list of one string"
            )
        return prompt

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompt_tokens_bound(self) -> int:
        return len(self.text.encode()) + PROMPT_SPECIAL_TOKENS


MODELS: Final[Mapping[Endpoint, type[ChatRequest] | type[CompletionRequest]]] = MappingProxyType(
    {"chat": ChatRequest, "completions": CompletionRequest}
)
