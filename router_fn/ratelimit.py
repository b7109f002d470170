"""Rate limits that hold across ingress replicas: each replica admits from a leased share.

Limits (events/ratelimits.py) count per API key: requests and tokens per window of
``window_s`` (a minute; windows are aligned to the epoch, so every replica agrees which one it
is), and requests running at once. The authoritative counters are items of the shared table
(functions/rateshares.py): a replica takes a *share* of the current window's budget (and of the
running slots) with one conditional write that grants only what the other replicas leave under
the limit, then admits from its share in memory, as credit leases do (router_fn/lease.py).

- In microseconds: a request is admitted while this replica's share has room for it (1 request,
  its tokens, 1 running slot). Only when a share is empty does a request wait for one write.
- Ahead of need: a background worker takes the next share when less than half a share is left,
  gives back what an idle key does not use (so another replica can), and renews running slots.
- Never multiplied: the holders of a window together hold at most its limit, so N replicas admit
  at most the limit per window. A share only lapses: a window's share with its window, running
  slots at ``running_ttl_s`` unless their replica renews them (a replica that dies frees them).
- Tokens: a request reserves its prompt bound + ``max_tokens`` (what it may use at most, known
  before it runs, so it cannot be gamed by a long answer) and, when it ends, gives back what the
  answer's metered usage shows it did not use (a stream cut off keeps its whole reservation).
- Whose counters: the home ingress's replicas write the shared table's (``RateShares``); a site
  ingress writes the same items through the home's relay (router_fn/site.py ``RelayedShares``),
  so the home and every site together admit at most the limit, not once each.
- The counters unreachable: requests are admitted (fail open, like Envoy's and Kong's global
  limits: rate limits guard capacity, credits guard money and stay exact) and it is logged.

Every answer of a limited key carries OpenAI's ``x-ratelimit-*`` headers; over a limit the
answer is 429 with ``Retry-After``. Remaining counts are as of this replica's last write: the
other replicas' admissions since are not in it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from flask import Blueprint, Response, g

from events import ratelimits as headers
from events.quote import Usage
from events.ratelimits import RateLimits, reset_after
from functions.errors import TooManyRequests
from functions.rateshares import RUNNING_SK, Held, RateShares, window_sk
from functions.store import Contended, Store, StoreUnavailable
from router_fn.upkeep import Upkeep

log = logging.getLogger(__name__)

WINDOW_S = 60  # the limits are per minute
RUNNING_TTL_S = 10  # a dead replica's running slots come back after this long
SHARES = 20  # a window share is this fraction of the limit (at least what a request needs)
RUNNING_SHARES = 8  # a running share: this fraction of the concurrency limit, at least 1
LOW_WATER = 0.5  # take the next share when less than this much of one is left
IDLE_S = 2.0  # give back what a key left unused this long
RECHECK_S = 0.25  # after a take found nothing left, refuse from memory this long
UNREACHABLE_S = 1.0  # after the counters failed, admit without asking this long
TICK_S = 0.1
_TICKET = "tollgate_rate_ticket"


def share_of(limit: int, parts: int, need: int = 1) -> int:
    """One share of ``limit``: a ``parts``-th of it, at least ``need``, at most the limit."""
    return min(limit, max(need, math.ceil(limit / parts)))


def window_of(now: float, window_s: int) -> tuple[int, float]:
    """The index of the window ``now`` is in, and when it ends."""
    index = int(now // window_s)
    return index, (index + 1) * window_s


class Counters(Protocol):
    """Where a replica takes its shares (``RateShares.hold``'s contract): raises ``Contended`` or
    ``StoreUnavailable`` when nothing is known to be written."""

    def hold(
        self,
        subject: str,
        sk: str,
        targets: Mapping[str, int],
        limits: Mapping[str, int],
        until: float,
    ) -> Held: ...


@dataclass
class _Window:
    """This replica's share of one key's window: held (as the counter says), used here."""

    index: int
    ends_at: float
    held: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})
    used: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})
    total: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})
    # After a take found a limit all held: refused from memory until then.
    refused_until: dict[str, float] = field(default_factory=lambda: {"requests": 0, "tokens": 0})

    def free(self, kind: str) -> int:
        return self.held[kind] - self.used[kind]


@dataclass
class _Running:
    held: int = 0
    used: int = 0
    until: float = 0.0
    total: int = 0
    refused_until: float = 0.0


@dataclass
class _Key:
    limits: RateLimits
    window: _Window
    running: _Running = field(default_factory=_Running)
    used_at: float = 0.0
    taking: threading.Lock = field(default_factory=threading.Lock)  # one write at a time
    counted: dict[str, int] = field(init=False)  # the per-window limits: requests, tokens
    low: dict[str, float] = field(init=False)  # take the next share under this much free

    def __post_init__(self) -> None:
        self.limited(self.limits)

    def limited(self, limits: RateLimits) -> None:
        self.limits = limits
        self.counted = {
            kind: limit
            for kind, limit in (
                ("requests", limits.requests_per_minute),
                ("tokens", limits.tokens_per_minute),
            )
            if limit is not None
        }
        self.low = {
            kind: share_of(limit, SHARES) * LOW_WATER for kind, limit in self.counted.items()
        }


@dataclass
class Ticket:
    """One admitted request: what it reserved, given back when it ends."""

    limiter: RateLimiter
    key: _Key
    window: _Window
    tokens: int
    headers: dict[str, str]
    usage: Callable[[], Usage | None] | None = None  # a stream's usage as relayed so far
    ended: bool = False

    def end(self, used: Usage | None = None) -> None:
        """The request is over: its running slot back, its unused tokens too (``used`` or the
        stream's usage; unknown: the whole reservation stays counted)."""
        if self.ended:
            return
        self.ended = True
        if used is None and self.usage is not None:
            used = self.usage()
        self.limiter._end(self, used)


class RateLimiter:
    """One replica's shares of every limited key's limits, taken from ``counters`` (default:
    the table of ``store``, with ``replica`` naming this one's entries; ``window_s``/
    ``running_ttl_s`` are shorter only in tests)."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        counters: Counters | None = None,
        replica: str | None = None,
        window_s: int = WINDOW_S,
        running_ttl_s: int = RUNNING_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if counters is None:
            if store is None:
                raise ValueError("a rate limiter needs a store or counters")
            counters = RateShares(store, replica or uuid.uuid4().hex, clock=clock)
        self.shares = counters
        self.window_s = window_s
        self.running_ttl_s = running_ttl_s
        self.clock = clock
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()
        self._upkeep = Upkeep("rate-limits", self.tick, TICK_S)
        self._unreachable_until = 0.0

    # -- the request path -------------------------------------------------------------------------

    def admit(self, subject: str, limits: RateLimits | None, tokens: int) -> Ticket | None:
        """Admit one request of ``tokens`` (its most) for the key ``subject``, or raise 429.
        None: the key is not limited. The ticket is kept for this request's answer (headers,
        and its end when the answer is sent: ``install``)."""
        if limits is None or limits.empty:
            return None
        self._upkeep.start()
        now = self.clock()
        key = self._key(subject, limits, now)
        tpm = limits.tokens_per_minute
        if tpm is not None and tokens > tpm:
            with self._lock:
                known = self._headers(key, now)
            raise TooManyRequests(
                f"this request may use up to {tokens} tokens (its prompt plus max_tokens), more "
                f"than this API key's limit of {tpm} tokens per minute: lower max_tokens or "
                "shorten the prompt, or ask your operator for a higher tokensPerMinute",
                headers={headers.SHOULD_RETRY: "false", **known},
            )
        needs = {"requests": 1, "tokens": tokens}
        running = limits.concurrent_requests is not None
        while True:
            with self._lock:
                window = key.window
                short = self._short(key, needs, running)
                if not short or now < self._unreachable_until:
                    window.used["requests"] += 1
                    window.used["tokens"] += tokens
                    key.running.used += 1
                    key.used_at = now
                    if self._low(key):
                        self._upkeep.poke()
                    ticket = Ticket(self, key, window, tokens, {})
                    ticket.headers.update(self._headers(key, now))
                    break
                refused = self._refused(key, short, now)
            if refused is not None:
                raise refused
            if not self._take(subject, key, needs, short, now):
                self._unreachable_until = now + UNREACHABLE_S
            now = self.clock()
            key = self._key(subject, limits, now)  # a window may have ended meanwhile
        setattr(g, _TICKET, ticket)
        return ticket

    def _short(self, key: _Key, needs: Mapping[str, int], running: bool) -> list[str]:
        """What this replica's shares lack for a request needing ``needs``."""
        limits, window = key.limits, key.window
        short = [
            kind
            for kind, limit in (
                ("requests", limits.requests_per_minute),
                ("tokens", limits.tokens_per_minute),
            )
            if limit is not None and window.free(kind) < needs[kind]
        ]
        if running and key.running.held - key.running.used < 1:
            short.append("running")
        return short

    def _refused(self, key: _Key, short: list[str], now: float) -> TooManyRequests | None:
        """The 429 if a write was tried moments ago and found nothing left (None: try one)."""
        window, running = key.window, key.running
        for kind in short:
            if kind == "running" and now < running.refused_until:
                limit = key.limits.concurrent_requests
                return TooManyRequests(
                    f"rate limit reached: {limit} requests of this API key are already running "
                    f"(its concurrentRequests limit); retry when one has finished",
                    headers={"Retry-After": "1", **self._headers(key, now)},
                )
            if kind != "running" and now < window.refused_until[kind]:
                limit = (
                    key.limits.requests_per_minute
                    if kind == "requests"
                    else key.limits.tokens_per_minute
                )
                wait = max(1, math.ceil(window.ends_at - now))
                return TooManyRequests(
                    f"rate limit reached for {kind}: this API key may use {limit} {kind} per "
                    f"minute and the current minute's are used up; retry in {wait} s (or ask "
                    f"your operator for a higher limit)",
                    headers={"Retry-After": str(wait), **self._headers(key, now)},
                )
        return None

    def _take(
        self, subject: str, key: _Key, needs: Mapping[str, int], short: list[str], now: float
    ) -> bool:
        """Take the shares a request found short (one write each; they lapse on their own)."""
        with key.taking:
            with self._lock:  # another request may have taken them (or found none) meanwhile
                short = self._short(key, needs, "running" in short)
                if not short or self._refused(key, short, self.clock()) is not None:
                    return True
            try:
                if "running" in short:
                    self._hold_running(subject, key, "more")
                if [kind for kind in short if kind != "running"]:
                    self._hold_window(subject, key, needs, now)
            except (Contended, StoreUnavailable) as exc:
                log.warning("rate-limit counters of %s not reachable: %s", subject, exc)
                return False
        return True

    def _hold_window(self, subject: str, key: _Key, needs: Mapping[str, int], now: float) -> None:
        """Top this replica's window share up by a share of each limit (taken at once, so one
        write serves both), or give back down to what it used (``needs`` None)."""
        limits = key.counted
        with self._lock:
            window = key.window
            if self.clock() >= window.ends_at:
                return  # never into a window that ended: its other holders no longer count
            targets = {
                kind: window.used[kind]
                + max(window.free(kind), share_of(limit, SHARES, needs[kind]))
                for kind, limit in limits.items()
            }
        held = self.shares.hold(
            subject, window_sk(self.window_s, window.index), targets, limits, window.ends_at
        )
        with self._lock:
            self._window_held(window, held, targets, now)

    def _window_held(
        self, window: _Window, held: Held, targets: Mapping[str, int], now: float
    ) -> None:
        window.held.update(held.mine)
        window.total.update(held.total)
        for kind, target in targets.items():
            if held.mine[kind] < target:  # the limit is all held: refuse from memory a while
                window.refused_until[kind] = now + RECHECK_S

    def _hold_running(self, subject: str, key: _Key, want: str) -> None:
        """Hold this replica's running slots for ``running_ttl_s`` more: a share more than it
        has (``want`` "more"), what it has ("same"), or only those in use ("used")."""
        limit = key.limits.concurrent_requests
        if limit is None:
            return
        with self._lock:
            running = key.running
            target = {
                "more": max(running.held, running.used) + share_of(limit, RUNNING_SHARES),
                "same": max(running.held, running.used),
                "used": running.used,
            }[want]
            running.held = min(running.held, target)  # none admitted from what goes back
        now = self.clock()
        until = now + self.running_ttl_s
        held = self.shares.hold(subject, RUNNING_SK, {"running": target}, {"running": limit}, until)
        with self._lock:
            running.held, running.total = held.mine["running"], held.total["running"]
            running.until = until
            if running.held < target:
                running.refused_until = now + RECHECK_S

    def _end(self, ticket: Ticket, used: Usage | None) -> None:
        with self._lock:
            key = ticket.key
            key.running.used -= 1
            if used is not None:
                unused = ticket.tokens - (used.prompt_tokens + used.completion_tokens)
                if unused > 0:
                    ticket.window.used["tokens"] -= unused  # a past window's: harmless

    # -- headers ----------------------------------------------------------------------------------

    def _headers(self, key: _Key, now: float) -> dict[str, str]:
        """OpenAI's x-ratelimit-* for the key, as of this replica's last write."""
        out: dict[str, str] = {}
        window, limits = key.window, key.limits
        reset = reset_after(window.ends_at - now)
        for kind, limit, names in (
            ("requests", limits.requests_per_minute, _REQUEST_HEADERS),
            ("tokens", limits.tokens_per_minute, _TOKEN_HEADERS),
        ):
            if limit is None:
                continue
            remaining = limit - window.total[kind] + window.free(kind)
            out[names[0]] = str(limit)
            out[names[1]] = str(max(0, min(limit, remaining)))
            out[names[2]] = reset
        if limits.concurrent_requests is not None:
            out[headers.LIMIT_CONCURRENT] = str(limits.concurrent_requests)
        return out

    def install(self, bp: Blueprint) -> None:
        """Put each admitted request's headers on its answer (every status), and end its ticket
        when the answer is sent (a stream: when it ends or its client leaves)."""

        @bp.after_request
        def answered(response: Response) -> Response:
            ticket: Ticket | None = g.pop(_TICKET, None)
            if ticket is None:
                return response
            for name, value in ticket.headers.items():
                response.headers.setdefault(name, value)
            if response.status_code >= 400:
                ticket.end(Usage(prompt_tokens=0, completion_tokens=0))  # nothing was served
            elif response.is_streamed:
                response.call_on_close(ticket.end)
            else:  # its usage matters only to a tokens limit (it parses the answer again)
                ticket.end(_usage(response) if ticket.key.counted.get("tokens") else None)
            return response

        @bp.teardown_request
        def unanswered(_exc: BaseException | None) -> None:
            ticket: Ticket | None = g.pop(_TICKET, None)
            if ticket is not None:  # no answer was made for it: nothing was served
                ticket.end(Usage(prompt_tokens=0, completion_tokens=0))

    def metered_by(self, usage: Callable[[], Usage | None]) -> None:
        """This request's usage (a stream's: as relayed so far) is read from ``usage``."""
        ticket: Ticket | None = g.get(_TICKET)
        if ticket is not None:
            ticket.usage = usage

    # -- keys and the background ------------------------------------------------------------------

    def _key(self, subject: str, limits: RateLimits, now: float) -> _Key:
        index, ends_at = window_of(now, self.window_s)
        with self._lock:
            key = self._keys.get(subject)
            if key is None:
                key = self._keys[subject] = _Key(limits, _Window(index, ends_at), used_at=now)
            if key.limits is not limits:  # an operator's new override applies at once
                key.limited(limits)
            if key.window.index != index:
                key.window = _Window(index, ends_at)  # the last one's shares lapsed with it
            return key

    def _low(self, key: _Key) -> bool:
        """Less than half a share left of some limit: time to take the next one."""
        window = key.window
        return any(window.free(kind) < mark for kind, mark in key.low.items())

    def tick(self) -> None:
        """Take ahead for keys running low; give back what idle keys hold; renew running
        slots; forget keys idle and holding nothing."""
        now = self.clock()
        with self._lock:
            keys = list(self._keys.items())
        for subject, key in keys:
            index, _ = window_of(now, self.window_s)
            with self._lock:
                window, running = key.window, key.running
                current = window.index == index
                idle = now - key.used_at > IDLE_S
                low = (
                    current
                    and not idle
                    and self._low(key)
                    and now >= max(window.refused_until.values())
                )
                spare = current and idle and any(window.free(k) > 0 for k in window.held)
                renew = running.held > 0 and (
                    running.until - now < self.running_ttl_s / 2
                    or (idle and running.held > running.used)
                )
                if idle and not current and running.held == 0 and running.used == 0:
                    del self._keys[subject]
                    continue
            try:
                with key.taking:
                    if low:
                        self._hold_window(subject, key, {"requests": 1, "tokens": 1}, now)
                    elif spare:
                        self._give_back(subject, key)
                    if renew:
                        self._hold_running(subject, key, "used" if idle else "same")
            except (Contended, StoreUnavailable) as exc:
                log.warning("rate-limit counters of %s not reachable: %s", subject, exc)

    def _give_back(self, subject: str, key: _Key, *, idle_s: float = IDLE_S) -> None:
        """Keep only what this replica used of its window share, if the key is still idle."""
        limits = key.counted
        with self._lock:
            window = key.window
            if self.clock() - key.used_at <= idle_s or self.clock() >= window.ends_at:
                return  # busy again since the tick looked, or the window is over
            targets = {kind: window.used[kind] for kind in limits}
            # Nothing more is admitted from what goes back while it goes (a request that
            # needs more waits for ``taking``, which the caller holds).
            window.held.update(targets)
        held = self.shares.hold(
            subject, window_sk(self.window_s, window.index), targets, limits, window.ends_at
        )
        with self._lock:
            window.held.update(held.mine)
            window.total.update(held.total)

    def stop(self) -> None:
        """Give every share back (a stopping replica's are the others' at once)."""
        self._upkeep.stop()
        with self._lock:
            keys = list(self._keys.items())
        for subject, key in keys:
            try:
                self._give_back(subject, key, idle_s=-1)
                self._hold_running(subject, key, "used")
            except (Contended, StoreUnavailable) as exc:
                log.warning("rate-limit shares of %s not given back: %s", subject, exc)


_REQUEST_HEADERS = (headers.LIMIT_REQUESTS, headers.REMAINING_REQUESTS, headers.RESET_REQUESTS)
_TOKEN_HEADERS = (headers.LIMIT_TOKENS, headers.REMAINING_TOKENS, headers.RESET_TOKENS)


def limits_for(plan: RateLimits | None, override: RateLimits | None) -> RateLimits | None:
    """A key's limits: its plan's, with its own override's fields in their place."""
    if plan is None:
        return override
    return plan.over(override)


def _usage(response: Response) -> Usage | None:
    """A whole answer's usage (None: it has none to read)."""
    try:
        data = response.get_json(silent=True)
        return Usage.model_validate(data["usage"]) if isinstance(data, dict) else None
    except (KeyError, TypeError, ValueError):
        return None
