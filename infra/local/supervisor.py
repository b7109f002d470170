"""Child processes of ``tollgate up``: start each function, wait until healthy, stop them all.

Children get their own process group, so a Ctrl-C in the terminal reaches only ``tollgate up``,
which then stops them in order (SIGTERM, wait, SIGKILL after a grace period). On Linux they are
also told to die with their parent, so even a killed ``tollgate up`` leaves no orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

STOP_GRACE_S = 10.0
HEALTH_POLL_S = 0.2
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

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.children: list[Child] = []

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

    def dead(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM everyone, the ingress first (it calls the rest); SIGKILL who outlives grace."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.log_file.close()
        self.children.clear()
