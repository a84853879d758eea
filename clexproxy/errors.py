"""One exception hierarchy whose every member renders as SPEC's error body.

`{"error": {"message", "type", "code", "status"}}` with the HTTP status equal to `status`.
Messages are written for the caller: they name the offending field and never carry a
provider URL, a credential or a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import orjson
from aiohttp import web

MAX_RETRY_AFTER = 86_400.0


class ApiError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_server_error"
    type: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})
        self.error_type = error_type or self.type

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "status": self.status,
        }
        error.update(self.extra)
        return {"error": error}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def to_response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        merged = {**(headers or {}), **self.headers}
        return web.Response(
            body=self.to_bytes(), status=self.status, content_type="application/json", headers=merged
        )


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request_error"
    type = "invalid_request_error"


class AuthenticationFailed(ApiError):
    status = 401
    code = "authentication_error"
    type = "authentication_error"


class PermissionDenied(ApiError):
    """403: the caller is known but may not do this; `error.reason` says why (SPEC: `model_not_allowed`).

    Also the console's refusals: a request without its CSRF token, a member asking for an owner's action.
    """

    status = 403
    code = "permission_error"
    type = "permission_error"

    def __init__(self, message: str, *, reason: str, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, headers=headers, extra={"reason": reason, **(extra or {})})
        self.reason = reason


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"


class RequestTooLarge(ApiError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


def retry_after_values(retry_after: float) -> tuple[int, int]:
    """`Retry-After` (whole seconds) and `retry-after-ms` for a wait of `retry_after` seconds, never 0.

    Any float is accepted: a bucket that never refills says "inf", and an upstream's header can
    say "1e308" or "nan"; both headers stay between 1 and `MAX_RETRY_AFTER` (a day), so an
    integer conversion never overflows into a 500.
    """
    if retry_after > MAX_RETRY_AFTER:
        retry_after = MAX_RETRY_AFTER
    elif not retry_after > 0:  # negative, zero or NaN (every comparison with NaN is false)
        retry_after = 0.0
    return max(1, int(retry_after + 0.999)), max(1, int(retry_after * 1000 + 0.999))


class RateLimited(ApiError):
    """`limit` says which limit was hit: `requests_per_minute` or `daily_credits`."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"

    def __init__(self, message: str, *, limit: str, retry_after: float, headers: Mapping[str, str] | None = None):
        super().__init__(message, headers=headers, extra={"limit": limit})
        seconds, ms = retry_after_values(retry_after)
        merged = self.headers  # ApiError's own copy: extended in place
        merged["Retry-After"] = str(seconds)
        merged["retry-after-ms"] = str(ms)
        if limit == "daily_credits":
            merged["x-should-retry"] = "false"
        self.limit = limit


class InternalError(ApiError):
    status = 500
    code = "internal_server_error"
    type = "api_error"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"
    type = "service_unavailable_error"

    def __init__(self, message: str, *, retry_after: float = 1.0, error_type: str | None = None) -> None:
        seconds, ms = retry_after_values(retry_after)  # capped and sanitized as RateLimited's are
        super().__init__(
            message, headers={"Retry-After": str(seconds), "retry-after-ms": str(ms)}, error_type=error_type
        )


# A call the shutdown's drain cancels is marked on its request first (`CUT`), so the handler and the
# relay, seeing the cancellation, answer it as cut by the gateway instead of taking it for a client
# that left: SPEC's 503 (a stream ends with it as an error event) and `shutdown` in the access line.
CUT = web.RequestKey("clexproxy_cut_by_shutdown", bool)
SHUTDOWN = "shutdown"  # the access line's `error` for a call the shutdown cut


class Marked(Protocol):
    """A request that carries per-call marks (aiohttp's `Request`, the gateway's `ProxiedRequest`)."""

    def get(self, key: Any, default: Any = None) -> Any: ...


def cut_by_shutdown(request: Marked) -> bool:
    """Whether the cancellation this request's handler sees is the shutdown's cut, not the client leaving."""
    return bool(request.get(CUT))


def shutdown_error() -> ServiceUnavailable:
    """SPEC's 503 for a call the gateway cut on its way down; the client may retry at once, elsewhere."""
    return ServiceUnavailable("The gateway is shutting down; retry the request.")


class RequestTimeout(ApiError):
    """A request whose head or body stopped arriving (`connections.ClientConnection`)."""

    status = 408
    code = "request_timeout"
    type = "invalid_request_error"


class HeadersTooLarge(ApiError):
    """More headers, or a longer header line, than the HTTP parser takes."""

    status = 431
    code = "request_header_fields_too_large"
    type = "invalid_request_error"


class UnsupportedTransferCoding(ApiError):
    """A `Transfer-Encoding` other than chunked alone: RFC 9112 answers an unknown transfer coding with a 501."""

    status = 501
    code = "not_implemented"
    type = "invalid_request_error"
