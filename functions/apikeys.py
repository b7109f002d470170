"""API keys: issued once, stored only as a SHA-256 hash, resolved to an account per request.

Keys belong to the platform, not to one function: the admin API issues and revokes them, the
ingress resolves them, both through the same items in the shared table:
  ``APIKEY#<sha256>``/``KEY``  -> {account_id, key_id, revoked}   (what a request resolves)
  ``ACCT#<id>``/``KEY#<key_id>`` -> {hash, created, revoked}       (the account's listing)
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from functions.accounts import account_pk
from functions.errors import NotFound, Unauthorized
from functions.store import Absent, Item, Store, query_all

PREFIX = "tg_"
RESOLVABLE_SK = "KEY"
LISTING_PREFIX = "KEY#"


def key_digest(key: str) -> str:
    """What the table indexes a key by (and all a site ingress sends of it to the home)."""
    return hashlib.sha256(key.encode()).hexdigest()


def resolvable_pk(digest: str) -> str:
    """The partition of the item a request's key resolves through (by the key's hash)."""
    return f"APIKEY#{digest}"


def listing_sk(key_id: str) -> str:
    """The sort key of a key's entry in its account's partition (the account's listing)."""
    return f"{LISTING_PREFIX}{key_id}"


class ApiKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    def issue(self, account_id: str) -> dict[str, Any]:
        key = PREFIX + secrets.token_urlsafe(32)
        digest = key_digest(key)
        key_id = digest[:16]
        now = int(time.time())
        # The resolvable item last: until it exists the key does not work, so a crash between
        # the two writes leaves at most a listed key that never worked.
        self.store.put(
            Item(
                account_pk(account_id),
                listing_sk(key_id),
                1,
                {"hash": digest, "created": now, "revoked": False},
            ),
            Absent(),
        )
        self.store.put(
            Item(
                resolvable_pk(digest),
                RESOLVABLE_SK,
                1,
                {"account_id": account_id, "key_id": key_id, "revoked": False},
            ),
            Absent(),
        )
        return {"key": key, "key_id": key_id, "account_id": account_id, "created": now}

    def revoke(self, account_id: str, key_id: str) -> dict[str, Any]:
        listed = self.store.get(account_pk(account_id), listing_sk(key_id))
        if listed is None:
            raise NotFound(f"account {account_id} has no key {key_id}")
        digest = listed.data["hash"]
        # The resolvable item first: the key stops working even if the listing update is lost.
        resolvable = self.store.get(resolvable_pk(digest), RESOLVABLE_SK)
        if resolvable is not None:
            self.store.put(
                Item(
                    resolvable.pk,
                    resolvable.sk,
                    resolvable.version + 1,
                    {**resolvable.data, "revoked": True},
                )
            )
        self.store.put(
            Item(listed.pk, listed.sk, listed.version + 1, {**listed.data, "revoked": True})
        )
        return {"key_id": key_id, "account_id": account_id, "revoked": True}

    def list(self, account_id: str) -> list[dict[str, Any]]:
        items = query_all(self.store, account_pk(account_id), LISTING_PREFIX)
        return [
            {
                "key_id": i.sk.removeprefix(LISTING_PREFIX),
                "created": i.data["created"],
                "revoked": i.data["revoked"],
            }
            for i in items
        ]

    def resolve(self, key: str) -> str:
        """The account of a live key; Unauthorized (401) for anything else."""
        if not key.startswith(PREFIX):
            raise Unauthorized("invalid API key: Tollgate keys start with tg_")
        return self.resolve_digest(key_digest(key))

    def resolve_digest(self, sha256: str) -> str:
        """The account of the live key with this SHA-256; Unauthorized (401) for anything else."""
        item = self.store.get(resolvable_pk(sha256), RESOLVABLE_SK)
        if item is None or item.data["revoked"]:
            raise Unauthorized("invalid or revoked API key")
        account_id: str = item.data["account_id"]
        return account_id
