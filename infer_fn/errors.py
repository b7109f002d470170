"""The inference function's errors: the runtime's FunctionError (OpenAI's error shape,
`{"error": {"message", "type", "param", "code"}}`), with the statuses and codes the official
client maps to its exceptions (NotFoundError, BadRequestError, RateLimitError)."""

from __future__ import annotations

from functions.errors import INVALID_REQUEST, BadRequest, FunctionError


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> FunctionError:
    return BadRequest(message, code=code, param=param)


def model_not_found(model: str) -> FunctionError:
    return FunctionError(
        f"The model {model!r} does not exist on this function.",
        status=404,
        error_type=INVALID_REQUEST,
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> FunctionError:
    return FunctionError(
        f"Request body exceeds {limit} bytes.",
        status=413,
        error_type=INVALID_REQUEST,
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


ENGINE_FAILED = "The engine failed while generating this response; what it produced is metered."


def engine_failed(message: str = ENGINE_FAILED) -> FunctionError:
    """A 500 answer says only that the engine failed (what failed is in the log); a stream's
    closing error event, sent after a 200, names the engine's reason."""
    return FunctionError(message, status=500, code="engine_failed")
