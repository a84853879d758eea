"""Request-body checks and SPEC's defaults, applied to the one parse of the body.

Only the fields SPEC constrains are checked; every other OpenAI field passes through
untouched. Each error names the offending field, and nothing has been charged yet.
"""

from __future__ import annotations

from typing import Any

from clexproxy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

CHAT_DEFAULTS: tuple[tuple[str, Any], ...] = (("temperature", 0.7), ("top_p", 0.9))


def default_stream(accept: str | None) -> bool:
    """SPEC's `stream: true` default, except for a client that said it accepts JSON only.

    The OpenAI SDKs leave `stream` out of non-streaming calls and send `Accept: application/json`;
    a stream would break them ("any OpenAI SDK must work unchanged"). curl, `requests` and browsers
    send `*/*` (or nothing) and get the documented default.
    """
    if not accept:
        return True
    accept = accept.lower()
    return "application/json" not in accept or "text/event-stream" in accept or "*/*" in accept


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", extra={"param": "model"})
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            f"Invalid type for 'model': expected a non-empty string, got {_type_name(model)}.", extra={"param": "model"}
        )
    return model


def _check_range(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected a number, got {_type_name(value)}.", extra={"param": name}
        )
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}, got {value}.", extra={"param": name})


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", extra={"param": "messages"})
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"Invalid type for 'messages': expected an array, got {_type_name(messages)}.", extra={"param": "messages"}
        )
    if not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", extra={"param": "messages"})
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for '{where}': expected an object, got {_type_name(message)}.", extra={"param": where}
            )
        role = message.get("role")
        if role is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.role'.", extra={"param": f"{where}.role"})
        if role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': {role!r}. Supported roles: {', '.join(sorted(ROLES))}.",
                extra={"param": f"{where}.role"},
            )


def validate_chat(body: Any, stream_default: bool = True) -> tuple[str, bool, bool]:
    """Check a chat body and apply defaults in place; returns (model, stream, client_wants_usage)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}.")
    model = _require_model(body)
    _check_messages(body.get("messages"))
    if "stream" not in body:
        body["stream"] = stream_default
    for name, default in CHAT_DEFAULTS:
        if name not in body:
            body[name] = default
    stream = body["stream"]
    if not isinstance(stream, bool):
        raise InvalidRequest(
            f"Invalid type for 'stream': expected a boolean, got {_type_name(stream)}.", extra={"param": "stream"}
        )
    _check_range(body, "temperature", 0.0, 2.0)
    _check_range(body, "top_p", 0.0, 1.0)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer, got {value!r}.", extra={"param": name})
    options = body.get("stream_options")
    wants_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest(
                f"Invalid type for 'stream_options': expected an object, got {_type_name(options)}.",
                extra={"param": "stream_options"},
            )
        wants_usage = options.get("include_usage") is True
    return model, stream, wants_usage


def validate_embeddings(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}.")
    model = _require_model(body)
    data = body.get("input")
    if data is None:
        raise InvalidRequest("Missing required parameter: 'input'.", extra={"param": "input"})
    if isinstance(data, str):
        return model
    if not isinstance(data, list) or not data:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of strings or token arrays.", extra={"param": "input"}
        )
    for i, item in enumerate(data):
        ok = isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))
        ok = ok or (isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item))
        if not ok:
            raise InvalidRequest(
                f"Invalid value for 'input[{i}]': expected a string or an array of integers.",
                extra={"param": f"input[{i}]"},
            )
    return model
