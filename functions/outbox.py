"""A durable outbox: events a function owes someone, on disk until they are acknowledged.

``put`` returns once the event is committed to a sqlite file (synchronous=FULL), so a process
killed right after still owes it; a delivery thread then hands each event to its route's
``Deliver`` until that answers: delivered (done), refused (a 4xx: kept as a local dead letter,
counted and logged, never retried) or not yet (retried with capped exponential backoff, forever).
A restarted process delivers what its predecessor left. Several processes may share one file:
each delivery is claimed first (its due time pushed past the attempt), so no two send it at once.

A route may deliver many entries in one go (``Batched``): each pass hands it everything due on it
(up to ``BATCH``) and it answers one outcome per entry, recorded as a single entry's would be.
``batched_sink_route`` packs entries of the types it is told about into one event per source
(infer: many requests' ``inference.completed`` as one ``inference.usage``), so under load one HTTP
call carries many entries and at a low rate each still goes out as soon as it is owed (``linger_s``:
after a pass that was not full, wait that long before the next, so a steady stream goes in fewer,
larger batches; the first event after a quiet spell still goes at once). Each entry stays its
own row: owing, retrying and dead-lettering are per entry; the batch is only how it travels.

Bounded: ``max_pending`` undelivered events. Past ``warn_fraction`` of it the outbox says so
loudly (log and gauge); at the limit ``full`` is true and the function stops taking work that
would owe more (infer answers 503, so the ingress fails over). ``put`` itself never refuses: the
work was done, and what it owes is written however full the outbox is.

Events are deduplicated on (route, source, id): putting the same event twice owes it once.
Delivered events are kept ``keep_seconds`` (the function's own per-request record), then pruned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from functions.emit import Emitter, Sent

log = logging.getLogger(__name__)

SINK = "sink"  # the default route: K_SINK (the broker)
FILE_NAME = "outbox.db"
DEFAULT_DIR = Path(".tollgate/outbox")
DEFAULT_MAX_PENDING = 50_000
DEFAULT_KEEP_S = 600.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CLAIM_S = 15.0  # an attempt's claim: longer than any route's own timeout (5 s)
IDLE_S = 5.0
BATCH = 64  # claimed per pass: what a batched route gets at most in one go
PRUNE_EVERY_S = 60.0
DRAIN_PAUSE_S = 0.5
_BUSY_TIMEOUT_S = 30.0
# Every outbox this process opened, for a shutdown's last delivery pass (drain_all).
_OPEN: weakref.WeakSet[Outbox] = weakref.WeakSet()

PENDING = Gauge("tollgate_outbox_pending", "Events owed and not yet delivered.", ["outbox"])
OLDEST = Gauge(
    "tollgate_outbox_oldest_pending_seconds", "Age of the oldest undelivered event.", ["outbox"]
)
NEAR_FULL = Gauge(
    "tollgate_outbox_near_full", "1 when pending events passed the warning mark.", ["outbox"]
)
DELIVERED = Counter("tollgate_outbox_delivered", "Events delivered and acknowledged.", ["outbox"])
RETRIED = Counter("tollgate_outbox_retries", "Delivery attempts that will be retried.", ["outbox"])
DEAD = Counter(
    "tollgate_outbox_dead_letters",
    "Events their receiver refused for good (4xx): kept locally, never retried.",
    ["outbox"],
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    subject TEXT,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    -- 'pending' until acknowledged ('delivered') or refused for good ('dead')
    state TEXT NOT NULL DEFAULT 'pending',
    finished REAL,
    last_error TEXT,
    UNIQUE (route, source, id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, due);
"""


class Verdict(Enum):
    DELIVERED = "delivered"
    REFUSED = "refused"  # never retried: a dead letter
    RETRY = "retry"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str = ""


@dataclass(frozen=True)
class Entry:
    """One owed event."""

    seq: int
    route: str
    type: str
    source: str
    id: str
    subject: str | None
    data: dict[str, Any]
    attempts: int


Deliver = Callable[[Entry], Outcome]
DeliverMany = Callable[[Sequence[Entry]], Sequence[Outcome]]


