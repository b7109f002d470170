"""The demo account ``tollgate up`` creates on first run, through the ledger's admin API.

Each step is safe to repeat, so a run interrupted half-way finishes the job next time: the
account is created only if it is missing, the grant carries a fixed Idempotency-Key, and the API
key (shown only when issued) is kept in the state dir, whose presence means "done".
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests

ACCOUNT = "demo"
# The developer plan's monthly credits in template.yaml: plenty for a demo session.
CREDITS = 20_000_000
KEY_FILE = "demo-api-key"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Demo:
    account: str
    key: str
    created: bool  # False: it existed already (a restart)


def ensure_demo(admin_url: str, admin_token: str, state_dir: Path) -> Demo:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin_token}"
    key_file = state_dir / KEY_FILE
    if key_file.is_file():
        return Demo(ACCOUNT, key_file.read_text(encoding="utf-8").strip(), created=False)
    found = session.get(f"{admin_url}/accounts/{ACCOUNT}", timeout=TIMEOUT_S)
    if found.status_code == 404:
        created = session.post(
            f"{admin_url}/accounts",
            json={"account_id": ACCOUNT, "name": "Demo account (tollgate up)"},
            timeout=TIMEOUT_S,
        )
        created.raise_for_status()
    else:
        found.raise_for_status()
    session.post(
        f"{admin_url}/accounts/{ACCOUNT}/grants",
        json={"amount": CREDITS, "origin": "promotion", "reference": "tollgate-up-demo"},
        headers={"Idempotency-Key": "tollgate-up-demo-grant"},
        timeout=TIMEOUT_S,
    ).raise_for_status()
    issued = session.post(f"{admin_url}/accounts/{ACCOUNT}/keys", timeout=TIMEOUT_S)
    issued.raise_for_status()
    key = str(issued.json()["key"])
    _write_secret(key_file, key)
    return Demo(ACCOUNT, key, created=True)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")


TokenSource = Literal["environment", "kept", "generated"]


def admin_token(
    state_dir: Path, environ: Mapping[str, str] | None = None
) -> tuple[str, TokenSource]:
    """TOLLGATE_ADMIN_TOKEN if set, else the one kept in the state dir, else a new one kept there.

    Returns (token, where it came from)."""
    env = os.environ if environ is None else environ
    given = env.get("TOLLGATE_ADMIN_TOKEN", "").strip()
    if given:
        return given, "environment"
    path = token_file(state_dir)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), "kept"
    token = secrets.token_urlsafe(24)
    _write_secret(path, token)
    return token, "generated"


def token_file(state_dir: Path) -> Path:
    return state_dir / "admin-token"


def ledger_keys(state_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """TOLLGATE_LEDGER_KEYS if set, else the keys kept in the state dir, else a new key kept
    there (the ledger signs its journal with them; the journal outlives any one run)."""
    env = os.environ if environ is None else environ
    given = env.get("TOLLGATE_LEDGER_KEYS", "").strip()
    if given:
        return given
    path = ledger_keys_file(state_dir)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    keys = f"local1:{secrets.token_urlsafe(32)}"
    _write_secret(path, keys)
    return keys


def ledger_keys_file(state_dir: Path) -> Path:
    return state_dir / "ledger-keys"
