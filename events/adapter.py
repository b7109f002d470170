"""What every adapter from an external network format returns, and how it fails.

An adapter maps one notification to a list of internal events, all or nothing: it validates the
whole notification before building any event, so a caller that publishes the list can never
apply half of a notification."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class Mapped(NamedTuple):
    """One internal event: its ``io.tollgate.network.*.v1`` type, JSON data and subject."""

    type: str
    data: dict[str, Any]
    subject: str | None


class NetworkEventError(ValueError):
    """A notification we can never accept (malformed, unknown type, not ours): answer 400."""


def describe(exc: ValidationError) -> str:
    """One clause per problem: where it is, what is wrong, what was sent."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        sent = error.get("input")
        shown = "" if isinstance(sent, dict | list) else f" (got {sent!r})"
        parts.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(parts)


def parse(model: type[M], data: Any, what: str) -> M:
    """Validate external data; NetworkEventError names every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise NetworkEventError(f"invalid {what}: {describe(exc)}") from exc


def mapped(event_type: str, data: BaseModel, subject: str | None) -> Mapped:
    """Data as JSON (timestamps as RFC 3339 strings), ready to be published as is."""
    return Mapped(event_type, data.model_dump(mode="json", exclude_none=True), subject)


def derived_id(key: str, index: int) -> str:
    """The id of the ``index``-th event published for the notification deduplicated as ``key``:
    stable across replays, and short enough (under 256 bytes) for every receiver's dedupe keys
    whatever the notification's own source and id."""
    if len(key.encode("utf-8")) > 200:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{key}#{index}"
