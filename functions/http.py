"""Small pieces for JSON HTTP APIs on Flask: bearer tokens and validated bodies."""

from __future__ import annotations

import hmac
from typing import TypeVar

from flask import request
from pydantic import BaseModel

from functions.errors import BadRequest, Unauthorized, Unavailable
from functions.validation import validate

M = TypeVar("M", bound=BaseModel)


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_bearer(expected: str | None, what: str = "admin API") -> None:
    if expected is None:
        raise Unavailable(f"the {what} is disabled: set TOLLGATE_ADMIN_TOKEN to enable it")
    token = bearer_token()
    if token is None:
        raise Unauthorized(f"the {what} needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized(f"wrong bearer token for the {what}")


def json_body(model: type[M]) -> M:
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return validate(model, data, "request body")
