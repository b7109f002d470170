"""Infer serves an attempt only with the ingress's capability for it (events/capability.py).

``AttemptGuard.admit`` checks, before any work: the signature (the current or previous public
key), the audience (this cluster, or under ``tollgate up`` any cluster this process stands in
for), the deadline, the model, ``max_tokens`` within the priced bound, and that the attempt was
not served before (a capability is good for one attempt: a replay within its deadline is refused
too). The hold and account come from the capability, never from a header. ``bounded`` stops a
generation at the deadline and at the engine-time bound the hold was priced for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from events.capability import Capability, CapabilityError, verify
from functions.auth.keys import VerifyKeys
from functions.errors import BadRequest, Forbidden, FunctionError, Unauthorized
from infer_fn.engines.base import Generation


class Replayed(FunctionError):
    status = 409
    code = "attempt_replayed"
    type = "invalid_request_error"


@dataclass(frozen=True)
class Vouched:
    """An admitted attempt: the capability's claims and the token itself (metering events carry
    it to settle and refund)."""

    capability: Capability
    token: str

    @property
    def max_tokens(self) -> int:
        return self.capability.max_tokens


class AttemptGuard:
    def __init__(
        self,
        keys: VerifyKeys,
        audiences: Collection[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.audiences = frozenset(audiences)
        self._clock = clock
        self._served: dict[str, int] = {}  # attempt -> deadline
        self._lock = threading.Lock()

    def admit(self, token: str | None, model: str, max_tokens: int | None) -> Vouched:
        if not token:
            raise Unauthorized(
                "infer serves only attempts the ingress vouches for: the request carries no "
                "capability"
            )
        now = self._clock()
        try:
            capability = verify(token, self.keys.get(), audience=self.audiences, now=now)
        except CapabilityError as exc:
            raise Unauthorized(f"the capability is not valid here: {exc}") from exc
        if capability.model != model:
            raise Forbidden(
                f"the capability is for model {capability.model}, not {model}", param="model"
            )
        if max_tokens is not None and max_tokens > capability.max_tokens:
            raise BadRequest(
                f"max_tokens {max_tokens} exceeds the {capability.max_tokens} this attempt was "
                "priced for",
                param="max_tokens",
                code="max_tokens_above_bound",
            )
        self._once(capability, now)
        return Vouched(capability, token)

    def _once(self, capability: Capability, now: float) -> None:
        with self._lock:
            if capability.attempt in self._served:
                raise Replayed(f"attempt {capability.attempt} was already served")
            # Forget attempts whose deadline passed: their capability is refused anyway.
            for attempt, deadline in list(self._served.items()):
                if deadline < now - 60:
                    del self._served[attempt]
            self._served[capability.attempt] = capability.deadline


def bounded(
    gen: Generation,
    vouched: Vouched,
    *,
    cut_at_tokens: bool,
    clock: Callable[[], float] = time.time,
) -> Iterator[str]:
    """The generation's pieces until it ends, or until it reaches a bound of its capability: the
    engine time the hold was priced for, or the deadline; and with ``cut_at_tokens`` (a request
    that named no ``max_tokens``) the tokens it was priced for. It then ends as ``length``, as a
    max_tokens cut does. A request that names ``max_tokens`` asks at most the bound (``admit``)
    and the engine stops there itself, with exact usage."""
    capability = vouched.capability
    bound_s = capability.engine_ms / 1000
    for piece in gen:
        yield piece
        if (
            (cut_at_tokens and gen.completion_tokens >= capability.max_tokens)
            or gen.engine_seconds >= bound_s
            or clock() >= capability.deadline
        ):
            gen.finish_reason = "length"
            return
