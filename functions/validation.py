"""Turning request data into models, with errors a person can act on."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from functions.errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def describe(exc: ValidationError) -> str:
    """One line per problem: where it is, what is wrong, what was sent."""
    parts = []
    for error in exc.errors(include_url=False):
        if error["type"] == "default_factory_not_called":
            continue  # a default computed from a field that failed: that field's error says why
        where = ".".join(str(p) for p in error["loc"]) or "body"
        sent = error.get("input")
        shown = "" if isinstance(sent, dict) else f" (got {sent!r})"
        parts.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(parts)


def validate(model: type[M], data: Any, what: str = "data") -> M:
    """``model`` from ``data``, or BadRequest naming every problem (``param``: the first)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = ".".join(str(p) for p in exc.errors()[0]["loc"]) or None
        raise BadRequest(f"invalid {what}: {describe(exc)}", param=first) from exc
