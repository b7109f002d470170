"""Response bodies and stream chunks, built from the `openai` package's own types so what we send
is exactly what the official client parses."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from events.openai import Endpoint
from infer_fn.engines.base import FinishReason


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@dataclass(frozen=True)
class Envelope:
    """What every chunk of one response shares."""

    endpoint: Endpoint
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, endpoint: Endpoint, model: str) -> Envelope:
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        return cls(endpoint, model, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def full(
        self, text: str, finish: FinishReason, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        used = _usage(prompt_tokens, completion_tokens)
        body: ChatCompletion | Completion
        if self.endpoint == "chat":
            message = ChatCompletionMessage(role="assistant", content=text)
            body = ChatCompletion(
                id=self.id,
                object="chat.completion",
                created=self.created,
                model=self.model,
                choices=[Choice(index=0, message=message, finish_reason=finish)],
                usage=used,
            )
        else:
            choice = CompletionChoice(index=0, text=text, finish_reason=finish)
            body = Completion(
                id=self.id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=[choice],
                usage=used,
            )
        return body.model_dump(mode="json", exclude_unset=True)

    def chunk(
        self,
        text: str | None,
        finish: FinishReason | None = None,
        *,
        first: bool = False,
        usage: tuple[int, int] | None = None,
    ) -> bytes:
        """``usage`` (prompt, completion tokens so far): vLLM's `continuous_usage_stats`."""
        used = None if usage is None else _usage(*usage)
        body: ChatCompletionChunk | Completion
        if self.endpoint == "chat":
            # OpenAI opens a chat stream with the role and closes it with an empty delta.
            if first:
                delta = ChoiceDelta(role="assistant", content=text or "")
            else:
                delta = ChoiceDelta() if text is None else ChoiceDelta(content=text)
            body = ChatCompletionChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
            )
        else:
            # Streamed completion chunks carry finish_reason null until the last, which the
            # type (modelled on whole responses) does not admit: construct without validating.
            choice = CompletionChoice.model_construct(
                index=0, text=text or "", finish_reason=finish, logprobs=None
            )
            body = Completion.model_construct(
                id=self.id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=[choice],
            )
        if used is not None:
            body.usage = used  # set only when asked: an unset field stays out of the chunk
        return sse(body.model_dump(mode="json", exclude_unset=True))

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """`stream_options.include_usage`: a last chunk with no choices and the usage."""
        used = _usage(prompt_tokens, completion_tokens)
        body: ChatCompletionChunk | Completion
        if self.endpoint == "chat":
            body = ChatCompletionChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model,
                choices=[],
                usage=used,
            )
        else:
            body = Completion(
                id=self.id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=[],
                usage=used,
            )
        return sse(body.model_dump(mode="json", exclude_unset=True))


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def models_list(names: list[str], created: int) -> dict[str, Any]:
    models = [
        Model(id=name, object="model", created=created, owned_by="tollgate").model_dump(
            mode="json", exclude_unset=True
        )
        for name in names
    ]
    return {"object": "list", "data": models}
