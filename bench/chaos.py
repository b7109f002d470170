"""The chaos run: money survives faults. Every credit is tallied after a storm.

Against `tollgate up` (the real model on every tier) on sqlite and on DynamoDB Local: clients
across accounts send requests (streamed and not, some cancelled mid-stream) while a fault driver,
bounded in time and count, SIGKILLs processes (ledger, infer, broker, ingress: each restarts on
its own back-off), has the broker drop, duplicate, delay and reorder deliveries
(infra/local/broker_faults.py), stops the store for seconds at a time (DynamoDB Local: SIGSTOP and
SIGCONT of its java process; sqlite: an exclusive lock held), and finally redelivers old events
straight to the ledger. Then, past every retry window (the run uses short ones: a chaos copy of
the template with fast broker retries, a short hold TTL, a sweep), it checks:

- `tollgate ledger verify` passes; every account's invariant holds with nothing held;
- each settled hold's capture is its metered usage at its quote: the usage in the journal is the
  usage in the record that settled it — infer's own per-request record (its outbox), or the
  ingress's for a stream infer broke off — and the capture is what that usage costs;
- per request (its id is in every hold's authorize key): no two holds captured (double charge),
  content that reached the client was paid for (free inference);
- per account: nothing granted beyond the initial grants and refunds of real captures (credits
  from nothing), nothing spent beyond the captures and nothing left held or expired (credits
  lost), no shortfall journaled.

It prints one table per store: requests, faults injected by kind, and those counts (all 0).

Run: `.venv/bin/python bench/chaos.py [--store sqlite|dynamodb|both] [--requests 2000]`
(`make dynamodb-local` first for DynamoDB Local). A short version runs in `make test`
(tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from events import types, wire  # noqa: E402
from events.quote import Quote, Usage  # noqa: E402
from functions.cloudevent import make_event, to_binary  # noqa: E402
from functions.store import open_store  # noqa: E402
from functions.store.dynamodb import create_table  # noqa: E402
from infra.local.issuer import Issuer  # noqa: E402
from infra.local.platform import free_port  # noqa: E402
from infra.template.policies import ping_account  # noqa: E402
from ledger_fn.keys import LedgerKeys  # noqa: E402
from ledger_fn.ledger import Ledger  # noqa: E402
from tests.dynamodb_local import DynamoDBLocal  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
ADMIN = "chaos-admin"
# The ledger's journal keys for this run: the harness holds them as the operator does, to read
# and verify the journal it tallies.
LEDGER_KEYS = f"chaos1:{secrets.token_urlsafe(32)}"
PROMPTS = ("Say hi", "Name a colour", "Count to three", "What is 2+2?", "Greet me in French")
# Unhinted (the cheapest tier), a budget only nearer tiers meet, a pin to the farthest.
HINTS: tuple[dict[str, str], ...] = (
    {},
    {wire.LATENCY_BUDGET_MS: "60"},
    {wire.TIER: "cloud"},
)
# And every infer replica running at the time (infer-<tier>-<n>).
KILLABLE = ("ledger", "broker", "ingress")
# The chaos template: money deliveries retry fast and long (a linear 0.2 s step, 60 times: six
# minutes), so a faulty run settles in minutes, not the hours the shipped exponential policy
# would take to give up.
FAST_RETRY = "{retry: 60, backoffPolicy: linear, backoffDelay: PT0.2S, deadLetterSink: deadletters}"


@dataclass
class ChaosConfig:
    requests: int = 2000
    clients: int = 16
    accounts: int = 20
    credits: int = 50_000_000  # per account: nobody runs short, so no shortfall is expected
    stream_share: float = 0.5
    cancel_share: float = 0.1  # of streams: the client closes after a chunk or two
    max_tokens: tuple[int, int] = (4, 12)
    kill_every_s: float = 6.0
    kills: int = 30
    store_stops: int = 12
    store_stop_s: tuple[float, float] = (1.0, 3.0)
    broker_faults: dict[str, float] = field(
        default_factory=lambda: {
            "drop": 0.03,
            "lose_reply": 0.03,
            "duplicate": 0.03,
            "delay": 0.05,
            "reorder": 0.03,
        }
    )
    max_broker_faults: int = 400
    redeliveries: int = 60
    hold_ttl_s: int = 120  # longer than any settle's journey here (kills back off up to ~30 s)
    settle_timeout_s: float = 600.0
    startup_timeout_s: float = 240.0
    seed: int = 7


@dataclass
class Outcome:
    """What one client saw."""

    request_id: str | None
    hold_id: str | None
    status: int | None  # None: no HTTP answer (connection refused or cut)
    stream: bool
    content: bool  # some generated text reached the client
    kind: str  # ok | cancelled | cut | error | "<status> <error code>"


@dataclass
class Tally:
    store: str
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    created: int = 0
    lost: int = 0
    free: int = 0
    double: int = 0
    shortfalls: int = 0
    mismatched: int = 0
    unrecorded: int = 0
    left_held: int = 0
    verify: str = ""
    verify_ok: bool = False
    info: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        zeros = (
            self.created,
            self.lost,
            self.free,
            self.double,
            self.shortfalls,
            self.mismatched,
            self.unrecorded,
            self.left_held,
        )
        return self.verify_ok and not any(zeros)


# -- the platform -----------------------------------------------------------------------------


def chaos_template(path: Path) -> Path:
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    for policy in (
        "{retry: 12, backoffPolicy: exponential, backoffDelay: PT1S, deadLetterSink: deadletters}",
        "{retry: 5, backoffPolicy: exponential, backoffDelay: PT0.5S, deadLetterSink: deadletters}",
    ):
        assert policy in text, f"the shipped template changed its delivery policy: {policy}"
        text = text.replace(policy, FAST_RETRY)
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def platform(state: Path, config: ChaosConfig, store_url: str) -> Iterator[dict[str, Any]]:
    """`tollgate up` on ``store_url`` with the chaos template and fault settings."""
    state.mkdir(parents=True, exist_ok=True)
    faults = state.parent / "broker-faults.json"
    faults.write_text(
        json.dumps(
            {
                "log": str(state.parent / "broker-faults.log"),
                "seed": config.seed,
                "max_faults": config.max_broker_faults,
                **config.broker_faults,
            }
        )
    )
    log = (state.parent / "up.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "up",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state),
            "--template",
            str(chaos_template(state.parent / "template.yaml")),
            "--store",
            store_url,
            "--startup-timeout",
            str(config.startup_timeout_s),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "TOLLGATE_ADMIN_TOKEN": ADMIN,
            "TOLLGATE_LEDGER_KEYS": LEDGER_KEYS,
            "TOLLGATE_HOLD_TTL_SECONDS": str(config.hold_ttl_s),
            "TOLLGATE_OUTBOX_MAX_BACKOFF_SECONDS": "2",
            "TOLLGATE_OUTBOX_KEEP_SECONDS": str(7 * 24 * 3600),  # the records are the evidence
            "TOLLGATE_BROKER_FAULTS": str(faults),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoints_file = state / "endpoints.json"
    try:
        deadline = time.monotonic() + config.startup_timeout_s
        while not endpoints_file.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = Path(log.name).read_text(errors="replace")
                raise RuntimeError(f"tollgate up did not start:\n{output[-4000:]}")
            time.sleep(0.3)
        yield json.loads(endpoints_file.read_text())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def admin() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN}"
    return session


def retrying(call: Any, attempts: int = 30) -> Any:
    """An admin call, retried through the faults (the ledger may be restarting)."""
    for attempt in range(attempts):
        try:
            response = call()
            if response.status_code < 500:
                return response
        except requests.RequestException:
            pass
        time.sleep(min(0.5 * (attempt + 1), 3))
    raise RuntimeError("the admin API stayed unavailable")


def open_accounts(ep: dict[str, Any], config: ChaosConfig) -> dict[str, str]:
    """account -> API key, each granted ``config.credits`` once. On the batch plan (no bound on
    queue wait): the storm's requests queue for a cluster rather than being turned away with 429,
    so as many as possible move credits."""
    s = admin()
    keys = {}
    for i in range(config.accounts):
        account = f"chaos-{i:02d}"
        retrying(
            lambda a=account: s.post(
                f"{ep['admin']}/accounts", json={"account_id": a, "plan": "batch"}
            )
        )
        retrying(
            lambda a=account: s.post(
                f"{ep['admin']}/accounts/{a}/grants",
                json={"amount": config.credits, "origin": "promotion"},
                headers={"Idempotency-Key": f"chaos-grant-{a}"},
            )
        )
        issued = retrying(lambda a=account: s.post(f"{ep['admin']}/accounts/{a}/keys"))
        keys[account] = issued.json()["key"]
    return keys


# -- the clients ------------------------------------------------------------------------------


def warm_up(ep: dict[str, Any], key: str, config: ChaosConfig) -> None:
    """One answered request per tier before the storm: every model loaded, every tier probed."""
    deadline = time.monotonic() + config.startup_timeout_s
    for tier in ("edge", "regional", "cloud"):
        while True:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            with contextlib.suppress(requests.RequestException):
                r = requests.post(
                    ep["ingress"] + "/v1/chat/completions",
                    json={**body, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {key}", wire.TIER: tier},
                    timeout=120,
                )
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tier {tier} never answered")
            time.sleep(1)


def client_loop(
    ep: dict[str, Any],
    keys: dict[str, str],
    config: ChaosConfig,
    budget: Iterator[int],
    outcomes: list[Outcome],
    lock: threading.Lock,
) -> None:
    session = requests.Session()
    for n in budget:
        rng = random.Random(config.seed * 100_003 + n)
        key = keys[rng.choice(sorted(keys))]
        stream = rng.random() < config.stream_share
        cancel = stream and rng.random() < config.cancel_share / max(config.stream_share, 1e-9)
        hints = rng.choice(HINTS)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.randint(*config.max_tokens),
            "temperature": 0,
            "stream": stream,
        }
        outcome = one_request(session, ep, key, body, hints, stream, cancel)
        with lock:
            outcomes.append(outcome)
        if outcome.status is None or outcome.status >= 500:
            time.sleep(rng.uniform(1.0, 3.0))  # as a client backs off (this request is not retried)


def one_request(
    session: requests.Session,
    ep: dict[str, Any],
    key: str,
    body: dict[str, Any],
    hints: dict[str, str],
    stream: bool,
    cancel: bool,
) -> Outcome:
    headers = {"Authorization": f"Bearer {key}", **hints}
    try:
        r = session.post(
            ep["ingress"] + "/v1/chat/completions",
            json=body,
            headers=headers,
            stream=stream,
            timeout=(5, 180),
        )
    except requests.RequestException:
        return Outcome(None, None, None, stream, False, "error")
    request_id, hold = r.headers.get(wire.REQUEST_ID), r.headers.get(wire.HOLD_ID)
    if r.status_code != 200:
        try:
            code = r.json()["error"]["code"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            code = "?"
        r.close()
        return Outcome(request_id, hold, r.status_code, stream, False, f"{r.status_code} {code}")
    if not stream:
        try:
            content = bool(r.json()["choices"][0]["message"]["content"])
        except (requests.RequestException, ValueError, KeyError, IndexError):
            return Outcome(request_id, hold, 200, stream, False, "error")
        return Outcome(request_id, hold, 200, stream, content, "ok")
    content, kind = False, "ok"
    try:
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                kind = "cut"
                break
            choices = event.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                content = True
                if cancel:
                    kind = "cancelled"
                    break
    except (requests.RequestException, ValueError):
        kind = "cut"
    finally:
        r.close()
    return Outcome(request_id, hold, 200, stream, content, kind)


# -- the faults -------------------------------------------------------------------------------


class Faults:
    """Kills and store stops, bounded in count, until ``stop``."""

    def __init__(self, state: Path, config: ChaosConfig, java_pid: int | None) -> None:
        self.state = state
        self.config = config
        self.java_pid = java_pid
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._kill_loop, daemon=True),
            threading.Thread(target=self._store_loop, daemon=True),
        ]
        self._rng = random.Random(config.seed)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _kill_loop(self) -> None:
        kills = 0
        while kills < self.config.kills:
            if self._stop.wait(self.config.kill_every_s * self._rng.uniform(0.5, 1.5)):
                return
            children = json.loads((self.state / "processes.json").read_text())["children"]
            name = self._rng.choice(
                sorted(n for n in children if n in KILLABLE or n.startswith("infer-"))
            )
            with contextlib.suppress(ProcessLookupError, KeyError):
                os.kill(int(children[name]), signal.SIGKILL)
                kills += 1
                self.counts[f"SIGKILL {name}"] += 1

    def _store_loop(self) -> None:
        every = max(self.config.kill_every_s * 2.5, 3.0)
        rng = random.Random(self.config.seed + 1)  # its own: the threads do not share one
        while self.counts["store stopped for seconds"] < self.config.store_stops:
            if self._stop.wait(every * rng.uniform(0.5, 1.5)):
                return
            self._stop_store(rng.uniform(*self.config.store_stop_s))
            self.counts["store stopped for seconds"] += 1

    def _stop_store(self, seconds: float) -> None:
        if self.java_pid is not None:  # DynamoDB Local: the whole server freezes
            os.kill(self.java_pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(self.java_pid, signal.SIGCONT)
            return
        db = sqlite3.connect(str(self.state / "tollgate.db"), timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")  # every writer waits (WAL readers go on)
            time.sleep(seconds)
            db.execute("ROLLBACK")
        finally:
            db.close()


class Identities:
    """Tokens as ``tollgate up``'s own identities: each trigger's (a redelivery comes from the
    trigger, as Knative's broker delivers) and each PingSource's, minted with its issuer's key."""

    def __init__(self, state: Path, issuer_url: str) -> None:
        config = json.loads((state / "local-broker.json").read_text(encoding="utf-8"))
        self.issuer = Issuer(config["issuer"]["namespace"], Path(config["issuer"]["key"]))
        self.issuer.url = issuer_url
        self.broker_audience = config["audience"]
        self.triggers = config["triggers"]

    def delivery(self, event_type: str, subscriber: str) -> dict[str, str]:
        """The bearer of the trigger that delivers ``event_type`` to ``subscriber``."""
        trigger = next(
            t
            for t in self.triggers
            if t["filter"].get("type") == event_type and t["subscriber"] == subscriber
        )
        return {
            "Authorization": f"Bearer {self.issuer.token(trigger['account'], trigger['audience'])}"
        }

    def ping(self, ping: str) -> dict[str, str]:
        token = self.issuer.token(ping_account(ping), self.broker_audience)
        return {"Authorization": f"Bearer {token}"}


def redeliver_old_events(
    state: Path, ledger_url: str, ids: Identities, count: int, rng: random.Random
) -> int:
    """Old settle/refund/failure events (usage batches too) straight to the ledger again, long
    after they were first handled (as a Knative redelivery would, past any dedupe window of
    recent keys)."""
    db = sqlite3.connect(f"file:{state / 'broker.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT body FROM events ORDER BY received").fetchall()
    finally:
        db.close()
    wanted = {
        types.INFERENCE_COMPLETED,
        types.INFERENCE_USAGE,
        types.INFERENCE_FAILED,
        types.HOLD_REFUND,
    }
    events = [json.loads(body) for (body,) in rows]
    events = [e for e in events if e.get("type") in wanted]
    sent = 0
    for event in rng.sample(events, min(count, len(events))):
        message = to_binary(
            make_event(event["type"], event["source"], event.get("data") or {}, id=event["id"])
        )
        headers = {**message.headers, **ids.delivery(event["type"], ledger_url)}
        with contextlib.suppress(RuntimeError):  # the ledger stayed down: not redelivered
            retrying(
                lambda m=message, h=headers: requests.post(
                    ledger_url, headers=h, data=m.body, timeout=30
                )
            )
            sent += 1
    return sent


# -- waiting for the dust -----------------------------------------------------------------------


def owed(state: Path) -> int:
    """Events still owed by every outbox, and deliveries the broker still has to make."""
    total = 0
    for db_path in (state / "outbox").glob("*/outbox.db"):
        total += _count(db_path, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
    return total + _count(
        state / "broker.db", "SELECT COUNT(*) FROM deliveries WHERE stage != 'failed'"
    )


def _count(db_path: Path, query: str) -> int:
    return sum(int(row[0]) for row in _rows(db_path, query))


def _rows(db_path: Path, query: str, params: tuple[str, ...] = ()) -> list[Any]:
    """``query``'s rows in one outbox; none for an outbox whose replica was started (and maybe
    killed) before it set up its table."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        try:
            return db.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise


def settle_down(
    ep: dict[str, Any],
    state: Path,
    config: ChaosConfig,
    accounts: list[str],
    store_url: str,
    ids: Identities,
) -> None:
    """Until nothing is owed anywhere, every hold left open has outlived its TTL and a sweep
    has returned it, and no account holds anything."""
    deadline = time.monotonic() + config.settle_timeout_s
    while owed(state):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{owed(state)} events still owed after the settle timeout")
        time.sleep(1)
    ledger = Ledger(open_store(store_url), keys=LedgerKeys.parse(LEDGER_KEYS))
    while True:
        expiries = [h.expires_at for a in accounts for h in ledger.state(a).holds.values()]
        if not expiries and not owed(state):
            return
        if time.monotonic() > deadline:
            return  # the tally reports what is still held
        # Orphans (their request's process died): due at their TTL, then swept.
        time.sleep(max(max(expiries, default=0) + 1 - time.time(), 1))
        sweep = to_binary(make_event(types.HOLDS_SWEEP, "/chaos", {}, id=f"sweep-{time.time()}"))
        headers = {**sweep.headers, **ids.ping("holds-sweep")}
        retrying(
            lambda m=sweep, h=headers: requests.post(
                ep["broker"], headers=h, data=m.body, timeout=10
            )
        )
        time.sleep(1)


# -- the tally ------------------------------------------------------------------------------


@dataclass
class Hold:
    request_id: str
    amount: int
    quote: Quote | None
    captured: int = 0
    refunded: int = 0
    settle_key: str | None = None
    settle_usage: Usage | None = None
    engine_ms: int = 0
    ended: str = "open"  # settled | voided | expired (what resolved it)

    @property
    def net(self) -> int:
        return self.captured - self.refunded


def records(state: Path) -> dict[str, dict[str, Any]]:
    """Every metering record (infer's own, the ingress's stand-ins), by the
    key the ledger journals a settle under (source#id)."""
    found: dict[str, dict[str, Any]] = {}
    wanted = (types.INFERENCE_COMPLETED, types.INFERENCE_FAILED)
    for db_path in (state / "outbox").glob("*/outbox.db"):
        query = "SELECT source, id, data, state FROM outbox WHERE type IN (?, ?)"
        for source, event_id, data, row_state in _rows(db_path, query, wanted):
            found[f"{source}#{event_id}"] = {"data": json.loads(data), "state": row_state}
    return found


def tally(
    store_url: str,
    state: Path,
    config: ChaosConfig,
    accounts: list[str],
    outcomes: list[Outcome],
    tally_: Tally,
) -> None:
    ledger = Ledger(open_store(store_url), keys=LedgerKeys.parse(LEDGER_KEYS))
    metered = records(state)
    holds: dict[str, Hold] = {}
    leases: dict[str, Quote | None] = {}
    for account in accounts:
        balance = ledger.balance(account)
        state_ = ledger.state(account)
        tally_.left_held += balance["held"] + balance["open_holds"]
        account_holds: list[Hold] = []
        after = 0
        while True:
            entries = ledger.journal(account, after=after, limit=500)
            if not entries:
                break
            for entry in entries:
                tally_.shortfalls += _shortfall(entry)
                _journal_entry(entry, holds, leases, account_holds, tally_)
            after = entries[-1]["seq"]
        refunded_lots = sum(h.refunded for h in account_holds)
        granted_beyond = balance["granted"] - config.credits - refunded_lots
        tally_.created += max(0, granted_beyond)
        tally_.created += sum(max(0, h.refunded - h.captured) for h in account_holds)
        captured = sum(h.captured for h in account_holds)
        tally_.lost += abs(balance["spent"] - captured) + balance["expired"]
        assert state_.granted == state_.available + state_.held + state_.spent + state_.expired
    for hold_id, hold in holds.items():
        _check_capture(hold_id, hold, metered, tally_)
    _per_request(holds, outcomes, tally_)
    tally_.info["metering records (infer + ingress)"] = len(metered)
    tally_.info["relayed meterings (ingress)"] = sum(
        1 for key in metered if key.startswith("/tollgate/ingress#")
    )
    tally_.info["outbox dead letters"] = sum(1 for r in metered.values() if r["state"] == "dead")


def _shortfall(entry: dict[str, Any]) -> int:
    result = entry.get("result") or {}
    value = result.get("shortfall", 0) if isinstance(result, dict) else 0
    return int(value) if isinstance(value, int) else 0


def _journal_entry(
    entry: dict[str, Any],
    holds: dict[str, Hold],
    leases: dict[str, Quote | None],
    account_holds: list[Hold],
    t: Tally,
) -> None:
    """Each request's hold from the journal. A request served from a credit lease is a hold of
    its own here too: its capture (at most its bound, under its attempt ``<request>:<cluster>``)
    and any refund of it; the lease itself only lends them its quote."""
    op, result = entry["op"], entry.get("result") or {}
    kind, args = op["kind"], op.get("args") or {}
    if kind == "authorize" and args.get("lease") and not result.get("declined"):
        quote = Quote.model_validate(args["quote"]) if args.get("quote") else None
        leases[result["hold_id"]] = quote
    elif kind == "capture":
        request = args["request"]
        hold = Hold(request.rsplit(":", 1)[0], int(args["bound"]), leases.get(args["hold_id"]))
        hold.captured = int(result["captured"])
        if not args.get("void"):  # a void is the ingress's, not a metering record
            hold.settle_key = op.get("key")
            hold.settle_usage = Usage.model_validate(args["usage"]) if args.get("usage") else None
            hold.engine_ms = int(args.get("engine_ms") or 0)
        hold.ended = "voided" if args.get("void") else "settled"
        holds[f"{args['hold_id']}/{request}"] = hold
        account_holds.append(hold)
    elif kind == "refund_capture":
        holds[f"{args['hold_id']}/{args['request']}"].refunded += int(result["refunded"])
    elif args.get("hold_id") in leases or result.get("hold_id") in leases:
        return  # a lease's own renewals, return, void or expiry: its requests are counted above
    elif kind == "authorize" and not result.get("declined"):
        key = op.get("key") or ""
        # /tollgate/ingress#<request id>#<cluster>
        request_id = key.split("#")[1] if key.count("#") >= 2 else key
        quote = Quote.model_validate(args["quote"]) if args.get("quote") else None
        hold = Hold(request_id, int(result["amount"]), quote)
        holds[result["hold_id"]] = hold
        account_holds.append(hold)
    elif kind == "settle":
        hold = holds[args["hold_id"]]
        hold.captured += int(result["captured"])
        hold.settle_key = op.get("key")
        hold.settle_usage = Usage.model_validate(args["usage"]) if args.get("usage") else None
        hold.engine_ms = int(args.get("engine_ms") or 0)
        hold.ended = "settled"
    elif kind == "refund" and result.get("voided"):
        holds[args["hold_id"]].ended = "voided"
    elif kind == "refund":
        holds[args["hold_id"]].refunded += int(result["refunded"])
    elif kind == "expire_hold":
        holds[result["hold_id"]].ended = "expired"
    elif kind == "settle_late":  # the ledger's late settle, where it exists
        hold = holds[args["hold_id"]]
        hold.captured += int(result.get("captured", 0))
        hold.settle_key = op.get("key")
        hold.settle_usage = Usage.model_validate(args["usage"]) if args.get("usage") else None
        hold.engine_ms = int(args.get("engine_ms") or 0)


def _check_capture(hold_id: str, hold: Hold, metered: dict[str, dict[str, Any]], t: Tally) -> None:
    if hold.settle_key is None:
        return
    record = metered.get(hold.settle_key)
    if record is None:
        t.unrecorded += 1
        t.problems.append(f"{hold_id}: settled under {hold.settle_key}, which nobody recorded")
        return
    usage = Usage.model_validate(record["data"]["usage"])
    engine_ms = int(record["data"].get("timings", {}).get("engine_ms", 0))
    if hold.settle_usage != usage or hold.quote is None:
        t.mismatched += 1
        t.problems.append(f"{hold_id}: journal usage {hold.settle_usage} != record {usage}")
        return
    owed_ = min(hold.quote.charge(usage, engine_ms), hold.amount)
    if hold.captured != owed_:
        t.mismatched += 1
        t.problems.append(f"{hold_id}: captured {hold.captured}, its usage costs {owed_}")


def _per_request(holds: dict[str, Hold], outcomes: list[Outcome], t: Tally) -> None:
    by_request: dict[str, list[Hold]] = {}
    ids = {id(hold): hold_id for hold_id, hold in holds.items()}
    for hold in holds.values():
        by_request.setdefault(hold.request_id, []).append(hold)

    def story(its: list[Hold]) -> str:
        return "; ".join(
            f"{ids[id(h)]} {h.ended}, captured {h.captured}, refunded {h.refunded}" for h in its
        )

    for request_id, its in by_request.items():
        if sum(1 for h in its if h.net > 0) > 1:
            t.double += 1
            t.problems.append(f"request {request_id}: captured twice: {story(its)}")
    for outcome in outcomes:
        if outcome.content and outcome.request_id is not None:
            its = by_request.get(outcome.request_id, [])
            if sum(h.net for h in its) <= 0:
                t.free += 1
                t.problems.append(
                    f"request {outcome.request_id} ({outcome.kind}, serving hold "
                    f"{outcome.hold_id}): content reached the client free: {story(its)}"
                )


# -- one run ----------------------------------------------------------------------------------


def run(store: str, config: ChaosConfig, workdir: Path, console: Console | None = None) -> Tally:
    """One chaos run on ``store`` (sqlite | dynamodb); returns the tally."""

    def say(text: str) -> None:
        if console is not None:
            console.print(f"[{store}] {text}", markup=False)

    t = Tally(store)
    state = workdir / "state"
    with contextlib.ExitStack() as stack:
        java_pid = None
        if store == "dynamodb":
            local = DynamoDBLocal()
            endpoint = stack.enter_context(local)
            java_pid = local.pid
            table = f"chaos{int(time.time())}"
            create_table(table, endpoint_url=endpoint)
            store_url = f"dynamodb://{endpoint.split('://', 1)[1]}/{table}"
        else:
            store_url = f"sqlite:///{(state / 'tollgate.db').resolve()}"
        say(f"starting tollgate up on {store_url}")
        outcomes: list[Outcome] = []
        begun = time.monotonic()
        with platform(state, config, store_url) as ep:
            keys = open_accounts(ep, config)
            warm_up(ep, next(iter(keys.values())), config)
            t.info["startup seconds"] = round(time.monotonic() - begun)
            say(f"{config.requests} requests from {config.clients} clients, faults on")
            faults = Faults(state, config, java_pid)
            started = time.monotonic()
            faults.start()
            load(ep, keys, config, outcomes)
            faults.stop()
            t.info["load seconds"] = round(time.monotonic() - started)
            t.faults.update(faults.counts)
            ids = Identities(state, ep["issuer"])
            t.faults["redelivered old event"] = redeliver_old_events(
                state,
                ep["processes"]["ledger"],
                ids,
                config.redeliveries,
                random.Random(config.seed),
            )
            say(f"load done in {t.info['load seconds']}s; waiting for every retry and the sweep")
            settled = time.monotonic()
            settle_down(ep, state, config, list(keys), store_url, ids)
            t.info["settle seconds"] = round(time.monotonic() - settled)
        # The platform is stopped: nothing writes any more. Verify and tally on the store.
        t.verify, t.verify_ok = verify(store_url)
        tally(store_url, state, config, list(keys), outcomes, t)
    log = workdir / "broker-faults.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            t.faults[f"broker {json.loads(line)['kind']}"] += 1
    t.requests = len(outcomes)
    t.outcomes.update(o.kind + (" with content" if o.content else "") for o in outcomes)
    return t


def load(
    ep: dict[str, Any], keys: dict[str, str], config: ChaosConfig, outcomes: list[Outcome]
) -> None:
    """``config.requests`` requests from ``config.clients`` threads."""
    lock = threading.Lock()
    numbers = iter(range(config.requests))

    def take() -> Iterator[int]:
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            yield n

    clients = [
        threading.Thread(target=client_loop, args=(ep, keys, config, take(), outcomes, lock))
        for _ in range(config.clients)
    ]
    for c in clients:
        c.start()
    for c in clients:
        c.join()


def verify(store_url: str) -> tuple[str, bool]:
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "ledger", "verify", "--store", store_url],
        cwd=ROOT,
        env={**os.environ, "TOLLGATE_LEDGER_KEYS": LEDGER_KEYS},
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = (done.stdout.strip().splitlines() or [done.stderr.strip()])[-1]
    return last, done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "dynamodb", "both"), default="both")
    parser.add_argument("--requests", type=int, default=ChaosConfig.requests)
    parser.add_argument("--clients", type=int, default=ChaosConfig.clients)
    parser.add_argument("--accounts", type=int, default=ChaosConfig.accounts)
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    args = parser.parse_args()
    console = Console()
    console.print(describe())
    stores = ("sqlite", "dynamodb") if args.store == "both" else (args.store,)
    config = ChaosConfig(
        requests=args.requests, clients=args.clients, accounts=args.accounts, seed=args.seed
    )
    tallies = []
    for store in stores:
        workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{store}-"))
        tallies.append(run(store, config, workdir, console))
        if tallies[-1].ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"[{store}] kept for a look: {workdir}", markup=False)
    console.print(table(tallies))
    for t in tallies:
        for problem in t.problems[:20]:
            console.print(f"[{t.store}] {problem}", markup=False)
    sys.exit(0 if all(t.ok for t in tallies) else 1)


