"""Console sign-in: the admin token, exchanged once at a login form for a session.

The browser holds only Flask's signed session cookie (itsdangerous; Secure, HttpOnly,
SameSite=Strict, path /console) carrying a random session id; the store holds the session (its
expiry, whether it was ended), so logging out ends it for good, even for a copied cookie. The
signing key is derived from the admin token, so every ledger-admin replica agrees without another
secret, and rotating the token signs everyone out."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import timedelta

from flask.sansio.app import App

from functions.store import ConditionFailed, Item, Store, VersionIs

PARTITION = "CONSOLE#SESSION"
LIFETIME_S = 8 * 3600  # a working shift
COOKIE = "tollgate_console"


def configure(app: App, admin_token: str) -> None:
    """Sessions and CSRF for the console on ``app`` (Flask-WTF reads these settings)."""
    app.secret_key = hmac.new(admin_token.encode(), b"tollgate-console-session", "sha256").digest()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=LIFETIME_S),
        WTF_CSRF_TIME_LIMIT=LIFETIME_S,  # a form left open for a shift still submits
        WTF_CSRF_SSL_STRICT=False,  # the referrer check is for https only; the token is checked
    )


class ConsoleSessions:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def start(self) -> str:
        """A new session; its id goes in the signed cookie, only its hash in the store."""
        session_id = secrets.token_urlsafe(32)
        expires = int(self.clock()) + LIFETIME_S
        data = {"started": int(self.clock()), "ended": False}
        self.store.put(Item(PARTITION, _digest(session_id), 1, data, expires_at=expires))
        return session_id

    def valid(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        item = self.store.get(PARTITION, _digest(session_id))
        return (
            item is not None
            and not item.data.get("ended")
            and item.expires_at is not None
            and item.expires_at > self.clock()
        )

    def end(self, session_id: str | None) -> None:
        if not session_id:
            return
        item = self.store.get(PARTITION, _digest(session_id))
        if item is None or item.data.get("ended"):
            return
        ended = Item(
            PARTITION, item.sk, item.version + 1, {**item.data, "ended": True}, item.expires_at
        )
        with contextlib.suppress(ConditionFailed):  # ended meanwhile by another request
            self.store.put(ended, VersionIs(item.version))


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
