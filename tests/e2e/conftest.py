"""One `tollgate up` with the real model for the e2e package (the attack suite and the platform
tests share it: it loads the model once per tier; it stops before the other packages' platforms
start), and what a test needs to act as a
workload of it: a process's projected token, or the operator's keys from the state dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.issuer import Issuer
from infra.local.platform import free_port
from tests.trust import CapabilityKeys
from tests.up.test_up import tollgate_up

ADMIN = "e2e-admin"
CAMARA = "e2e-camara-token"


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("platform") / "state"
    env = {"TOLLGATE_ADMIN_TOKEN": ADMIN, "TOLLGATE_CAMARA_TOKEN": CAMARA}
    with tollgate_up(state, free_port(), env) as endpoints:
        endpoints["key"] = (state / "demo-api-key").read_text().strip()
        yield endpoints


def process_token(p: dict[str, Any], process: str, target: str = "sink") -> str:
    """The token a process of the platform presents (its projected token file)."""
    return (Path(p["state"]) / "tokens" / process / target).read_text().strip()


def issuer(p: dict[str, Any]) -> Issuer:
    """tollgate up's issuer, from its key in the state dir: tokens of any identity, audience and
    expiry, signed as the platform's own (to test what the signature alone does not decide)."""
    minting = Issuer("tollgate", Path(p["state"]) / "issuer" / "key.jwk")
    minting.url = p["issuer"]
    return minting


def mint_capability(
    p: dict[str, Any],
    hold_id: str,
    account_id: str,
    cluster: str,
    *,
    model: str = "SmolLM2-135M-Instruct",
    max_tokens: int = 16,
    deadline_s: float = 300,
) -> str:
    """A capability signed with the platform's current key (the operator's, in the state dir)."""
    keys = CapabilityKeys(Path(p["state"]) / "keys")
    return keys.capability(
        hold_id,
        account_id,
        model=model,
        cluster=cluster,
        tier=cluster.split("-", 1)[0],
        max_tokens=max_tokens,
        deadline_s=deadline_s,
    )