@dataclass(frozen=True)
class Batched:
    """A route that delivers many entries at once: ``deliver`` answers one outcome per entry,
    in their order."""

    deliver: DeliverMany


Route = Deliver | Batched


class OutboxError(Exception):
    """The event could not be written (disk full, file unusable): it is not owed durably."""


class Outbox:
    def __init__(
        self,
        directory: str | Path,
        routes: Mapping[str, Route],
        *,
        name: str,
        max_pending: int = DEFAULT_MAX_PENDING,
        warn_fraction: float = 0.8,
        keep_seconds: float = DEFAULT_KEEP_S,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        claim_s: float = CLAIM_S,
        linger_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``claim_s``: how long an attempt keeps its event from other processes sharing the
        file; also how long a process killed mid-attempt delays it. ``linger_s``: the pause after
        a pass that was not full (see the module's doc)."""
        assert max_pending >= 1 and 0 < warn_fraction <= 1
        self.path = Path(directory) / FILE_NAME
        self.routes = dict(routes)
        self.name = name
        self.max_pending = max_pending
        self.warn_at = max(1, int(max_pending * warn_fraction))
        self.keep_seconds = keep_seconds
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.claim_s = claim_s
        self.linger_s = linger_s
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path),
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = self._count_pending()
        self._warned = False
        self._last_prune = 0.0
        PENDING.labels(name).set_function(lambda: self._pending)
        OLDEST.labels(name).set_function(self._oldest_age)
        NEAR_FULL.labels(name).set_function(lambda: float(self._pending >= self.warn_at))
        _OPEN.add(self)
        if self._pending:
            log.warning("outbox %s: %d events owed from before; delivering", name, self._pending)
            self.start()

    # -- owing ----------------------------------------------------------------------------------

    def put(
        self,
        type: str,
        source: str,
        data: dict[str, Any],
        *,
        id: str,
        subject: str | None = None,
        route: str = SINK,
        delay_s: float = 0.0,
    ) -> None:
        """Owe this event, durably, once (a second put of the same route+source+id is a no-op),
        first due ``delay_s`` from now (a drain at shutdown delivers it sooner).
        Raises OutboxError if it cannot be written."""
        if route not in self.routes:
            raise ValueError(f"outbox {self.name} has no route {route!r}")
        assert delay_s >= 0, delay_s
        now = self._clock()
        body = json.dumps(data, separators=(",", ":"))
        try:
            with self._lock:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO outbox (route, type, source, id, subject, data, "
                    "created, due) VALUES (?,?,?,?,?,?,?,?)",
                    (route, type, source, id, subject, body, now, now + delay_s),
                )
                if cursor.rowcount == 1:
                    self._pending += 1
        except sqlite3.Error as exc:
            raise OutboxError(f"could not owe {type} {id} in {self.path}: {exc}") from exc
        self._check_size()
        self.start()
        with self._wake:
            self._wake.notify()

    def emit(self, type: str, source: str, data: dict[str, Any], *, id: str | None = None) -> None:
        """``put`` to K_SINK, in the shape of ``functions.emit.Emitter.emit``."""
        if id is None:
            raise ValueError("an owed event needs a stable id (its receivers dedupe on it)")
        self.put(type, source, data, id=id)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def full(self) -> bool:
        return self._pending >= self.max_pending

    def _check_size(self) -> None:
        if self._pending >= self.warn_at and not self._warned:
            self._warned = True
            log.error(
                "outbox %s holds %d undelivered events (limit %d): its receiver is not taking "
                "them; at the limit this function stops taking work",
                self.name,
                self._pending,
                self.max_pending,
            )
        elif self._pending < self.warn_at // 2:
            self._warned = False

    # -- delivering -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (idempotent; ``put`` starts it)."""
        with self._wake:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"outbox-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()

    def drain(self, timeout_s: float) -> int:
        """Attempt everything owed, backoff or not, pass after pass, until nothing is owed or
        ``timeout_s`` passes (a shutdown's grace period); returns what is still owed."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            before = self._pending
            self.deliver_due(horizon=float("inf"))
            if self._pending and self._pending >= before:
                time.sleep(min(DRAIN_PAUSE_S, max(deadline - time.monotonic(), 0.0)))
        return self._pending

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                delivered = self.deliver_due()
                self._maybe_prune()
                wait = 0.0 if delivered else self._until_next_due()
            except Exception:  # a bug or a broken file must not end delivery for good
                log.exception("outbox %s: delivery pass failed", self.name)
                delivered, wait = 0, IDLE_S
            if 0 < delivered < BATCH and self.linger_s > 0:
                # Not woken by puts: what they owe meanwhile goes in the next pass, together.
                self._stopping.wait(self.linger_s)
            elif wait > 0:
                with self._wake:
                    self._wake.wait(wait)

    def deliver_due(self, horizon: float | None = None) -> int:
        """One pass: claim what is due (by ``horizon``, default now) and attempt each once.
        Returns how many were attempted."""
        now = self._clock()
        entries = self._claim(now if horizon is None else horizon, now, BATCH)
        by_route: dict[str, list[Entry]] = {}
        for entry in entries:
            by_route.setdefault(entry.route, []).append(entry)
        for name, owed in by_route.items():
            route = self.routes[name]
            if isinstance(route, Batched):
                self._record(owed, self._attempt_many(name, route, owed))
            else:
                self._record(owed, [self._attempt(name, route, entry) for entry in owed])
        return len(entries)

    def _attempt(self, name: str, route: Deliver, entry: Entry) -> Outcome:
        try:
            return route(entry)
        except Exception as exc:  # the route's bug: retry later, loudly
            log.exception("outbox %s: route %s failed on %s", self.name, name, entry.id)
            return Outcome(Verdict.RETRY, f"{exc.__class__.__name__}: {exc}")

    def _attempt_many(self, name: str, route: Batched, entries: list[Entry]) -> list[Outcome]:
        try:
            outcomes = list(route.deliver(entries))
        except Exception as exc:  # the route's bug: retry them all later, loudly
            log.exception("outbox %s: route %s failed on %d entries", self.name, name, len(entries))
            return [Outcome(Verdict.RETRY, f"{exc.__class__.__name__}: {exc}")] * len(entries)
        if len(outcomes) != len(entries):
            log.error(
                "outbox %s: route %s answered %d outcomes for %d entries; retrying them",
                self.name,
                name,
                len(outcomes),
                len(entries),
            )
            return [Outcome(Verdict.RETRY, "the route answered no outcome for it")] * len(entries)
        return outcomes

    def _claim(self, due_by: float, now: float, limit: int) -> list[Entry]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT seq, route, type, source, id, subject, data, attempts FROM outbox "
                    "WHERE state = 'pending' AND due <= ? ORDER BY due LIMIT ?",
                    (due_by, limit),
                ).fetchall()
                self._db.executemany(
                    "UPDATE outbox SET due = ? WHERE seq = ?",
                    [(now + self.claim_s, row[0]) for row in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [
            Entry(seq, route, type_, source, id_, subject, json.loads(data), attempts)
            for seq, route, type_, source, id_, subject, data, attempts in rows
        ]

    def _record(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        """Every outcome of one attempt in one transaction (one disk sync, not one per entry)."""
        now = self._clock()
        retries: list[tuple[int, float, str, int]] = []
        finals: list[tuple[int, str, float, str | None, int]] = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            attempts = entry.attempts + 1
            if outcome.verdict is Verdict.RETRY:
                due = now + self._backoff(attempts)
                retries.append((attempts, due, outcome.detail[:1000], entry.seq))
            else:
                state = "delivered" if outcome.verdict is Verdict.DELIVERED else "dead"
                finals.append((attempts, state, now, outcome.detail[:1000] or None, entry.seq))
        finished: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE outbox SET attempts = ?, due = ?, last_error = ? WHERE seq = ?",
                    retries,
                )
                for final in finals:
                    finished.append(
                        self._db.execute(
                            "UPDATE outbox SET attempts = ?, state = ?, finished = ?, "
                            "last_error = ? WHERE seq = ? AND state = 'pending'",
                            final,
                        ).rowcount
                        == 1
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending = max(0, self._pending - sum(finished))
        for entry, outcome in zip(entries, outcomes, strict=True):
            self._report(entry, outcome, entry.attempts + 1)

    def _report(self, entry: Entry, outcome: Outcome, attempts: int) -> None:
        if outcome.verdict is Verdict.RETRY:
            RETRIED.labels(self.name).inc()
            if attempts in (3, 10) or attempts % 50 == 0:
                log.warning(
                    "outbox %s: %s %s not delivered after %d attempts: %s",
                    self.name,
                    entry.type,
                    entry.id,
                    attempts,
                    outcome.detail,
                )
        elif outcome.verdict is Verdict.DELIVERED:
            DELIVERED.labels(self.name).inc()
        else:
            DEAD.labels(self.name).inc()
            log.error(
                "outbox %s: %s %s (%s) refused for good, kept as a dead letter in %s: %s",
                self.name,
                entry.type,
                entry.id,
                entry.source,
                self.path,
                outcome.detail,
            )

    def _backoff(self, attempts: int) -> float:
        capped = min(self.max_backoff_s, self.first_backoff_s * 2.0 ** (attempts - 1))
        return capped * random.uniform(0.8, 1.2)  # jittered: a recovered receiver is not stormed

    def _until_next_due(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT MIN(due) FROM outbox WHERE state = 'pending'").fetchone()
        if row[0] is None:
            return IDLE_S
        return min(IDLE_S, max(float(row[0]) - self._clock(), 0.01))

    def _maybe_prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        with self._lock:
            self._db.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND finished < ?",
                (now - self.keep_seconds,),
            )
            # Other processes sharing the file move the count too.
            row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            self._pending = int(row.fetchone()[0])

    # -- reading --------------------------------------------------------------------------------

    def _count_pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()
        return int(row[0])

    def _oldest_age(self) -> float:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT MIN(created) FROM outbox WHERE state = 'pending'"
                ).fetchone()
        except sqlite3.Error:  # closed, or the disk failed: /metrics must still answer
            return 0.0
        return 0.0 if row[0] is None else max(self._clock() - float(row[0]), 0.0)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}

    def close(self) -> None:
        _OPEN.discard(self)
        self.stop()
        for gauge in (PENDING, OLDEST, NEAR_FULL):
            with contextlib.suppress(KeyError):
                gauge.remove(self.name)
        with self._lock:
            self._db.close()


def owed(directory: str | Path) -> int:
    """Events the outbox in ``directory`` still owes, read from outside the process that owns
    it (0 when there is none): whoever stops that process may wait for, or hand on, the rest."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
        ) as db:
            row = db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read the outbox {path}: {exc}") from exc
    return int(row[0])