def table(tallies: list[Tally]) -> Table:
    out = Table(title="chaos: every credit tallied", title_justify="left")
    out.add_column("")
    for t in tallies:
        out.add_column(t.store, justify="right")

    def row(label: str, values: list[Any]) -> None:
        out.add_row(label, *(str(v) for v in values))

    row("requests", [t.requests for t in tallies])
    for kind in sorted({k for t in tallies for k in t.outcomes}):
        row(f"  client saw: {kind}", [t.outcomes[kind] for t in tallies])
    for kind in sorted({k for t in tallies for k in t.faults}):
        row(f"fault: {kind}", [t.faults[kind] for t in tallies])
    row("credits created from nothing", [t.created for t in tallies])
    row("credits lost", [t.lost for t in tallies])
    row("free inferences", [t.free for t in tallies])
    row("double charges", [t.double for t in tallies])
    row("shortfalls", [t.shortfalls for t in tallies])
    row("captures not equal to metered usage", [t.mismatched for t in tallies])
    row("captures without a metering record", [t.unrecorded for t in tallies])
    row("held after the sweep", [t.left_held for t in tallies])
    row("tollgate ledger verify", [t.verify for t in tallies])
    for kind in sorted({k for t in tallies for k in t.info}):
        row(f"  {kind}", [t.info[kind] for t in tallies])
    return out


if __name__ == "__main__":
    main()
