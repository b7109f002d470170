"""Field types shared by event models: exact integers for money, safe identifiers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_AMOUNT = 2**63 - 1

# JSON integers only: strict mode refuses 1.0, "1" and true. Zero and negatives are refused too.
Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
AccountId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Name = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
]
HoldId = Annotated[str, Field(min_length=3, max_length=160)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp needs a timezone, e.g. 2026-12-31T23:59:59Z")
    return value


Timestamp = Annotated[datetime, AfterValidator(_aware)]


class EventData(BaseModel):
    """Base of every event's data: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenEventData(BaseModel):
    """Base for data from other systems, which may carry fields we do not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)
