"""Who sent it: OIDC tokens checked against a live issuer, event policies, token files, and the
keys of capabilities rotating (current and previous accepted). Real keys, real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from joserfc import jwt

from events.capability import Capability, CapabilityError, sign, verify
from functions.auth.keys import SigningKey, VerifyKeys, rotate
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.policy import SenderPolicy, SenderRule, Trust
from functions.errors import Forbidden, FunctionError, Unauthorized
from infra.local.issuer import Issuer
from infra.template.policies import child_name, ping_account, trigger_account
from tests.trust import TestIssuer, sub

AUD = "eventing.knative.dev/broker/tollgate/default"


def test_a_good_token_names_its_sender(issuer: TestIssuer) -> None:
    verifier = TokenVerifier(Discovery(issuer.url), AUD)
    identity = verifier.verify(issuer.token("settle", AUD))
    assert identity.subject == sub("settle") and identity.issuer == issuer.url
    assert identity.expires_at > time.time()


def test_every_bad_token_is_401(issuer: TestIssuer) -> None:
    verifier = TokenVerifier(Discovery(issuer.url), AUD)
    stranger = Issuer("tollgate")  # the same claims, another key
    stranger.url = issuer.url
    bad = {
        "none": None,
        "not a JWT": "abc.def",
        "expired": issuer.issuer.mint("settle", AUD, 60, now=time.time() - 3600),
        "another audience": issuer.token("settle", "serving.knative.dev/service/tollgate/x"),
        "another issuer's key": stranger.mint("settle", AUD),
        "not valid yet": issuer.issuer.mint("settle", AUD, 600, now=time.time() + 3600),
    }
    for what, token in bad.items():
        with pytest.raises(Unauthorized):
            verifier.verify(token)
        assert what


def test_another_issuer_url_in_the_token_is_refused(issuer: TestIssuer) -> None:
    verifier = TokenVerifier(Discovery(issuer.url), AUD)
    impostor = Issuer("tollgate")
    impostor._key = issuer.issuer._key  # the right key, but it claims to be someone else
    impostor.url = "https://evil.example"
    with pytest.raises(Unauthorized, match="not issued by"):
        verifier.verify(impostor.mint("settle", AUD))


def test_an_expired_token_is_refused_even_after_it_was_accepted(issuer: TestIssuer) -> None:
    now = [time.time()]
    verifier = TokenVerifier(Discovery(issuer.url), AUD, clock=lambda: now[0])
    token = issuer.issuer.mint("settle", AUD, 60)
    verifier.verify(token)
    now[0] += 120  # remembered, but no longer good
    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_an_unreachable_issuer_is_503_so_the_sender_retries() -> None:
    verifier = TokenVerifier(Discovery("http://127.0.0.1:9"), AUD)
    with pytest.raises(FunctionError) as failed:
        verifier.verify("a.b.c")
    assert failed.value.status == 503


def test_policies_match_subjects_with_a_suffix_wildcard_and_exact_attributes() -> None:
    rule = SenderRule("r", (sub("infer-*"),), ({"type": "t1"}, {"type": "p", "x": "y"}))
    policy = SenderPolicy(AUD, (rule,))
    assert policy.permits(sub("infer-smollm2"), {"type": "t1", "source": "/s"})
    assert policy.permits(sub("infer-a"), {"type": "p", "x": "y"})
    assert not policy.permits(sub("infer-a"), {"type": "p", "x": "z"})
    assert not policy.permits(sub("ingress"), {"type": "t1"})
    assert not policy.permits("system:serviceaccount:other:infer-a", {"type": "t1"})
    with pytest.raises(Forbidden, match="no event policy allows it"):
        policy.check(sub("ingress"), {"type": "t1"})
    assert not SenderPolicy(AUD).permits(sub("anyone"), {"type": "t1"})  # deny-all
    trust = Trust({AUD: policy}, {"https://issuer": ("c1",)})
    assert Trust.from_json(trust.to_json()) == trust


def test_service_account_names_are_knatives() -> None:
    # Vectors from knative.dev/eventing pkg/auth/serviceaccount_test.go.
    assert child_name("name", "-oidc-group-kind") == "name-oidc-group-kind"
    long = "my-loooooooooooooooooooooooooooooooooooooog-Broker"
    assert child_name(long, "-oidc-eventing.knative.dev-Broker").lower() == (
        "my-looooooooooooooooooooooooooo2dfc2a3825b8d82077b0f25518b36884"
    )
    assert trigger_account("settle-inference-completed") == (
        "settle-inference-completed-oidc-eventing.knative.dev-trigger"
    )
    assert ping_account("holds-sweep") == "holds-sweep-oidc-sources.knative.dev-pingsource"
    # Past 63 characters the name is hashed, as Knative hashes it.
    assert len(trigger_account("grant-topup-payment-changed-and-then-some-more")) <= 63


def _capability(hold: str) -> Capability:
    return Capability(
        hold_id=hold,
        account_id="acme",
        model="m",
        cluster="c1",
        tier="edge",
        max_tokens=8,
        engine_ms=1000,
        deadline=int(time.time()) + 60,
        attempt=hold,
    )


def test_capability_keys_rotate_and_verifiers_accept_the_current_and_the_previous(
    tmp_path: Path,
) -> None:
    rotate(tmp_path)
    signing, public = SigningKey(tmp_path), VerifyKeys(tmp_path)
    first = sign(_capability("acme:1"), signing.get())
    rotate(tmp_path)  # picked up without a restart
    second = sign(_capability("acme:2"), signing.get())
    assert verify(first, public.get(), audience="c1").hold_id == "acme:1"
    assert verify(second, public.get(), audience="c1").hold_id == "acme:2"
    rotate(tmp_path)
    with pytest.raises(CapabilityError):
        verify(first, public.get(), audience="c1")  # two rotations ago: no longer accepted
    assert verify(second, public.get(), audience="c1").hold_id == "acme:2"
    assert all(not k.is_private for k in public.get().keys)
    assert (tmp_path / "signing.jwk").stat().st_mode & 0o077 == 0  # the private key is private


def test_an_ed25519_capability_is_the_jws_joserfc_would_make(tmp_path: Path) -> None:
    """The ingress signs Ed25519 capabilities with ``cryptography`` directly (cheaper on its
    request path): byte for byte what joserfc makes (Ed25519 is deterministic), so every
    verifier takes it; a tampered one is refused."""
    rotate(tmp_path)
    key = SigningKey(tmp_path).get()
    assert key.key_type == "OKP"
    capability = _capability("acme:7")
    issued_at = time.time()
    header = {"alg": "Ed25519", "kid": key.kid}
    made = jwt.encode(header, capability.claims(issued_at), key, algorithms=["Ed25519"])
    assert sign(capability, key, issued_at=issued_at) == made
    assert verify(made, VerifyKeys(tmp_path).get(), audience="c1") == capability
    head, claims, signature = made.split(".")
    forged = f"{head}.{claims[:-2]}{'A' if claims[-2] != 'A' else 'B'}{claims[-1]}.{signature}"
    with pytest.raises(CapabilityError):
        verify(forged, VerifyKeys(tmp_path).get(), audience="c1")
