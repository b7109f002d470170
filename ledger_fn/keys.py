"""The ledger's signing keys: HMAC-SHA256 over every journal and registry entry.

The keys live outside the table (``TOLLGATE_LEDGER_KEYS``, from a Kubernetes Secret on Knative,
a file in the state directory under ``tollgate up``), so whoever can write the table but does not
hold a key cannot write an entry, or rewrite a chain, that still verifies.

Format: ``<key id>:<secret>[,<key id>:<secret>...]``. The first key signs; every key listed
verifies. Entries name the key that signed them (``kid``), so rotation is: put the new key first
and keep the old ones listed for as long as entries they signed exist (for ever, in a ledger).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV = "TOLLGATE_LEDGER_KEYS"
MIN_SECRET_CHARS = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class BadKeys(ValueError):
    """The key configuration is unusable (the message says how to fix it)."""


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class LedgerKeys:
    signing: str  # the id of the key new entries are signed with
    secrets: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if self.signing not in self.secrets:
            raise BadKeys(f"signing key {self.signing!r} is not among the keys listed")

    @classmethod
    def parse(cls, text: str) -> LedgerKeys:
        secrets: dict[str, bytes] = {}
        order: list[str] = []
        for part in (p.strip() for p in text.split(",")):
            kid, sep, secret = part.partition(":")
            if not sep or not _KEY_ID.fullmatch(kid):
                raise BadKeys(
                    f"{ENV}: each key is <id>:<secret>, the id 1-32 of [A-Za-z0-9_.-]; "
                    f"got {kid or part!r}"
                )
            if len(secret) < MIN_SECRET_CHARS:
                raise BadKeys(f"{ENV}: key {kid!r} is shorter than {MIN_SECRET_CHARS} chars")
            if kid in secrets:
                raise BadKeys(f"{ENV}: key id {kid!r} is listed twice")
            secrets[kid] = secret.encode()
            order.append(kid)
        if not order:
            raise BadKeys(f"{ENV} lists no key")
        return cls(order[0], secrets)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LedgerKeys:
        text = (os.environ if environ is None else environ).get(ENV, "").strip()
        if not text:
            raise BadKeys(
                f"{ENV} is not set: the ledger signs its journal with it. Set it to "
                "<id>:<secret> (e.g. k1:$(openssl rand -base64 32)); `tollgate up` makes one."
            )
        return cls.parse(text)

    def sign(self, body: Mapping[str, Any]) -> tuple[str, str]:
        """(key id, MAC) of ``body`` under the signing key."""
        return self.signing, self._mac(self.signing, body)

    def verifies(self, kid: str | None, body: Mapping[str, Any], mac: str) -> bool:
        if kid is None or kid not in self.secrets:
            return False
        return hmac.compare_digest(self._mac(kid, body), mac)

    def _mac(self, kid: str, body: Mapping[str, Any]) -> str:
        return hmac.new(self.secrets[kid], canonical(body), hashlib.sha256).hexdigest()


__all__ = ["ENV", "BadKeys", "LedgerKeys", "canonical"]
