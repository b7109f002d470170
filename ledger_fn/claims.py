"""Claims: the unique names a journal entry takes within its account, and how long it keeps them.

A command is applied once per name it claims, for as long as the claim lasts:
  ``K#<digest of the command key>``   its CloudEvent source + id (or admin Idempotency-Key);
  ``B#<digest of a business ref>``   a grant's ``reference`` (plan period, slice, top-up, ...), a
                                      refund's ``refund_id``: the same reference under another
                                      event id is the same command;
  ``X#<hold seq>``                   the hold was expired or voided (what a late settle looks up);
  ``L#<hold seq>``                   the hold was settled after it had expired (at most once);
  ``R#<digest of lease hold + request>``  one request of a credit lease was captured or voided
                                      (any second report of it gets the first one's result).
Each claim carries a digest of what was asked: a replay with the same digest gets the first
result, one with another digest is refused (409).

The journal entry is the truth (its claims are hashed into the chain); the index records
(ledger_fn/claim_index.py) only let a reader find them without reading the journal. Pure: no
clock, no store.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_CHARS = 32  # 128 bits of SHA-256: compact, and collisions stay out of reach

KEY = "K#"
REFERENCE = "B#"
RESOLVED = "X#"
LATE = "L#"
REQUEST = "R#"

# Business fields of a grant that must agree for a replay of its reference to be the same grant
# (a slice announced twice with another end date still grants once, at the first one's terms).
_GRANT_TERMS = ("amount", "origin", "tiers", "models")


def digest(data: Any) -> str:
    """A compact, stable digest of JSON data (key order does not matter)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def key_claim(key: str) -> str:
    return KEY + digest(key)


def reference_claims(kind: str, args: dict[str, Any]) -> dict[str, str]:
    """The business references a command names, with the digest of its terms."""
    if kind == "grant" and args.get("reference"):
        terms = {name: args.get(name) for name in _GRANT_TERMS}
        return {REFERENCE + digest(f"grant:{args['reference']}"): digest(terms)}
    if kind == "refund_capture":
        name = REFERENCE + digest(f"refund:{args['hold_id']}:{args['request']}")
        return {name: digest({"amount": args["amount"]})}
    if kind == "refund" and args.get("refund_id"):
        name = REFERENCE + digest(f"refund:{args['hold_id']}:{args['refund_id']}")
        return {name: digest({"amount": args.get("amount")})}
    return {}


def hold_seq(hold_id: str) -> int:
    return int(hold_id.rpartition(":")[2])


def resolved_claim(hold_id: str) -> str:
    return f"{RESOLVED}{hold_seq(hold_id)}"


def request_claim(hold_id: str, request: str) -> str:
    return REQUEST + digest(f"{hold_id}#{request}")


def late_claim(hold_id: str) -> str:
    return f"{LATE}{hold_seq(hold_id)}"


def lasting(name: str) -> bool:
    """Business references last as long as the business fact (a plan period, a slice booking);
    every other claim as long as a redelivery can come."""
    return name.startswith(REFERENCE)
