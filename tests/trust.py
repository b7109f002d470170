"""Real identities for tests: a running OIDC issuer (tollgate up's own, on a free port), the
senders check a function gets from it, and capability keys in a temporary directory.

Nothing here switches a check off: every test token is minted and verified for real, as a
Knative sender's would be."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from events.capability import Capability, sign
from functions.auth import keys
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy, SenderRule, Trust
from functions.auth.senders import Senders
from functions.auth.tokens import TokenFile
from infra.local.issuer import Issuer, IssuerServer

NAMESPACE = "tollgate"
ANY_EVENT = ()


def sub(account: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{account}"


@dataclass
class TestIssuer:
    """A live issuer; ``senders`` builds a function's check against it."""

    __test__ = False
    issuer: Issuer
    url: str

    def token(self, account: str, audience: str, ttl_s: int = 600) -> str:
        return self.issuer.mint(account, audience, ttl_s)

    def bearer(self, account: str, audience: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(account, audience)}"}

    def senders(
        self, audience: str, allowed: Mapping[str, tuple[Mapping[str, str], ...]] | None = None
    ) -> Senders:
        """A check for ``audience`` allowing each account its events (``()``: any event)."""
        rules = tuple(
            SenderRule(f"allow-{account}", (sub(account),), events)
            for account, events in (allowed or {}).items()
        )
        policy = SenderPolicy(audience, rules)
        return Senders(TokenVerifier(Discovery(self.url), audience), policy)

    def trust(self, policies: Mapping[str, SenderPolicy]) -> Trust:
        return Trust(policies)


def running_issuer() -> Iterator[TestIssuer]:
    issuer = Issuer(NAMESPACE)
    server = IssuerServer(issuer)
    server.start()
    try:
        yield TestIssuer(issuer, server.url)
    finally:
        server.stop()


@dataclass
class CapabilityKeys:
    """A key directory as the ingress, infer and the ledger are given it."""

    directory: Path

    @property
    def signing(self) -> keys.SigningKey:
        return keys.SigningKey(self.directory)

    @property
    def verify(self) -> keys.VerifyKeys:
        return keys.VerifyKeys(self.directory)

    def capability(
        self,
        hold_id: str = "acme:1",
        account_id: str = "acme",
        *,
        model: str = "scripted",
        cluster: str = "test-1",
        tier: str = "edge",
        max_tokens: int = 16,
        engine_ms: int = 300_000,
        deadline_s: float = 300,
        attempt: str | None = None,
        credits: int | None = None,
    ) -> str:
        claims = Capability(
            hold_id=hold_id,
            account_id=account_id,
            model=model,
            cluster=cluster,
            tier=tier,
            max_tokens=max_tokens,
            engine_ms=engine_ms,
            deadline=int(time.time() + deadline_s),
            attempt=attempt or f"{hold_id}#{time.monotonic_ns()}",
            credits=credits,
        )
        return sign(claims, self.signing.get())


def capability_keys(directory: Path) -> CapabilityKeys:
    keys.rotate(directory)
    return CapabilityKeys(directory)


def token_file(directory: Path, token: str = "test-token") -> TokenFile:
    """A projected token file holding ``token``, for senders whose receiver checks no token."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sink"  # the projected file's name for K_SINK (functions/auth/tokens.py)
    path.write_text(token + "\n", encoding="utf-8")
    return TokenFile(path)


def nobody(audience: str = "tests") -> Senders:
    """The check of a function that takes no events: every sender is refused (deny-all)."""
    return Senders(TokenVerifier(Discovery("http://127.0.0.1:9"), audience), SenderPolicy(audience))


_shared: list[TestIssuer] = []


def shared_issuer() -> TestIssuer:
    """One live issuer for the whole test run, for helpers that are not fixtures (started on
    first use, a daemon thread until the run ends)."""
    if not _shared:
        issuer = Issuer(NAMESPACE)
        server = IssuerServer(issuer)
        server.start()
        _shared.append(TestIssuer(issuer, server.url))
    return _shared[0]
