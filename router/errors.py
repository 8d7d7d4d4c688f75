"""Errors the router answers with, as OpenAI-style bodies.

::

    RouterError                      status, OpenAI type, param
    +-- BadRequest                   400  invalid JSON, wrong types, missing fields
    |   +-- ContextTooLong           400  over every pool's window (vLLM's wording)
    |   +-- Blocked                  400  a prompt-injection rule in block mode tripped
    +-- Unauthorized                 401  no key, or a key the router does not know
    +-- PayloadTooLarge              413  body over max_body_bytes
    +-- RequestTimeout               408  the body did not arrive within body_timeout_s
    +-- HeadersTooLarge              431  the request's headers over limits.max_header_bytes
    +-- UnsupportedMediaType         415  an admin request whose body is not JSON
    +-- MethodNotAllowed             405  a known path with another method
    +-- RateLimited                  429  the key's requests or tokens per minute are spent
    +-- ModelNotFound                404  no pool serves that model (vLLM's wording)
    +-- NotFound                     404  an admin request names no configured backend
    +-- Forbidden                    403  a model the key may not use; an admin request
    |                                     without the admin key or from another host
    +-- NoBackend                    503  every candidate failed or none is usable
    +-- QueueFull                    429  the pool's queue is full, or a higher tier took the place
    +-- DeadlineExceeded             429  it could not start before its deadline
    +-- Overloaded                   503  the router itself is overloaded (event loop, memory)
    +-- ShuttingDown                 503  this router is stopping: another replica may answer
    +-- UpstreamFailed               502  the backend broke after the answer began
    +-- UpstreamTimedOut             504  every backend tried took it and none answered in time
"""

from __future__ import annotations

import orjson


class RouterError(Exception):
    status = 500
    error_type = "InternalServerError"
    reject: str | None = None  # the router's own refusal: sent as x-ctxroute-reject
    close = False  # the connection ends with the answer (the request was not read whole)

    def __init__(self, message: str, param: str | None = None, retry_after: float | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = headers  # more response headers (the rate limits, Allow)

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.param, self.status)


class BadRequest(RouterError):
    status = 400
    error_type = "BadRequestError"


class ContextTooLong(BadRequest):
    pass


class Blocked(BadRequest):
    """A prompt-injection indicator whose action is ``block`` (core/indicators.py)."""

    reject = "blocked"


class Unauthorized(RouterError):
    status = 401
    error_type = "AuthenticationError"
    reject = "unauthorized"


class RequestTimeout(RouterError):
    status = 408
    error_type = "BadRequestError"
    reject = "body_timeout"
    close = True


class HeadersTooLarge(RouterError):
    status = 431
    error_type = "BadRequestError"
    close = True


class UnsupportedMediaType(RouterError):
    status = 415
    error_type = "BadRequestError"


class MethodNotAllowed(RouterError):
    status = 405
    error_type = "BadRequestError"


class RateLimited(RouterError):
    status = 429
    error_type = "RateLimitError"
    reject = "rate_limited"


class PayloadTooLarge(RouterError):
    status = 413
    error_type = "BadRequestError"


class ModelNotFound(RouterError):
    status = 404
    error_type = "NotFoundError"


class NotFound(RouterError):
    status = 404
    error_type = "NotFoundError"


class Forbidden(RouterError):
    status = 403
    error_type = "PermissionDeniedError"


class NoBackend(RouterError):
    status = 503
    error_type = "ServiceUnavailableError"
    reject = "no_backend"


class QueueFull(RouterError):
    status = 429
    error_type = "RateLimitError"
    reject = "queue_full"


class DeadlineExceeded(RouterError):
    status = 429
    error_type = "RateLimitError"
    reject = "deadline"


class Overloaded(RouterError):
    status = 503
    error_type = "ServiceUnavailableError"
    reject = "overload"


class ShuttingDown(RouterError):
    status = 503
    error_type = "ServiceUnavailableError"
    reject = "shutting_down"
    close = True  # the next request on this connection would be refused too


class UpstreamTimedOut(RouterError):
    status = 504
    error_type = "GatewayTimeoutError"
    reject = "upstream_timeout"


class UpstreamFailed(RouterError):
    status = 502
    error_type = "BadGatewayError"


def error_body(message: str, error_type: str, param: str | None, code: int) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def context_too_long(window: int, prompt_tokens: int, max_tokens: int | None) -> ContextTooLong:
    """vLLM's over-context 400, worded as vLLM words it (match on "maximum context length")."""
    if max_tokens is None or prompt_tokens > window:
        message = (
            f"This model's maximum context length is {window} tokens. However, your prompt "
            f"contains at least {prompt_tokens} input tokens, which exceeds this limit even "
            f"without any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={prompt_tokens})"
        )
    else:
        total = prompt_tokens + max_tokens
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} "
            f"input tokens, for a total of at least {total} tokens. Please reduce the length "
            f"of the input prompt or the number of requested output tokens. "
            f"(parameter=input_tokens, value={prompt_tokens})"
        )
    return ContextTooLong(message, "input_tokens")
