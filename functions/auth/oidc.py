"""Who sent a request: an OIDC token checked as Knative Eventing checks one.

The issuer is found by OIDC discovery (``<base>/.well-known/openid-configuration``, as the
Kubernetes API server serves it for its service-account tokens, and as ``tollgate up``'s own issuer
serves it); its keys come from the ``jwks_uri`` it names and are cached (refetched on an unknown
``kid`` at most once per cooldown, so a stream of forged key ids cannot hammer the issuer). joserfc
checks the signature; a token is good when ``iss`` is the issuer, ``aud`` is ours and ``exp`` is
in the future; its ``sub`` is the sender's identity (``system:serviceaccount:<namespace>:<name>``).

Verified tokens are remembered until they expire: a sender reuses one token for many events (a
projected token lives an hour), so after the first event a check is a dictionary lookup."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from functions.errors import Unauthorized, Unavailable

# Algorithms a service-account issuer signs with (Kubernetes: RS256; ES256 is allowed too).
ALGORITHMS = ("RS256", "ES256")
LEEWAY_S = 5  # clock skew between pods
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_REMEMBERED = 4096
KEYS_LIFESPAN_S = 300.0
REFETCH_COOLDOWN_S = 30.0


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified sender."""

    subject: str
    issuer: str
    expires_at: float


class Discovery:
    """An OIDC issuer found by discovery from ``base_url``, and its keys.

    On Knative the base is the cluster's API server (``https://kubernetes.default.svc``), which
    answers discovery only to authenticated callers over its own CA: ``ca_file`` and
    ``token_file`` (the pod's service-account token, re-read on every fetch as kubelet rotates it)
    say how to reach it."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: str | None = None,
        token_file: str | None = None,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ca_file = ca_file
        self._token_file = token_file
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._issuer: str | None = None
        self._jwks_uri: str | None = None
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._session = requests.Session()
        self._session.trust_env = False

    def _get(self, url: str) -> Any:
        headers = {}
        if self._token_file is not None:
            token = Path(self._token_file).read_text(encoding="utf-8").strip()
            headers["Authorization"] = f"Bearer {token}"
        answer = self._session.get(
            url, headers=headers, timeout=self._timeout_s, verify=self._ca_file or True
        )
        answer.raise_for_status()
        return answer.json()

    def _fetch(self) -> None:
        """Discovery (once) and the key set; Unavailable (503, retried) when unreachable."""
        try:
            if self._jwks_uri is None:
                document = self._get(self.base_url + DISCOVERY_PATH)
                self._issuer, self._jwks_uri = str(document["issuer"]), str(document["jwks_uri"])
            self._keys = KeySet.import_key_set(self._get(self._jwks_uri))
        except (requests.RequestException, ValueError, KeyError, OSError, JoseError) as exc:
            raise Unavailable(
                f"cannot verify senders: the OIDC issuer at {self.base_url} is unreachable "
                f"({exc.__class__.__name__}: {exc})"
            ) from exc
        self._fetched_at = self._clock()

    def keys(self, kid: str | None) -> tuple[str, KeySet]:
        """The issuer and its keys, refetched when stale or when ``kid`` is unknown (at most
        once per cooldown)."""
        with self._lock:
            age = self._clock() - self._fetched_at
            unknown = self._keys is not None and kid is not None and not _has(self._keys, kid)
            if (
                self._keys is None
                or age > KEYS_LIFESPAN_S
                or (unknown and age > REFETCH_COOLDOWN_S)
            ):
                self._fetch()
            assert self._issuer is not None and self._keys is not None
            return self._issuer, self._keys

    @property
    def issuer(self) -> str:
        return self.keys(None)[0]


def _has(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


class TokenVerifier:
    """Checks bearer tokens for one audience (a sink) from one issuer."""

    def __init__(
        self, discovery: Discovery, audience: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.discovery = discovery
        self.audience = audience
        self._clock = clock
        self._known: OrderedDict[str, Identity] = OrderedDict()
        self._known_lock = threading.Lock()

    def verify(self, token: str | None) -> Identity:
        """The sender, or Unauthorized (401) saying why not."""
        if not token:
            raise Unauthorized(
                "this endpoint needs 'Authorization: Bearer <OIDC token>' issued for "
                f"audience {self.audience!r}"
            )
        now = self._clock()
        with self._known_lock:
            known = self._known.get(token)
        if known is not None and known.expires_at > now:
            return known
        identity = self._decode(token, now)
        with self._known_lock:
            self._known[token] = identity
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)
        return identity

    def _decode(self, token: str, now: float) -> Identity:
        kid = _kid(token)
        issuer, keys = self.discovery.keys(kid)
        try:
            claims = jwt.decode(token, keys, algorithms=list(ALGORITHMS)).claims
        except (JoseError, ValueError) as exc:
            detail = exc.description if isinstance(exc, JoseError) else str(exc)
            raise Unauthorized(f"invalid bearer token: {detail or exc}") from exc
        if claims.get("iss") != issuer:
            raise Unauthorized(f"the bearer token was not issued by {issuer}")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.audience not in audiences:
            raise Unauthorized(
                f"the bearer token is for another audience; this sink is {self.audience!r}"
            )
        expires_at = claims.get("exp")
        if not isinstance(expires_at, int | float) or expires_at + LEEWAY_S <= now:
            raise Unauthorized("the bearer token has expired")
        not_before = claims.get("nbf")
        if isinstance(not_before, int | float) and not_before - LEEWAY_S > now:
            raise Unauthorized("the bearer token is not valid yet")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("the bearer token names no subject")
        return Identity(subject, issuer, float(expires_at))


def _kid(token: str) -> str | None:
    """The header's ``kid``, to know whether the issuer's keys must be refetched."""
    try:
        kid = jws.extract_compact(token.encode()).headers().get("kid")
    except (JoseError, ValueError, UnicodeError):
        return None
    return kid if isinstance(kid, str) else None