def drain_all(timeout_s: float) -> int:
    """A stopping process's last delivery pass over every outbox it opened, for at most
    ``timeout_s`` in all; returns what is still owed (it stays on disk)."""
    deadline = time.monotonic() + timeout_s
    owed = 0
    for box in list(_OPEN):
        box.stop()  # its own thread would race this pass for the same events
        owed += box.drain(max(deadline - time.monotonic(), 0.0))
    return owed


def sink_route(emitter: Emitter) -> Deliver:
    """Deliver to K_SINK through the emitter (the one place events leave a function)."""

    def deliver(entry: Entry) -> Outcome:
        if emitter.sink is None:  # a misconfigured function: loud, and never a silent pile-up
            return Outcome(Verdict.REFUSED, "K_SINK is not set: nowhere to deliver")
        sent = emitter.send(
            entry.type, entry.source, entry.data, id=entry.id, subject=entry.subject
        )
        return _outcome(sent)

    return deliver


def _outcome(sent: Sent) -> Outcome:
    if sent.delivered:
        return Outcome(Verdict.DELIVERED)
    return Outcome(Verdict.REFUSED if sent.refused else Verdict.RETRY, sent.problem)


Pack = Callable[[Sequence[Entry]], dict[str, Any]]


@dataclass(frozen=True)
class Batching:
    """How owed events of one type travel together: as one event of ``type`` whose data ``pack``
    makes of at most ``limit`` of them (all of one source: the batch's source is theirs)."""

    type: str
    limit: int
    pack: Pack


