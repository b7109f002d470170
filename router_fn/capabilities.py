"""The capability the ingress gives each inference attempt (events/capability.py): the hold and
account it is billed to, the cluster it was routed to, and the bounds its hold was priced for."""

from __future__ import annotations

import time
from collections.abc import Callable

from events.capability import Capability, sign
from events.ledger import HoldAuthorized
from functions.auth.keys import SigningKey


def mint(
    key: SigningKey,
    hold: HoldAuthorized,
    *,
    model: str,
    cluster: str,
    tier: str,
    max_tokens: int,
    engine_ms: int,
    attempt: str,
    credits: int | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """Signed for ``cluster``, good until the engine time it was priced for has passed.
    ``credits``: a lease attempt's bound (the most its request may capture from the lease)."""
    now = clock()
    capability = Capability(
        hold_id=hold.hold_id,
        account_id=hold.account_id,
        model=model,
        cluster=cluster,
        tier=tier,
        max_tokens=max_tokens,
        engine_ms=engine_ms,
        deadline=int(now + engine_ms / 1000) + 1,
        attempt=attempt,
        credits=credits,
    )
    return sign(capability, key.get(), issued_at=now)
