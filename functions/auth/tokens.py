"""The tokens a workload presents: projected service-account token files, re-read on rotation.

On Knative each function mounts one projected ServiceAccount token per audience it calls (the
broker, authorize, refund, the home ingress's cluster-events endpoint) under ``TOLLGATE_TOKEN_DIR``,
one file per target; kubelet rewrites a file well before its token expires. ``tollgate up``'s
issuer writes and rotates the same files. The file is read again whenever it changed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TOKEN_DIR_ENV = "TOLLGATE_TOKEN_DIR"
# Targets, as file names under the token directory.
SINK = "sink"  # K_SINK: the broker (home) or the home ingress's cluster-events endpoint
AUTHORIZE = "authorize"
REFUND = "refund"
LEDGER_RELAY = "ledger-relay"  # a site ingress: the home ingress's ledger relay


class TokenMissing(RuntimeError):
    """No token file for a target: the workload was not given an identity for it."""


class TokenFile:
    """The current token in one projected token file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def read(self) -> str:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise TokenMissing(f"no token at {self.path}: {exc}") from exc
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._token = self.path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
            return self._token

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read()}"}

    @classmethod
    def from_env(cls, target: str) -> TokenFile | None:
        """The token file for ``target`` under $TOLLGATE_TOKEN_DIR, if the directory is set."""
        directory = os.environ.get(TOKEN_DIR_ENV)
        return cls(Path(directory) / target) if directory else None
