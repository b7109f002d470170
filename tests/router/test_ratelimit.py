"""Rate-limit shares: the arithmetic, the counters raced on a real store, and replicas (several
RateLimiters on one store, a test clock) that together never admit more than the limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from events import ratelimits as h
from events.quote import Usage
from events.ratelimits import RateLimits, reset_after
from functions.errors import TooManyRequests
from functions.rateshares import RUNNING_SK, RateShares, claim, window_sk
from functions.store import Store
from router_fn.ratelimit import SHARES, RateLimiter, limits_for, share_of, window_of
from tests.clock import START, Clock

WINDOW_S = 60


def test_a_share_is_a_part_of_the_limit_at_least_what_a_request_needs() -> None:
    assert share_of(600, 20) == 30
    assert share_of(7, 20) == 1  # small limits: one at a time
    assert share_of(100_000, 20, need=9000) == 9000
    assert share_of(40, 20, need=500) == 40  # never more than the limit


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_of(120.0, 60) == (2, 180.0)
    assert window_of(179.999, 60) == (2, 180.0)
    assert window_of(180.0, 60) == (3, 240.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0123, "13ms"), (0, "0ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"), (360, "6m0s"),
     (3723.25, "1h2m3.25s")],
)  # fmt: skip
def test_reset_in_openais_format(seconds: float, text: str) -> None:
    assert reset_after(seconds) == text


def test_claims_grant_what_the_other_live_holders_leave() -> None:
    limits = {"requests": 10}
    holders = claim({}, "a", {"requests": 6}, limits, until=100, now=0)
    holders = claim(holders, "b", {"requests": 6}, limits, until=100, now=0)
    assert holders["b"]["requests"] == 4  # what a left
    # A target, not an increment: asking again (a lost answer retried) changes nothing.
    assert claim(holders, "b", {"requests": 6}, limits, until=100, now=0) == holders
    # Giving back: b holds what it used; a may take it.
    holders = claim(holders, "b", {"requests": 1}, limits, until=100, now=0)
    assert claim(holders, "a", {"requests": 9}, limits, until=100, now=0)["a"]["requests"] == 9
    # An entry past its time no longer counts (a dead replica's share lapses).
    late = claim(holders, "c", {"requests": 10}, limits, until=200, now=150)
    assert late == {"c": {"until": 200, "requests": 10}}
    # Nothing held: no entry.
    assert "b" not in claim(holders, "b", {"requests": 0}, limits, until=100, now=0)


def test_an_override_replaces_only_the_fields_it_sets() -> None:
    plan = RateLimits(requests_per_minute=60, tokens_per_minute=1000)
    key = RateLimits(tokens_per_minute=5000, concurrent_requests=2)
    assert limits_for(plan, key) == RateLimits(
        requests_per_minute=60, tokens_per_minute=5000, concurrent_requests=2
    )
    assert limits_for(None, key) == key and limits_for(plan, None) == plan
    assert limits_for(None, None) is None


def test_racing_replicas_never_hold_more_than_the_limit(real_store: Store) -> None:
    limit, replicas, takes = 50, 6, 8
    granted: list[int] = []
    lock = threading.Lock()
    sk = window_sk(WINDOW_S, 1)

    def replica(n: int) -> None:
        shares = RateShares(real_store, f"r{n}")
        mine = 0
        for _ in range(takes):
            held = shares.hold("key", sk, {"requests": mine + 3}, {"requests": limit}, 10**10)
            assert held.total["requests"] <= limit
            mine = held.mine["requests"]
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == limit  # all of it handed out, never more
    item = real_store.get("RATE#key", sk)
    assert item is not None
    assert sum(h["requests"] for h in item.data["holders"].values()) == limit


@pytest.fixture
def context() -> Iterator[None]:
    with Flask(__name__).test_request_context():
        yield


def limiter(store: Store, clock: Clock, name: str) -> RateLimiter:
    return RateLimiter(store, replica=name, window_s=WINDOW_S, running_ttl_s=10, clock=clock)


@pytest.mark.usefixtures("context")
def test_replicas_together_admit_the_limit_then_429_with_headers(sqlite_store: Store) -> None:
    clock = Clock(START - START % WINDOW_S + 1)  # 1 s into a window
    replicas = [limiter(sqlite_store, clock, f"r{n}") for n in range(4)]
    limits = RateLimits(requests_per_minute=100, tokens_per_minute=100_000)
    admitted, refused = 0, []
    for turn in range(200):
        try:
            replicas[turn % 4].admit("key", limits, 10)
            admitted += 1
        except TooManyRequests as exc:
            refused.append(exc)
        if turn % 7 == 0:
            for r in replicas:
                r.tick()  # the background: takes ahead
    assert admitted <= 100  # never more than the limit
    assert admitted >= 100 - 4 * share_of(100, SHARES)  # at most a share each stranded
    last = refused[-1]
    assert last.status == 429 and last.code == "rate_limit_exceeded"
    assert last.headers["Retry-After"] == "59"
    assert last.headers[h.LIMIT_REQUESTS] == "100"
    assert last.headers[h.REMAINING_REQUESTS] == "0"
    assert last.headers[h.RESET_REQUESTS] == "59s"
    assert "100 requests per minute" in last.message
    # Idle replicas give back what they hold: another may use it.
    clock.advance(3)
    for r in replicas:
        r.tick()
    extra = 0
    for _ in range(20):
        try:
            replicas[0].admit("key", limits, 10)
            extra += 1
        except TooManyRequests:
            clock.advance(0.3)
    assert admitted + extra == 100
    # The next window starts afresh.
    clock.advance(WINDOW_S)
    ticket = replicas[1].admit("key", limits, 10)
    assert ticket is not None and ticket.headers[h.LIMIT_TOKENS] == "100000"


@pytest.mark.usefixtures("context")
def test_tokens_reserve_the_most_and_keep_only_what_was_used(sqlite_store: Store) -> None:
    clock = Clock(START - START % WINDOW_S + 1)
    one = limiter(sqlite_store, clock, "one")
    limits = RateLimits(tokens_per_minute=1000)
    first = one.admit("key", limits, 600)
    assert first is not None
    with pytest.raises(TooManyRequests):
        one.admit("key", limits, 600)  # 600 reserved + 600 > 1000
    first.end(Usage(prompt_tokens=40, completion_tokens=60))  # used 100 of its 600
    second = one.admit("key", limits, 600)
    assert second is not None
    assert int(second.headers[h.REMAINING_TOKENS]) == 1000 - 100 - 600
    with pytest.raises(TooManyRequests) as too_big:
        one.admit("key", limits, 1001)  # can never pass: the client must not retry it
    assert too_big.value.headers[h.SHOULD_RETRY] == "false"
    assert too_big.value.headers[h.LIMIT_TOKENS] == "1000"
    assert "max_tokens" in too_big.value.message


@pytest.mark.usefixtures("context")
def test_running_requests_are_limited_across_replicas_and_a_dead_ones_slots_lapse(
    sqlite_store: Store,
) -> None:
    clock = Clock(START + 1)
    a, b = limiter(sqlite_store, clock, "a"), limiter(sqlite_store, clock, "b")
    limits = RateLimits(concurrent_requests=3)
    running = [a.admit("key", limits, 1), a.admit("key", limits, 1), b.admit("key", limits, 1)]
    with pytest.raises(TooManyRequests) as full:
        b.admit("key", limits, 1)
    assert "3 requests of this API key are already running" in full.value.message
    assert full.value.headers["Retry-After"] == "1"
    with pytest.raises(TooManyRequests):
        a.admit("key", limits, 1)
    # One ends on a; once a has been idle, it gives the slot back and b may use it.
    ticket = running[0]
    assert ticket is not None
    ticket.end()
    clock.advance(3)
    a.tick()
    assert b.admit("key", limits, 1) is not None
    # a dies holding its last slot: after the TTL it is b's (a never renewed it).
    clock.advance(11)
    b.tick()
    assert b.admit("key", limits, 1) is not None
    item = sqlite_store.get("RATE#key", RUNNING_SK)
    assert item is not None and set(item.data["holders"]) == {"b"}


def test_what_goes_back_is_not_admitted_from_while_it_goes(sqlite_store: Store) -> None:
    """A request arriving while an idle replica gives its share back waits for the write and
    takes anew: the replica never admits beyond what the counter says it holds."""
    app = Flask(__name__)
    clock = Clock(START - START % WINDOW_S + 1)
    one = limiter(sqlite_store, clock, "one")
    limits = RateLimits(requests_per_minute=100)
    with app.test_request_context():
        one.admit("key", limits, 1)  # takes a share of 5, uses 1
    clock.advance(3)  # idle
    hold = one.shares.hold
    arrived: list[threading.Thread] = []

    def racing_hold(*args: Any, **kwargs: Any) -> Any:
        if not arrived:  # the give-back's write: a request arrives meanwhile
            thread = threading.Thread(target=admit_one)
            arrived.append(thread)
            thread.start()
            thread.join(0.2)  # it cannot be admitted from the share going back
            assert thread.is_alive()
        return hold(*args, **kwargs)

    def admit_one() -> None:
        with app.test_request_context():
            one.admit("key", limits, 1)

    one.shares.hold = racing_hold  # type: ignore[method-assign]
    one.tick()
    arrived[0].join(5)
    item = sqlite_store.get("RATE#key", window_sk(WINDOW_S, int(clock() // WINDOW_S)))
    assert item is not None
    assert item.data["holders"]["one"]["requests"] >= 2  # both admitted requests are held


@pytest.mark.usefixtures("context")
def test_a_take_that_outlasts_its_window_takes_from_the_next(sqlite_store: Store) -> None:
    """A write begun after its window ended grants nothing (that window's other holders no
    longer count, so it could grant the whole limit again): the request is admitted from the
    next window's budget instead."""
    clock = Clock(START - START % WINDOW_S + WINDOW_S - 0.1)  # 0.1 s before a window ends
    one, other = limiter(sqlite_store, clock, "one"), limiter(sqlite_store, clock, "other")
    limits = RateLimits(requests_per_minute=2)
    other.admit("key", limits, 1)
    other.admit("key", limits, 1)  # this window's limit, all on the other replica
    hold = one.shares.hold

    def slow(*args: Any, **kwargs: Any) -> Any:
        clock.advance(0.2)  # the write starts after the window ended
        return hold(*args, **kwargs)

    one.shares.hold = slow  # type: ignore[method-assign]
    ticket = one.admit("key", limits, 1)
    assert ticket is not None and ticket.window.index == int(clock() // WINDOW_S)
    ended = sqlite_store.get("RATE#key", window_sk(WINDOW_S, ticket.window.index - 1))
    assert ended is not None and set(ended.data["holders"]) == {"other"}
