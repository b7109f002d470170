"""The ledger's configuration from the environment (Knative gives it to the container)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ledger_fn.keys import LedgerKeys

DAY_S = 24 * 3600
# Longer than any redelivery: Knative's retries last about an hour, infer's outbox delivers until
# acknowledged (a WAN outage of days).
DEDUPE_S = 7 * DAY_S
# Business references (plan periods, slice bookings, top-ups) outlast a year of renewals.
REFERENCE_S = 400 * DAY_S
# Estimated memory of cached account states: a 256 Mi pod runs Python, Flask and boto3 in ~80 MB.
CACHE_BYTES = 48 * 1024 * 1024


class BadSetting(ValueError):
    """A ledger setting is out of range (the message names the variable)."""


@dataclass(frozen=True)
class LedgerSettings:
    keys: LedgerKeys
    dedupe_s: int = DEDUPE_S
    cache_bytes: int = CACHE_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LedgerSettings:
        env = os.environ if environ is None else environ
        return cls(
            keys=LedgerKeys.from_env(env),
            dedupe_s=_int(env, "TOLLGATE_LEDGER_DEDUPE_SECONDS", DEDUPE_S, minimum=DAY_S),
            cache_bytes=_int(env, "TOLLGATE_LEDGER_CACHE_BYTES", CACHE_BYTES, minimum=0),
        )


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise BadSetting(f"{name} must be a whole number >= {minimum}, got {text!r}")
    return int(text)
