"""Errors a function answers with, each carrying its HTTP status and a message a person can act on.

Status codes follow Knative delivery: 4xx is never retried (the event can never be accepted),
5xx is retried (a transient failure)."""

from __future__ import annotations

from typing import Any


class FunctionError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class BadRequest(FunctionError):
    status = 400
    code = "bad_request"


class Unauthorized(FunctionError):
    status = 401
    code = "unauthorized"


class Forbidden(FunctionError):
    status = 403
    code = "forbidden"


class NotFound(FunctionError):
    status = 404
    code = "not_found"


class Conflict(FunctionError):
    status = 409
    code = "conflict"


class Unavailable(FunctionError):
    status = 503
    code = "unavailable"
