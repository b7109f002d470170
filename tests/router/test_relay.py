"""StreamRelay: what a relayed stream shows its client and what it cost so far."""

from __future__ import annotations

import json
from typing import Any

from events.quote import Usage
from router_fn.relay import StreamRelay


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def chunk(text: str, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": completion,
            "total_tokens": 7 + completion,
        },
    }


def data_of(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]


def test_usage_is_read_and_stripped_when_the_client_asked_none() -> None:
    relay = StreamRelay(chunk_usage=False, usage_chunk=False)
    out = relay.feed(event(chunk("Bonjour, ça va ?", 1)) + event(chunk(" 東京", 2)))
    seen = data_of(out)
    assert [c["choices"][0]["delta"]["content"] for c in seen] == ["Bonjour, ça va ?", " 東京"]
    assert all("usage" not in c for c in seen)
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9)
    final = {**chunk("", 2), "choices": []}
    assert relay.feed(event(final)) == b""  # the usage-only chunk the client did not ask for
    assert relay.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n" and relay.ended


def test_events_pass_as_sent_when_the_client_asked_for_usage() -> None:
    relay = StreamRelay(chunk_usage=True, usage_chunk=True)
    sent = event(chunk("hi", 1)) + event({**chunk("", 1), "choices": []})
    assert relay.feed(sent) == sent
    assert relay.usage is not None and relay.usage.completion_tokens == 1


def test_an_event_split_across_network_reads_is_relayed_once_whole() -> None:
    relay = StreamRelay(chunk_usage=True, usage_chunk=True)
    sent = event(chunk("split", 3))
    assert relay.feed(sent[:17]) == b""
    assert relay.feed(sent[17:]) == sent
    assert relay.usage is not None and relay.usage.completion_tokens == 3


def test_what_is_not_a_json_event_passes_untouched_and_an_error_ends_the_stream() -> None:
    relay = StreamRelay(chunk_usage=False, usage_chunk=False)
    odd = b": keep-alive comment\n\n" + b"data: {not json\n\n" + b"data: NaN\n\n"
    assert relay.feed(odd) == odd
    assert relay.usage is None and not relay.ended
    error = event({"error": {"message": "engine died", "type": "server_error"}})
    assert relay.feed(error) == error and relay.ended
    assert relay.feed(b'data: {"half') == b"" and relay.rest() == b'data: {"half'
