"""Rate limits in the ingress (tests/router/test_ingress.py's platform: real ledger, stand-in
infer over HTTP): tokens are reserved at admission and corrected to the answer's usage, whole
or streamed; a request that fails after admission counts no tokens and frees its running slot;
every answer, errors included, carries the headers."""

from __future__ import annotations

import time

import requests

from events import ratelimits as h
from events.ratelimits import RateLimits
from functions.apikeys import ApiKeys
from tests.router.test_ingress import Platform, chat, platform  # noqa: F401 (the fixture)

LIMITS = RateLimits(tokens_per_minute=1000, concurrent_requests=1)


def limited_key(p: Platform) -> str:
    keys = ApiKeys(p.ledger.store)
    issued = keys.issue("acme")
    keys.set_rate_limits("acme", issued["key_id"], LIMITS)
    return str(issued["key"])


def remaining(r: requests.Response) -> int:
    return int(r.headers[h.REMAINING_TOKENS])


def test_tokens_are_reserved_then_corrected_to_the_usage(platform: Platform) -> None:  # noqa: F811
    key = limited_key(platform)
    first = chat(platform, key=key)
    assert first.status_code == 200, first.text
    assert first.headers[h.LIMIT_TOKENS] == "1000"
    assert first.headers[h.LIMIT_CONCURRENT] == "1"
    second = chat(platform, key=key)
    usage = first.json()["usage"]
    # The first request's reservation came back but for what it used.
    assert (
        remaining(first) - remaining(second) == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    stream = chat(platform, key=key, stream=True)
    assert stream.status_code == 200 and "Par" in stream.text
    assert stream.headers[h.LIMIT_TOKENS] == "1000"
    time.sleep(0.2)  # the stream's end is seen as the server closes it
    after = chat(platform, key=key)
    assert remaining(stream) - remaining(after) == 11 + 3  # the last usage relayed


def test_a_failed_request_counts_no_tokens_and_frees_its_slot(platform: Platform) -> None:  # noqa: F811
    key = limited_key(platform)
    platform.regional.mode = platform.edge.mode = "500"
    failed = chat(platform, key=key)
    assert failed.status_code == 503
    assert failed.headers[h.LIMIT_TOKENS] == "1000"  # on errors too
    platform.regional.mode = platform.edge.mode = "ok"
    ok = chat(platform, key=key)  # the one running slot is free again
    assert ok.status_code == 200, ok.text
    assert remaining(ok) == remaining(failed)  # the failure kept no tokens
