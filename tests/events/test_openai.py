"""The OpenAI request model both the ingress and infer validate with: strict where a request is
priced (max_tokens, the prompt), lenient on fields it does not read."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from events.openai import (
    CHAT_TEMPLATE_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    DEFAULT_MAX_TOKENS,
    MODELS,
    PROMPT_SPECIAL_TOKENS,
    ChatRequest,
    CompletionRequest,
    ContextExceeded,
)

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([1, 2, 3], "token-id prompts are not served: send the prompt as text"),
        ([[1, 2], [3]], "token-id prompts are not served: send the prompt as text"),
        (["a", 1], "token-id prompts are not served: send the prompt as text"),
        (["a", "b"], "one prompt per request: a string, or a list of one string"),
        ([], "one prompt per request: a string, or a list of one string"),
        ("", "String should have at least 1 character"),
        (7, "Input should be a valid string"),
    ],
)
def test_prompts_that_are_not_one_text_are_refused_with_the_reason(
    prompt: Any, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        CompletionRequest.model_validate({**COMPLETION, "prompt": prompt})
    assert message in str(refused.value)


def test_one_prompt_is_served_as_a_string_or_a_list_of_one() -> None:
    assert CompletionRequest.model_validate({**COMPLETION, "prompt": ["x y"]}).text == "x y"
    assert CompletionRequest.model_validate({**COMPLETION, "prompt": "x y"}).text == "x y"


@pytest.mark.parametrize("value", [1.5, 16.0, "16", True, 0, -1, None])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("body", [CHAT, COMPLETION])
def test_max_tokens_is_a_positive_json_integer(
    body: dict[str, Any], field: str, value: Any
) -> None:
    model = ChatRequest if "messages" in body else CompletionRequest
    if value is None:
        assert model.model_validate({**body, field: value}).requested_max_tokens is None
        return
    with pytest.raises(ValidationError):
        model.model_validate({**body, field: value})


def test_the_newer_name_of_max_tokens_wins_and_must_leave_the_prompt_room() -> None:
    both = ChatRequest.model_validate({**CHAT, "max_tokens": 9, "max_completion_tokens": 5})
    assert both.requested_max_tokens == 5
    assert both.completion_limit(8192) == 5
    assert both.completion_limit(6) == 5
    for window in (5, 3):
        with pytest.raises(ContextExceeded, match=f"max_tokens is 5, but .* window is {window}"):
            both.completion_limit(window)


def test_the_default_fits_beside_the_prompt() -> None:
    short = ChatRequest.model_validate(CHAT)
    assert short.completion_limit(8192) == DEFAULT_MAX_TOKENS
    assert short.completion_limit(2048) == 2048 - short.prompt_tokens_bound()
    assert short.completion_limit(short.prompt_tokens_bound()) == 1  # the policy refuses it
    long = CompletionRequest.model_validate({**COMPLETION, "prompt": "x" * 6000})
    assert long.completion_limit(8192) == 8192 - 6000 - PROMPT_SPECIAL_TOKENS


def test_unknown_fields_are_ignored_and_known_ones_checked() -> None:
    extra = {"user": "u-1", "logprobs": None, "response_format": {"type": "text"}, "x": [1]}
    assert ChatRequest.model_validate({**CHAT, **extra}).model == "m"
    bad_fields: list[dict[str, Any]] = [
        {"n": 2},
        {"temperature": 7},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"model": ""},
    ]
    for bad in bad_fields:
        with pytest.raises(ValidationError):
            ChatRequest.model_validate({**CHAT, **bad})


def test_each_endpoint_has_its_model() -> None:
    assert MODELS["chat"] is ChatRequest and MODELS["completions"] is CompletionRequest


def test_a_chat_renders_its_text_parts_joined_and_developer_as_system() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "é"}]
    request = ChatRequest.model_validate(
        {**CHAT, "messages": [{"role": "developer", "content": parts}, {"role": "assistant"}]}
    )
    assert [m.for_template() for m in request.messages] == [
        {"role": "system", "content": "aé"},
        {"role": "assistant", "content": ""},
    ]
    assert request.prompt_tokens_bound() == CHAT_TEMPLATE_TOKENS + 2 * CHAT_TOKENS_PER_MESSAGE + 3


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_the_bound_counts_every_byte_of_every_message(texts: list[str]) -> None:
    messages = [{"role": "user", "content": t} for t in texts]
    request = ChatRequest.model_validate({**CHAT, "messages": messages})
    size = sum(len(t.encode()) for t in texts)
    assert request.prompt_tokens_bound() >= size + CHAT_TOKENS_PER_MESSAGE * len(texts)


@given(st.text(min_size=1))
def test_a_raw_prompt_bound_is_its_bytes_and_a_few_special_tokens(text: str) -> None:
    request = CompletionRequest.model_validate({**COMPLETION, "prompt": text})
    assert request.prompt_tokens_bound() == len(text.encode()) + PROMPT_SPECIAL_TOKENS
