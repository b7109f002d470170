"""Errors a function answers with, each carrying its HTTP status and a message a person can act on.

Status codes follow Knative delivery: 4xx is never retried (the event can never be accepted),
5xx is retried (a transient failure). Bodies have OpenAI's error shape
(``{"error": {"message", "type", "code", "param"}}``), so the official client raises its matching
exception for errors from any Tollgate endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INVALID_REQUEST = "invalid_request_error"  # OpenAI's type of every 4xx that is the caller's to fix


class FunctionError(Exception):
    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        """``status``/``error_type`` override the class's (e.g. an error relayed from another
        service keeps the status it answered); ``headers`` go on the response (Retry-After)."""
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
                **self.details,
            }
        }


class BadRequest(FunctionError):
    status = 400
    code = "bad_request"
    type = INVALID_REQUEST


class Unauthorized(FunctionError):
    status = 401
    code = "unauthorized"
    type = "authentication_error"


class PaymentRequired(FunctionError):
    status = 402
    code = "insufficient_quota"
    type = "insufficient_quota"


class Forbidden(FunctionError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class NotFound(FunctionError):
    status = 404
    code = "not_found"
    type = "not_found_error"


class Conflict(FunctionError):
    status = 409
    code = "conflict"
    type = INVALID_REQUEST


class TooManyRequests(FunctionError):
    """Over capacity now; ``headers`` should carry Retry-After (the openai client honours it)."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class Unavailable(FunctionError):
    status = 503
    code = "unavailable"
    type = "server_error"
