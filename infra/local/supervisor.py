"""Child processes of ``tollgate up``: start each function, wait until healthy, restart what
crashes, stop them all.

Children get their own process group, so a Ctrl-C in the terminal reaches only ``tollgate up``,
which then stops them in order (SIGTERM, wait, SIGKILL after a grace period). On Linux they are
also told to die with their parent, so even a killed ``tollgate up`` leaves no orphans.

A child that exits is restarted as Kubernetes restarts a crashed container (CrashLoopBackOff),
each on its own clock: the first crash at once, then after 1, 2, 4 ... seconds, capped; a child
that stayed up long enough starts over. The rest of the platform keeps serving meanwhile.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

STOP_GRACE_S = 10.0
HEALTH_POLL_S = 0.2
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessSpec:
    """One function process: what it runs, where it listens, what it is told."""

    name: str
    argv: Sequence[str]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ChildFailed(RuntimeError):
    """A child exited or never became healthy; the message carries its last log lines."""


# Loaded once here: the child, between fork and exec, must not import or load anything.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies.
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float = field(default_factory=time.monotonic)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class BackOff:
    """CrashLoopBackOff: how long to wait before restarting a child after its n-th crash in a
    row. Kubernetes uses 10 s doubling to 5 min, reset after 10 min up; the defaults here are a
    developer machine's (1 s doubling to 60 s, reset after 60 s up)."""

    first_s: float = FIRST_BACKOFF_S
    max_s: float = MAX_BACKOFF_S
    stable_after_s: float = STABLE_AFTER_S

    def delay(self, crashes: int) -> float:
        """Before the restart that follows crash number ``crashes`` (1-based) in a row."""
        if crashes <= 1:
            return 0.0
        return float(min(self.max_s, self.first_s * 2 ** (crashes - 2)))


@dataclass
class Restart:
    """A crashed child waiting for its restart."""

    child: Child
    crashes: int  # in a row, this one included
    due: float  # time.monotonic()


class Restarts:
    """Per-child crash counts and due restarts (the watch loop asks ``due`` what to restart)."""

    def __init__(self, backoff: BackOff, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._clock = clock
        self._crashes: dict[str, int] = {}
        self.waiting: dict[str, Restart] = {}

    def crashed(self, child: Child) -> Restart:
        """Schedule ``child``'s restart; a child that had been up for a while starts over."""
        now = self._clock()
        name = child.spec.name
        stable = now - child.started >= self.backoff.stable_after_s
        crashes = 1 if stable else self._crashes.get(name, 0) + 1
        self._crashes[name] = crashes
        restart = Restart(child, crashes, now + self.backoff.delay(crashes))
        self.waiting[name] = restart
        return restart

    def forget(self, name: str) -> None:
        """``name`` was retired: no restart, and a later child of that name starts afresh."""
        self.waiting.pop(name, None)
        self._crashes.pop(name, None)

    def due(self) -> list[Restart]:
        now = self._clock()
        ready = [r for r in self.waiting.values() if r.due <= now]
        for restart in ready:
            del self.waiting[restart.child.spec.name]
        return ready


class Supervisor:
    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.children: list[Child] = []
        self._retiring: list[tuple[Child, float]] = []  # (child, when to SIGKILL it)

    def start(self, spec: ProcessSpec) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            list(spec.argv),
            env={**self._base_env, **spec.env, "PORT": str(spec.port)},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        child = Child(spec, process, log_path, log_file)
        self.children.append(child)
        return child

    def wait_healthy(self, child: Child, timeout_s: float) -> None:
        """Poll the child's /healthz until it answers 200; raise ChildFailed if it dies first."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = child.process.poll()
            if code is not None:
                raise ChildFailed(
                    f"{child.spec.name} exited with status {code}; its last log lines "
                    f"({child.log_path}):\n{child.tail()}"
                )
            try:
                if requests.get(child.spec.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{child.spec.name} was not healthy after {timeout_s:.0f}s; its last log "
                    f"lines ({child.log_path}):\n{child.tail()}"
                )
            time.sleep(HEALTH_POLL_S)

    def restart(self, child: Child) -> Child:
        """Start a dead child again with the same spec (Knative would reschedule the pod)."""
        assert child.process.poll() is not None, "restart only a child that exited"
        child.log_file.close()
        self.children.remove(child)
        return self.start(child.spec)

    def find(self, name: str) -> Child | None:
        """The child of that name, running or dead and not yet restarted."""
        return next((c for c in self.children if c.spec.name == name), None)

    def retire(self, child: Child, grace_s: float = STOP_GRACE_S) -> None:
        """Stop one child for good (a replica scaled away): SIGTERM now, SIGKILL once past
        ``grace_s`` (``reap``); it is no longer a child to restart."""
        if child not in self.children:
            return
        self.children.remove(child)
        if child.process.poll() is None:
            child.process.terminate()
        self._retiring.append((child, time.monotonic() + grace_s))

    def reap(self) -> None:
        """Collect retired children that exited; SIGKILL those past their grace."""
        still = []
        for child, kill_at in self._retiring:
            if child.process.poll() is None:
                if time.monotonic() < kill_at:
                    still.append((child, kill_at))
                    continue
                child.process.kill()
                child.process.wait()
            child.log_file.close()
        self._retiring = still

    def dead(self, waiting: Container[str] = ()) -> list[Child]:
        """The children that exited on their own, except those already ``waiting`` a restart."""
        return [
            c for c in self.children if c.process.poll() is not None and c.spec.name not in waiting
        ]

    def stop(self, grace_s: float = STOP_GRACE_S, *, last: Container[str] = ()) -> None:
        """SIGTERM everyone, the ingress first (it calls the rest) and the ``last`` ones after
        all others are gone; SIGKILL who outlives its grace period."""
        retiring = [c for c, _ in self._retiring]
        self._retiring.clear()
        first = retiring + [c for c in reversed(self.children) if c.spec.name not in last]
        final = [c for c in reversed(self.children) if c.spec.name in last]
        for group in (first, final):
            for child in group:
                if child.process.poll() is None:
                    child.process.terminate()
            deadline = time.monotonic() + grace_s
            for child in group:
                try:
                    child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
                child.log_file.close()
        self.children.clear()
