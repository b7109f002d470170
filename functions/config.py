"""Configuration from the environment, as Knative gives it to a container."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_STORE = "sqlite:///.tollgate/tollgate.db"


@dataclass(frozen=True)
class Settings:
    store_url: str
    admin_token: str | None
    sink: str | None
    port: int

    @classmethod
    def from_env(cls) -> Settings:
        port = os.environ.get("PORT", "8080")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"PORT must be a TCP port number, got {port!r}")
        return cls(
            store_url=os.environ.get("TOLLGATE_STORE", DEFAULT_STORE),
            admin_token=os.environ.get("TOLLGATE_ADMIN_TOKEN") or None,
            sink=os.environ.get("K_SINK") or None,
            port=int(port),
        )
