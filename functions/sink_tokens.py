"""Per-notification-sink bearer tokens: ``<expiry>.<HMAC-SHA256(key, subject|expiry)>``.

Tollgate gives the operator one as the CAMARA ``sinkCredential`` (ACCESSTOKEN) of each payment and
refund it creates; the ingress checks it with the same key and the subject in the sink's path, so
a token is good for that one top-up only and only until it expires, and checking it reads no
store. The key is a secret shared by the ledger (which issues) and the ingress (which checks)."""

from __future__ import annotations

import base64
import hashlib
import hmac

MIN_KEY_BYTES = 16


def _mac(key: bytes, subject: str, expires_at: int) -> str:
    digest = hmac.new(key, f"{subject}|{expires_at}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(key: bytes, subject: str, expires_at: int) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the sink key needs at least {MIN_KEY_BYTES} bytes")
    return f"{expires_at}.{_mac(key, subject, expires_at)}"


def verify(key: bytes, subject: str, token: str, now: float) -> bool:
    expiry, _, mac = token.partition(".")
    if not expiry.isdigit() or int(expiry) <= now:
        return False
    return hmac.compare_digest(mac.encode(), _mac(key, subject, int(expiry)).encode())
