"""Request bodies of the OpenAI endpoints we serve, validated with pydantic.

Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients keep working;
fields we cannot honour (n > 1) are refused rather than silently ignored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from infer_fn.engines.base import SamplingParams

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# Completions' default when the client sets no limit (OpenAI's and llama.cpp's legacy default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def for_template(self) -> dict[str, str]:
        """The flat {role, content} a chat template renders; text parts are joined."""
        content = self.content
        text = "".join(p.text for p in content) if isinstance(content, list) else content or ""
        # Chat templates know "system"; OpenAI's newer "developer" role means the same.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
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
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=self.stops(),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
        )


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    # The newer name of max_tokens; either may be sent.
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def params(self) -> SamplingParams:
        return self.sampling(self.max_completion_tokens or self.max_tokens)


class CompletionRequest(_Request):
    # A list is accepted only as OpenAI's one-element batch: we serve one prompt per request.
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )

    def params(self) -> SamplingParams:
        return self.sampling(self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS)

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
