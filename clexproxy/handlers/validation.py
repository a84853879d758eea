"""Request-body checks and SPEC's defaults, applied to the one parse of the body.

Only the fields SPEC constrains are checked; every other OpenAI field passes through
untouched. Each error names the offending field, and nothing has been charged yet.

`stream` absent is SPEC's SSE for a client that says nothing (the reference's own `requests`
example relies on it) and JSON for one that declares OpenAI's "absent means false" (see
`default_stream`). The checks (`check_chat`) and the defaults are separate steps because the
sampling defaults depend on the model the call routes to: reasoning models that reject them
are marked in the catalog (`Model.sampling_defaults`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from clexproxy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

CHAT_DEFAULTS: tuple[tuple[str, Any], ...] = (("temperature", 0.7), ("top_p", 0.9))

# The deepest nesting orjson writes (it reads up to 1,024): a body nested deeper could not be sent upstream.
MAX_DEPTH = 254


def default_stream(
    accept: str | None, user_agent: str | None = None, json_agents: tuple[str, ...] = (), plan_default: bool = True
) -> bool:
    """What a chat call without `stream` gets: SSE (True) or JSON (False).

    In order: an `Accept` that names only one of `application/json` and `text/event-stream`
    (without `*/*`) decides; then a User-Agent with a product token that starts with one of
    `json_agents` gets JSON (clients known to follow OpenAI's "absent means false": the Vercel AI
    SDK's `generateText` sends `Accept: */*` and fails on SSE); then the plan's `default_stream`.
    The OpenAI SDKs send `Accept: application/json` for their non-streaming calls; curl,
    `requests` and browsers send `*/*` (or nothing) and get the documented default.
    """
    if accept:
        accept = accept.lower()
        if "*/*" not in accept:
            json = "application/json" in accept
            if json != ("text/event-stream" in accept):
                return not json
    if user_agent and json_agents and _declares(user_agent.lower(), json_agents):
        return False
    return plan_default


def _declares(user_agent: str, prefixes: tuple[str, ...]) -> bool:
    """A product token of `user_agent` (lowercased) starts with one of `prefixes`."""
    for prefix in prefixes:
        if user_agent.startswith(prefix) or " " + prefix in user_agent:
            return True
    return False


@lru_cache(maxsize=8)
def user_agent_prefixes(setting: str) -> tuple[str, ...]:
    """The comma-separated `sse_json_user_agents` setting as lowercased prefixes (parsed once per value)."""
    return tuple(p.strip().lower() for p in setting.split(",") if p.strip())


def too_deep(doc: Any) -> bool:
    """`doc` nests containers more than MAX_DEPTH deep (what orjson.dumps refuses); iterative, for 1,024 levels."""
    if not isinstance(doc, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _object(body: Any) -> dict[str, Any]:
    """The request body, which must be a JSON object."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}.")
    return body


def _required(body: dict[str, Any], name: str) -> Any:
    """The body's `name`, which must be there (and not null)."""
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", extra={"param": name})
    return value


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")  # `_required` written out: every call comes through here
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
        try:
            known = role in ROLES
        except TypeError:  # an array or an object cannot be looked up in a set
            known = False
        if not known:
            raise _bad_role(where, role)


def _bad_role(where: str, role: Any) -> InvalidRequest:
    if not isinstance(role, str):
        return InvalidRequest(
            f"Invalid type for '{where}.role': expected a string, got {_type_name(role)}.",
            extra={"param": f"{where}.role"},
        )
    shown = role if len(role) <= 40 else role[:40] + "..."
    return InvalidRequest(
        f"Invalid value for '{where}.role': {shown!r}. Supported roles: {', '.join(sorted(ROLES))}.",
        extra={"param": f"{where}.role"},
    )


def check_chat(body: Any) -> tuple[str, bool | None, bool]:
    """Check a chat body without changing it: (model, stream or None when absent, client_wants_usage)."""
    if not isinstance(body, dict):  # `_object` written out: the hot path's check
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}.")
    model = _require_model(body)
    _check_messages(body.get("messages"))
    stream, wants_usage = _check_generation(body)
    return model, stream, wants_usage


def check_completions(body: Any) -> tuple[str, bool | None, bool]:
    """Check a legacy completions body as `check_chat` checks a chat one: `prompt` instead of `messages`."""
    body = _object(body)
    model = _require_model(body)
    prompt = _required(body, "prompt")
    if not isinstance(prompt, str):
        ok = isinstance(prompt, list) and bool(prompt) and (
            all(isinstance(p, str) for p in prompt) or _token_array(prompt)
            or all(isinstance(p, list) and _token_array(p) for p in prompt))
        if not ok:
            raise InvalidRequest("'prompt' must be a string, a non-empty array of strings, or token arrays.",
                                 extra={"param": "prompt"})
    stream, wants_usage = _check_generation(body)
    return model, stream, wants_usage


def _token_array(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in items)


def _check_generation(body: dict[str, Any]) -> tuple[bool | None, bool]:
    """The fields chat and legacy completions share: (stream or None when absent, client_wants_usage)."""
    stream = body.get("stream")
    if stream is None:
        if "stream" in body:
            raise InvalidRequest("Invalid type for 'stream': expected a boolean, got null.", extra={"param": "stream"})
    elif not isinstance(stream, bool):
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
    return stream, wants_usage


def sampling_defaults(body: dict[str, Any]) -> None:
    """SPEC's temperature and top_p where absent (for a model that takes them: `Model.sampling_defaults`)."""
    for name, default in CHAT_DEFAULTS:
        if name not in body:
            body[name] = default


def validate_chat(body: Any, stream_default: bool = True) -> tuple[str, bool, bool]:
    """`check_chat` and every default, for a model that takes the sampling defaults; returns (model, stream, usage)."""
    model, stream, wants_usage = check_chat(body)
    if stream is None:
        stream = body["stream"] = stream_default
    sampling_defaults(body)
    return model, stream, wants_usage


def validate_embeddings(body: Any) -> str:
    body = _object(body)
    model = _require_model(body)
    data = _required(body, "input")
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