# Batch ids derive from the entries in them, so a batch resent unchanged has the same id and one
# of other entries never shares it (a receiver deduping on source + id drops only true repeats).
_BATCH_NAMESPACE = uuid.UUID("0b6f7c1e-4f0a-4c39-9a59-51d8a3c2e7b4")


def batched_sink_route(emitter: Emitter, batching: Mapping[str, Batching]) -> Batched:
    """K_SINK, as ``sink_route``, but entries of a type in ``batching`` go as batches (per
    source, up to the limit). A batch the sink refuses for good (a receiver that does not take
    the batch type yet, a policy that does not allow it) is sent again one entry at a time, so
    each entry gets its own verdict; a batch not delivered yet is retried as a whole."""
    single = sink_route(emitter)

    def deliver(entries: Sequence[Entry]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        groups: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            if entry.type in batching:
                groups.setdefault((entry.type, entry.source), []).append(entry)
            else:
                outcomes[entry.seq] = single(entry)
        for (type_, source), grouped in groups.items():
            how = batching[type_]
            grouped.sort(key=lambda entry: entry.seq)  # in the order owed, retries or not
            for start in range(0, len(grouped), how.limit):
                chunk = grouped[start : start + how.limit]
                for entry, outcome in zip(chunk, send_batch(how, source, chunk), strict=True):
                    outcomes[entry.seq] = outcome
        return [outcomes[entry.seq] for entry in entries]

    def send_batch(how: Batching, source: str, chunk: list[Entry]) -> list[Outcome]:
        if emitter.sink is None:
            return [single(entry) for entry in chunk]
        ids = "\n".join(f"{entry.source}#{entry.id}" for entry in chunk)
        batch_id = str(uuid.uuid5(_BATCH_NAMESPACE, ids))
        sent = emitter.send(how.type, source, how.pack(chunk), id=batch_id)
        if sent.refused:
            log.warning(
                "%s to %s refused (%s): sending its %d entries one by one",
                how.type,
                emitter.sink,
                sent.problem,
                len(chunk),
            )
            return [single(entry) for entry in chunk]
        return [_outcome(sent)] * len(chunk)

    return Batched(deliver)


@dataclass(frozen=True)
class OutboxSettings:
    """Where and how big, from the environment (``TOLLGATE_OUTBOX_*``)."""

    directory: Path
    max_pending: int = DEFAULT_MAX_PENDING
    keep_seconds: float = DEFAULT_KEEP_S
    max_backoff_s: float = MAX_BACKOFF_S
    linger_s: float = 0.0

    @classmethod
    def from_env(
        cls,
        function: str,
        environ: Mapping[str, str] | None = None,
        *,
        linger_s: float = 0.0,
    ) -> OutboxSettings:
        """``TOLLGATE_OUTBOX_DIR`` (default ``.tollgate/outbox/<function>``, beside the default
        store); ``_MAX_PENDING``, ``_KEEP_SECONDS``, ``_MAX_BACKOFF_SECONDS``, ``_LINGER_MS``
        (default: the function's ``linger_s``)."""
        env = os.environ if environ is None else environ
        directory = env.get("TOLLGATE_OUTBOX_DIR") or str(DEFAULT_DIR / function)
        prefix = "TOLLGATE_OUTBOX_"
        try:
            return cls(
                directory=Path(directory),
                max_pending=int(env.get(prefix + "MAX_PENDING") or DEFAULT_MAX_PENDING),
                keep_seconds=float(env.get(prefix + "KEEP_SECONDS") or DEFAULT_KEEP_S),
                max_backoff_s=float(env.get(prefix + "MAX_BACKOFF_SECONDS") or MAX_BACKOFF_S),
                linger_s=float(env.get(prefix + "LINGER_MS") or linger_s * 1000) / 1000,
            )
        except ValueError as exc:
            raise ValueError(f"invalid TOLLGATE_OUTBOX_* setting: {exc}") from None

    def open(self, name: str, routes: Mapping[str, Route]) -> Outbox:
        return Outbox(
            self.directory,
            routes,
            name=name,
            max_pending=self.max_pending,
            keep_seconds=self.keep_seconds,
            max_backoff_s=self.max_backoff_s,
            linger_s=self.linger_s,
        )
