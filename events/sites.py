"""What a site ingress (an ingress on an edge or regional cluster) asks the home ingress besides
ledger commands: who an API key belongs to. The key itself never travels: its SHA-256 does, as
the shared table indexes it (functions/apikeys.py)."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, Field

from events import types
from events.fields import AccountId, EventData

KeyDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class CallerLookup(EventData):
    key_sha256: KeyDigest


class CallerFound(EventData):
    """The key's account, the plan its profile names (None: no plan) and the countries its
    roaming devices are in (None: none roams)."""

    account_id: AccountId
    plan: Annotated[str, Field(max_length=256)] | None = None
    roaming_countries: tuple[Country, ...] | None = None


MODELS: Final[dict[str, type[BaseModel]]] = {
    types.CALLER_LOOKUP: CallerLookup,
    types.CALLER_FOUND: CallerFound,
}
