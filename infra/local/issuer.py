"""``tollgate up``'s OIDC issuer: what the Kubernetes API server is to a Knative cluster.

It serves OIDC discovery (``/.well-known/openid-configuration``) and its keys
(``/openid/v1/jwks``) as the API server's service-account issuer does, and mints tokens like
TokenRequest: RS256, ``sub`` = ``system:serviceaccount:<namespace>:<name>``, one audience, an
expiry. Workloads get theirs as projected token files (``TokenFiles``), rewritten long before
they expire, as kubelet does; the broker and the ping scheduler, which run in this process, mint
their deliveries' tokens directly (as Knative's dispatcher asks TokenRequest for a trigger's).

Its signing key is ``<state-dir>/issuer/key.jwk`` (0600), as the API server's is a key file
(``--service-account-signing-key-file``): whoever can read the state dir is the cluster admin."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, jsonify
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import BaseWSGIServer, make_server

from functions.auth.oidc import DISCOVERY_PATH

log = logging.getLogger(__name__)

JWKS_PATH = "/openid/v1/jwks"
# Kubernetes' shortest projected token lifetime; kubelet refreshes at 80% of it.
TOKEN_TTL_S = 600
REFRESH_AT = 0.8


def subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


class Issuer:
    """Keys and minting; ``url`` is set once its HTTP server listens. ``key_file``: where the
    signing key is kept (created on first use); None keeps it in memory only."""

    def __init__(self, namespace: str, key_file: Path | None = None) -> None:
        self.namespace = namespace
        self._key = _load_or_create(key_file)
        self.url = ""
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._cache_lock = threading.Lock()

    def mint(
        self, name: str, audience: str, ttl_s: int = TOKEN_TTL_S, *, now: float | None = None
    ) -> str:
        """A fresh token for ServiceAccount ``name`` of this namespace (``now``: when it is
        issued, for tests of expiry)."""
        now = int(time.time() if now is None else now)
        claims = {
            "iss": self.url,
            "sub": subject(self.namespace, name),
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "kubernetes.io": {"namespace": self.namespace, "serviceaccount": {"name": name}},
        }
        return jwt.encode({"alg": "RS256", "kid": self._key.kid}, claims, self._key)

    def token(self, name: str, audience: str) -> str:
        """A token for ``name`` and ``audience``, reused until 80% of its life (as a sender
        caches what TokenRequest gave it)."""
        now = time.time()
        with self._cache_lock:
            cached = self._cache.get((name, audience))
            if cached is not None and now < cached[1]:
                return cached[0]
            token = self.mint(name, audience)
            self._cache[(name, audience)] = (token, now + TOKEN_TTL_S * REFRESH_AT)
            return token

    def jwks(self) -> dict[str, object]:
        public = {**self._key.as_dict(private=False), "kid": self._key.kid}
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}

    def app(self) -> Flask:
        app = Flask("issuer")

        @app.get(DISCOVERY_PATH)
        def discovery() -> Response:
            return jsonify(
                issuer=self.url,
                jwks_uri=self.url + JWKS_PATH,
                response_types_supported=["id_token"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
            )

        @app.get(JWKS_PATH)
        def jwks() -> Response:
            return jsonify(self.jwks())

        return app


def _load_or_create(path: Path | None) -> RSAKey:
    if path is not None and path.is_file():
        return RSAKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = RSAKey.generate_key(2048, auto_kid=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({**key.as_dict(private=True), "kid": key.kid}), "utf-8")
        partial.chmod(0o600)
        partial.replace(path)
    return key


class IssuerServer:
    """The issuer's HTTP endpoints, in threads of the calling process."""

    def __init__(self, issuer: Issuer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.issuer = issuer
        self._server: BaseWSGIServer = make_server(host, port, issuer.app(), threaded=True)
        issuer.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="issuer", daemon=True
        )

    @property
    def url(self) -> str:
        return self.issuer.url

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class Projection:
    """One projected token file: whose identity, for which audience, at which path."""

    path: Path
    service_account: str
    audience: str


class TokenFiles:
    """Writes every projected token file and rewrites each at 80% of its life, like kubelet."""

    def __init__(self, issuer: Issuer, projections: Mapping[str, Projection] | list[Projection]):
        self.issuer = issuer
        self.projections = list(
            projections.values() if isinstance(projections, Mapping) else projections
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-files", daemon=True)

    def write_all(self) -> None:
        for p in self.projections:
            p.path.parent.mkdir(parents=True, exist_ok=True)
            p.path.parent.chmod(0o700)
            token = self.issuer.mint(p.service_account, p.audience)
            partial = p.path.with_suffix(".tmp")
            partial.write_text(token, encoding="utf-8")
            partial.chmod(0o600)
            partial.replace(p.path)

    def start(self) -> None:
        self.write_all()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TOKEN_TTL_S * REFRESH_AT):
            try:
                self.write_all()
            except OSError:
                log.exception("could not rewrite the projected token files")

    def stop(self) -> None:
        self._stop.set()
