"""The keys of inference capabilities (events/capability.py), from a directory.

``$TOLLGATE_CAPABILITY_KEYS`` holds ``signing.jwk`` (the current Ed25519 private key as a JWK; only
the ingress is given it) and ``verify.jwks`` (the public keys verifiers accept: the current one
and the previous one). On Knative the directory is a projected volume of two Secrets
(``<capabilitySecret>-signing`` and ``<capabilitySecret>-verify``); under ``tollgate up`` it is
``<state-dir>/keys``. Both files are read again when they change, so a rotation
(``tollgate keys rotate``) takes effect without a restart."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from joserfc.jwk import KeySet, OKPKey, RSAKey

KEYS_ENV = "TOLLGATE_CAPABILITY_KEYS"
SIGNING_FILE = "signing.jwk"
VERIFY_FILE = "verify.jwks"
CURVE: Final = "Ed25519"  # RSA keys made before still load, sign (RS256) and verify

T = TypeVar("T")


class _Reloading(Generic[T]):
    """A file parsed once per change (mtime and size)."""

    def __init__(self, path: Path, parse: Callable[[bytes], T]) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._value: T | None = None

    def get(self) -> T:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp or self._value is None:
                self._value = self._parse(self.path.read_bytes())
                self._stamp = stamp
            return self._value


def _private(data: bytes) -> OKPKey | RSAKey:
    value = json.loads(data)
    key: OKPKey | RSAKey = (
        RSAKey.import_key(value) if value.get("kty") == "RSA" else OKPKey.import_key(value)
    )
    if not key.is_private:
        raise ValueError(f"{SIGNING_FILE} must hold a private key")
    return key


def _public_set(data: bytes) -> KeySet:
    keys = KeySet.import_key_set(json.loads(data))
    if any(k.is_private for k in keys.keys):
        raise ValueError(f"{VERIFY_FILE} must hold public keys only")
    return keys


class VerifyKeys:
    """The public keys capabilities may be signed with (by ``kid``)."""

    def __init__(self, directory: Path) -> None:
        self._file = _Reloading(directory / VERIFY_FILE, _public_set)

    def get(self) -> KeySet:
        return self._file.get()


class SigningKey:
    """The current private key (the ingress's)."""

    def __init__(self, directory: Path) -> None:
        self._file = _Reloading(directory / SIGNING_FILE, _private)

    def get(self) -> OKPKey | RSAKey:
        return self._file.get()


def keys_dir_from_env() -> Path:
    directory = os.environ.get(KEYS_ENV)
    if not directory:
        raise RuntimeError(
            f"{KEYS_ENV} is not set: the capability keys directory ({SIGNING_FILE} for the "
            f"ingress, {VERIFY_FILE} for infer and the ledger) is needed"
        )
    return Path(directory)


def _write(path: Path, content: dict[str, Any]) -> None:
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.chmod(partial, 0o600)
    partial.replace(path)


def _public(key: OKPKey | RSAKey) -> dict[str, Any]:
    algorithm = "RS256" if key.key_type == "RSA" else CURVE
    return {**key.as_dict(private=False), "kid": key.kid, "use": "sig", "alg": algorithm}


def rotate(directory: Path) -> str:
    """A new current key; the old current key stays verifiable as the previous one, the one
    before it is dropped. Returns the new ``kid``. (Also creates the first key.)"""
    directory.mkdir(parents=True, exist_ok=True)
    new = OKPKey.generate_key(CURVE, auto_kid=True)
    keys = [_public(new)]
    signing = directory / SIGNING_FILE
    if signing.is_file():
        keys.append(_public(_private(signing.read_bytes())))
    # Verifiers first: a capability signed with the new key must never meet a verifier that
    # does not know it yet.
    _write(directory / VERIFY_FILE, {"keys": keys})
    _write(signing, {**new.as_dict(private=True), "kid": new.kid})
    return str(new.kid)


def ensure(directory: Path) -> None:
    """Create the first key unless the directory has one."""
    if not (directory / SIGNING_FILE).is_file():
        rotate(directory)
