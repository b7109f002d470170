"""Rate limits raced by real processes: 4 `tollgate serve ingress` replicas on one sqlite store,
one `tollgate serve ledger`, the metering upstream (tests/router/test_lease_race.py's platform).
Together the replicas admit at most a key's limit per window and answer 429 with OpenAI's headers
after it; its running requests are limited across replicas; a key's override replaces its
plan's; every answer carries the headers; a replica killed holding running slots does not keep
them past their TTL."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from events import ratelimits as h
from events import wire
from events.ratelimits import RateLimits
from functions.apikeys import ApiKeys
from functions.store import Store
from functions.store.dynamodb import DynamoStore, create_table
from functions.store.sqlite import SqliteStore
from ledger_fn.ledger import Ledger
from router_fn.ratelimit import SHARES, share_of
from tests.router.test_lease_race import BODY, MAX_TOKENS, MODEL, Platform, run
from tests.trust import TestIssuer

WINDOW_S = 10  # the ingresses' window (a minute in production)
SHARE_TTL_S = 2  # how soon a dead replica's running slots lapse
ENV = {
    "TOLLGATE_RATE_WINDOW_SECONDS": str(WINDOW_S),
    "TOLLGATE_RATE_SHARE_TTL_SECONDS": str(SHARE_TTL_S),
}
REQUEST = {**BODY, "max_tokens": MAX_TOKENS}
RUNNING = {**REQUEST, "messages": [{"role": "user", "content": "wait 2"}]}  # answered in 2 s


@pytest.fixture(scope="module", params=["sqlite", "dynamodb_local"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer
) -> Iterator[Platform]:
    """One platform per store for the module (each test limits keys of its own): the racer
    account, on the developer plan, with plenty of credits and a key."""
    tmp = tmp_path_factory.mktemp("rates")
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp / "tollgate.db")
        url = f"sqlite://{Path(store.path).resolve()}"
    else:
        endpoint = str(request.getfixturevalue("dynamodb_local_endpoint"))
        table = "t" + uuid.uuid4().hex[:16]
        create_table(table, endpoint_url=endpoint)
        store = DynamoStore(table, endpoint_url=endpoint)
        url = f"dynamodb://{endpoint.split('://', 1)[1]}/{table}"
    ledger = Ledger(store)
    ledger.open_account("racer", {"plan": "developer"})
    ledger.execute("racer", "grant", {"amount": 10**12})
    key = ApiKeys(store).issue("racer")["key"]
    p = Platform(tmp, url, ledger, key, tmp / "metered.jsonl")
    try:
        run(p, issuer, ingress_env=ENV)
        yield p
    finally:
        if len(p.others) > 1:  # the upstream: what it still owes the ledger does not matter
            p.others[1].kill()
        p.stop()
        store.close()


def limit_key(p: Platform, limits: RateLimits) -> str:
    """A new key of the racer account with its own limits."""
    keys = ApiKeys(p.ledger.store)
    issued = keys.issue("racer")
    keys.set_rate_limits("racer", issued["key_id"], limits)
    return str(issued["key"])


def post(
    url: str, key: str, session: requests.Session | None = None, body: Any = REQUEST
) -> requests.Response:
    return (session or requests).post(
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}", wire.TIER: "regional"},
        timeout=30,
    )


def test_four_replicas_admit_at_most_the_limit_per_window(platform: Platform) -> None:
    p = platform
    # What the platform serves in a few seconds: on DynamoDB Local the ledger's commits (~0.1 s
    # each, every request captured on its own) bound it to a few requests a second.
    limit = 8 if p.store_url.startswith("dynamodb") else 40
    # Running requests not limited here (the plan says 16): the requests limit is what binds.
    key = limit_key(p, RateLimits(requests_per_minute=limit, concurrent_requests=1000))
    admitted: Counter[int] = Counter()  # per window (by the end its headers report)
    refused: list[requests.Response] = []
    lock = threading.Lock()
    full = limit - 2 * share_of(limit, SHARES)  # at most a share stranded in two replicas
    stop = time.monotonic() + 20  # until a window is used up and refusing, however loaded

    def client(url: str) -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            sent = time.time()
            r = post(url, key, session)
            # Admitted between sent and now, in the window that ends ``reset`` after admission:
            # the first window end after sent + reset (less its rounding up to the millisecond).
            assert time.time() - sent < WINDOW_S, "too slow to tell the window"
            ends = sent + seconds(r.headers[h.RESET_REQUESTS]) - 0.002
            window = math.ceil(ends / WINDOW_S)
            with lock:
                if r.status_code == 200:
                    admitted[window] += 1
                else:
                    assert r.status_code == 429, r.text
                    refused.append(r)
                if len(refused) >= 16 and max(admitted.values(), default=0) >= full:
                    return
            if r.status_code == 429:
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(url,)) for url, _ in p.ingresses * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted and refused
    assert max(admitted.values()) <= limit, admitted  # 4 replicas, one limit
    # The limit was used, not stranded in the replicas' shares.
    assert max(admitted.values()) >= full, admitted
    r = refused[-1]
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert f"{limit} requests per minute" in error["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= WINDOW_S
    assert r.headers[h.LIMIT_REQUESTS] == str(limit)
    assert r.headers[h.REMAINING_REQUESTS] == "0"
    # The official client sees a RateLimitError it can act on (it retries these by itself).
    client_ = openai.OpenAI(base_url=p.ingresses[0][0] + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(2 * limit + 2):  # a window may have just begun
            client_.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Capital of France?"}],
                max_tokens=MAX_TOKENS,
            )
    assert caught.value.code == "rate_limit_exceeded"


def test_running_requests_are_limited_across_replicas(platform: Platform) -> None:
    p = platform
    key = limit_key(p, RateLimits(concurrent_requests=3))
    answers = burst(p, key, 2)
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {200, 429} and 1 <= statuses[200] <= 3, statuses
    busy = next(r for r in answers if r.status_code == 429)
    assert "3 requests of this API key are already running" in busy.json()["error"]["message"]
    assert busy.headers["Retry-After"] == "1"
    assert busy.headers[h.LIMIT_CONCURRENT] == "3"


def burst(p: Platform, key: str, each: int) -> list[requests.Response]:
    """``each`` requests on every replica at once."""
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def one(url: str) -> None:
        r = post(url, key, body=RUNNING)
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=one, args=(url,)) for url, _ in p.ingresses * each]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_headers_on_success_and_a_keys_override_replaces_its_plans_limits(
    platform: Platform,
) -> None:
    p = platform
    url = p.ingresses[0][0]
    ok = post(url, p.key)  # the developer plan's limits
    assert ok.status_code == 200, ok.text
    assert ok.headers[h.LIMIT_REQUESTS] == "600"
    assert ok.headers[h.LIMIT_TOKENS] == "200000"
    assert ok.headers[h.LIMIT_CONCURRENT] == "16"
    assert 0 <= int(ok.headers[h.REMAINING_REQUESTS]) < 600
    assert 0 <= int(ok.headers[h.REMAINING_TOKENS]) < 200000
    for name in (h.RESET_REQUESTS, h.RESET_TOKENS):
        assert 0 < seconds(ok.headers[name]) <= WINDOW_S
    # The key's override: 3 requests per minute, the plan's tokens.
    tight = limit_key(p, RateLimits(requests_per_minute=3))
    answers = [post(url, tight) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers[h.REMAINING_REQUESTS] for r in answers] == ["2", "1", "0", "0"]
    assert answers[0].headers[h.LIMIT_REQUESTS] == "3"
    assert answers[0].headers[h.LIMIT_TOKENS] == "200000"
    # An operator clears it: the plan's limits apply again (after the key cache's few seconds).
    keys = ApiKeys(p.ledger.store)
    keys.set_rate_limits("racer", keys.lookup(tight).key_id, None)
    deadline = time.monotonic() + 10
    while post(url, tight).headers[h.LIMIT_REQUESTS] != "600":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_a_killed_replicas_running_slots_lapse(platform: Platform) -> None:
    """Last in the module: it kills a replica of the shared platform."""
    p = platform
    key = limit_key(p, RateLimits(concurrent_requests=2))
    key_id = ApiKeys(p.ledger.store).lookup(key).key_id
    doomed, _ = p.ingresses[0]
    slow = {**REQUEST, "messages": [{"role": "user", "content": "wait 8"}]}
    for _ in range(2):  # both slots taken by requests running on the first replica
        threading.Thread(
            target=lambda: _quietly(lambda: post(doomed, key, body=slow)), daemon=True
        ).start()
    deadline = time.monotonic() + 10
    while running_slots(p, key_id) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    other = p.ingresses[1][0]
    assert post(other, key).status_code == 429  # the limit is all held
    p.ingresses[0][1].send_signal(signal.SIGKILL)
    p.ingresses[0][1].wait(5)
    killed = time.monotonic()
    # The dead replica never renews: its slots are free within the TTL (and a renewal's half).
    while (r := post(other, key)).status_code == 429:
        assert time.monotonic() - killed < 3 * SHARE_TTL_S + 2, r.text
        time.sleep(0.2)
    assert r.status_code == 200


def running_slots(p: Platform, key_id: str) -> int:
    item = p.ledger.store.get(f"RATE#{key_id}", "RUNNING")
    holders = {} if item is None else item.data["holders"]
    return sum(int(entry["running"]) for entry in holders.values())


def _quietly(call: Any) -> None:
    with contextlib.suppress(requests.RequestException):  # its replica was killed
        call()


def seconds(reset: str) -> float:
    """OpenAI's reset duration ("1m2.5s", "350ms") in seconds."""
    if reset.endswith("ms"):
        return int(reset[:-2]) / 1000
    total, number = 0.0, ""
    for char in reset:
        if char in "hms":
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            number += char
    return total
