"""The demo upstream's refusals, in OpenAI's error shape, and the request-body checks that raise them.

A `DemoError` is decided before any response byte is sent; the server renders it as the JSON error
body a real provider would send (`payload`), with its status and any extra headers.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web


class DemoError(Exception):
    """An OpenAI-style error decided before any response byte was sent; the dispatcher renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        code: str | None,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers

    def payload(self) -> bytes:
        """The JSON body, in OpenAI's shape."""
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def bad_request(message: str, code: str, param: str | None = None) -> DemoError:
    return DemoError(400, message, "invalid_request_error", code, param=param)


def model_not_found(model: str) -> DemoError:
    return DemoError(
        404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found", param="model"
    )


# status → (type, code, message) for the statuses clients treat specially; others are derived from the reason.
_ERROR_KINDS: Final[Mapping[int, tuple[str, str, str]]] = {
    400: ("invalid_request_error", "bad_request", "Bad request"),
    401: ("authentication_error", "invalid_api_key", "Incorrect API key provided"),
    403: ("permission_error", "permission_denied", "You are not allowed to use this resource"),
    404: ("invalid_request_error", "not_found", "Not found"),
    409: ("invalid_request_error", "conflict", "Conflict"),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity"),
    429: ("rate_limit_error", "rate_limit_exceeded", "rate limited"),
    500: ("server_error", "internal_error", "The server had an error while processing your request"),
    502: ("server_error", "bad_gateway", "Bad gateway"),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later"),
    504: ("server_error", "gateway_timeout", "Gateway timeout"),
}


def injected_error(status: int, model: str | None, retry_after: str | None) -> DemoError:
    """The error body a real provider would send for ``status`` (404 is model_not_found when there is a model)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if status == 404 and model is not None:
        error = model_not_found(model)
        error.headers = headers
        return error
    kind = _ERROR_KINDS.get(status)
    if kind is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        kind = (error_type, reason.lower().replace(" ", "_").replace("-", "_"), reason)
    error_type, code, message = kind
    return DemoError(status, message, error_type, code, headers=headers)


async def read_json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None when absent, unparsable or not an object."""
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw:
        return None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def require_object(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is None:
        raise bad_request("The request body must be a JSON object", "invalid_json")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "missing_required_parameter", "model")
    return model


def optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean", "invalid_type", name)
    return value


def positive_int(body: dict[str, Any], name: str, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise bad_request(f"'{name}' must be an integer in [1, {high}]", "invalid_value", name)
    return value
