"""The inference function's errors: the runtime's FunctionError (OpenAI's error shape,
`{"error": {"message", "type", "param", "code"}}`), with the statuses and codes the official
client maps to its exceptions (NotFoundError, BadRequestError, RateLimitError)."""

from __future__ import annotations

from functions.errors import BadRequest, FunctionError

INVALID = "invalid_request_error"


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> FunctionError:
    return BadRequest(message, code=code, param=param)


def model_not_found(model: str) -> FunctionError:
    return FunctionError(
        f"The model {model!r} does not exist on this function.",
        status=404,
        error_type=INVALID,
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> FunctionError:
    return FunctionError(
        f"Request body exceeds {limit} bytes.",
        status=413,
        error_type=INVALID,
        code="request_too_large",
    )


def queue_full(reason: str, retry_after: int) -> FunctionError:
    return FunctionError(
        f"The engine is at capacity ({reason}); retry later.",
        status=429,
        error_type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(message: str) -> FunctionError:
    return FunctionError(message, status=503, code="engine_unavailable")


def engine_failed(message: str) -> FunctionError:
    return FunctionError(message, status=500, code="engine_failed")
