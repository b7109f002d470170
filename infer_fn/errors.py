"""Errors answered in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the
official client raises its matching exception (NotFoundError, BadRequestError, RateLimitError)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model {model!r} does not exist on this function.",
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body exceeds {limit} bytes.", code="request_too_large")


def queue_full(reason: str, retry_after: int) -> OpenAIError:
    return OpenAIError(
        429,
        f"The engine is at capacity ({reason}); retry later.",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, type="server_error", code="engine_unavailable")


def engine_failed(message: str) -> OpenAIError:
    return OpenAIError(500, message, type="server_error", code="engine_failed")
