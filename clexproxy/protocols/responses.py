"""The OpenAI Responses API (`POST /v1/responses`) as a call to chat completions (its answer: `responses_answer`).

Why stateless: clexproxy stores no conversation, so what needs a stored response
(`previous_response_id`, `conversation`, `background`, item references) is refused with a 400
that says to send the whole conversation in `input`; `store` is accepted and the response says
`store: false`. Only function tools exist here (the hosted tools, web_search and the like, run
inside OpenAI), and every other refusal names its field, as chat validation does.

The mapping onto chat: `instructions` is a first system message; `developer` messages become
`system` ones (the chat upstreams behind the gateway, NVIDIA's included, do not all know
`developer`); `function_call` items join the assistant message before them as its `tool_calls`
(consecutive calls one message, as chat has them) and `function_call_output` items become tool
messages; reasoning items are dropped (chat has no way to send them back). The response echoes
the request's fields (the SDK's `Response` requires them); `temperature` and `top_p` are read
from the chat body when the answer is built, so they show the values the handler's SPEC
defaults added.
"""

from __future__ import annotations

from typing import Any

from clexproxy.errors import InvalidRequest
from clexproxy.protocols.responses_answer import PLAIN_ECHO, PLAIN_ECHOED, PLAIN_FIELDS, ResponsesCall

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TOOL_CHOICES = frozenset({"auto", "none", "required"})
STATELESS = ("This gateway does not store responses: '{}' is not supported; send the whole conversation in 'input'.")
MAX_METADATA = 16


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _bad_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, got {_type_name(value)}.",
                          extra={"param": param})


def _unsupported(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, extra={"param": param})


def _string(doc: dict[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{where}{name}'.", extra={"param": where + name})
        return None
    if not isinstance(value, str):
        raise _bad_type(where + name, "a string", value)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _bad_type(name, "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}, got {value}.", extra={"param": name})
    return value


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: a string stays one; one text part becomes a string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_type(where, "a string or an array", content)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _bad_type(at, "an object", part)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _string(part, "text", at + ".")})
        elif kind == "input_image":
            if part.get("file_id") is not None:
                raise _unsupported(at + ".file_id", f"'{at}.file_id' is not supported: this gateway stores no "
                                   "files; send the image as 'image_url' (a URL or a data: URL).")
            image: dict[str, Any] = {"url": _string(part, "image_url", at + ".")}
            detail = _string(part, "detail", at + ".", required=False)
            if detail is not None:
                image["detail"] = detail
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _string(part, "refusal", at + ".")})
        else:
            raise _unsupported(at + ".type", f"Invalid value for '{at}.type': {kind!r}. Supported content parts: "
                               "input_text, output_text, input_image.")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _tool_output(output: Any, where: str) -> str:
    """A `function_call_output`'s output as a tool message's text (text parts joined)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise _bad_type(where, "a string or an array", output)
    texts = []
    for j, part in enumerate(output):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            raise _unsupported(at, f"'{at}' is not supported: a function_call_output's output is sent to chat "
                               "models as text (a string, or input_text parts).")
        texts.append(_string(part, "text", at + ".") or "")
    return "".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = _string(body, "instructions", "", required=False)
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise InvalidRequest("Missing required parameter: 'input'.", extra={"param": "input"})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list):
        raise _bad_type("input", "a string or an array", items)
    if not items:
        raise InvalidRequest("'input' must be a non-empty string or array.", extra={"param": "input"})
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad_type(where, "an object", item)
        kind = item.get("type")
        if kind is None or kind == "message":
            role = item.get("role")
            if role is None:
                raise InvalidRequest(f"Missing required parameter: '{where}.role'.", extra={"param": where + ".role"})
            if not isinstance(role, str) or role not in ROLES:
                shown = role if isinstance(role, str) else _type_name(role)
                raise InvalidRequest(f"Invalid value for '{where}.role': {shown!r}. Supported roles: assistant, "
                                     "developer, system, user.", extra={"param": where + ".role"})
            if "content" not in item:
                raise InvalidRequest(f"Missing required parameter: '{where}.content'.",
                                     extra={"param": where + ".content"})
            messages.append({"role": ROLES[role], "content": _content(item["content"], where + ".content")})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where + "."), "type": "function",
                    "function": {"name": _string(item, "name", where + "."),
                                 "arguments": _string(item, "arguments", where + ".")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where + ".")
            if "output" not in item:
                raise InvalidRequest(f"Missing required parameter: '{where}.output'.",
                                     extra={"param": where + ".output"})
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _tool_output(item["output"], where + ".output")})
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise _unsupported(where + ".type", STATELESS.format(where + ".type: item_reference"))
        else:
            shown = kind if isinstance(kind, str) else _type_name(kind)
            raise _unsupported(where + ".type", f"Invalid value for '{where}.type': {shown!r}. This gateway accepts "
                               "message, function_call, function_call_output and reasoning items.")
    return messages


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chat's tools, the Responses tools the response echoes)."""
    tools = body.get("tools")
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise _bad_type("tools", "an array", tools)
    chat: list[dict[str, Any]] = []
    echoed: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad_type(where, "an object", tool)
        kind = tool.get("type")
        if kind != "function":
            shown = kind if isinstance(kind, str) else _type_name(kind)
            raise _unsupported(where + ".type", f"Invalid value for '{where}.type': {shown!r}. This gateway serves "
                               "function tools only (type 'function'); hosted tools such as web_search, file_search "
                               "and computer_use are not available.")
        name = _string(tool, "name", where + ".")
        function: dict[str, Any] = {"name": name}
        description = _string(tool, "description", where + ".", required=False)
        if description is not None:
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise _bad_type(where + ".parameters", "an object", parameters)
            function["parameters"] = parameters
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise _bad_type(where + ".strict", "a boolean", strict)
            function["strict"] = strict
        chat.append({"type": "function", "function": function})
        echoed.append({"type": "function", "name": name, "description": description, "parameters": parameters,
                       "strict": strict})
    return chat, echoed


def _tool_choice(value: Any) -> Any:
    if isinstance(value, str):
        if value in TOOL_CHOICES:
            return value
    elif isinstance(value, dict) and value.get("type") == "function":
        name = _string(value, "name", "tool_choice.")
        return {"type": "function", "function": {"name": name}}
    raise _unsupported("tool_choice", "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
                       "{\"type\": \"function\", \"name\": ...} (this gateway serves function tools only).")


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise _bad_type("text", "an object", text)
    spec = text.get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise _bad_type("text.format", "an object", spec)
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = spec.get("schema")
        if schema is None:
            raise InvalidRequest("Missing required parameter: 'text.format.schema'.",
                                 extra={"param": "text.format.schema"})
        if not isinstance(schema, dict):
            raise _bad_type("text.format.schema", "an object", schema)
        out: dict[str, Any] = {"name": _string(spec, "name", "text.format."), "schema": schema}
        description = _string(spec, "description", "text.format.", required=False)
        if description is not None:
            out["description"] = description
        if spec.get("strict") is not None:
            if not isinstance(spec["strict"], bool):
                raise _bad_type("text.format.strict", "a boolean", spec["strict"])
            out["strict"] = spec["strict"]
        return {"type": "json_schema", "json_schema": out}
    shown = kind if isinstance(kind, str) else _type_name(kind)
    raise _unsupported("text.format.type", f"Invalid value for 'text.format.type': {shown!r}. Supported: text, "
                       "json_object, json_schema.")


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_type("metadata", "an object", value)
    if len(value) > MAX_METADATA:
        raise InvalidRequest(f"'metadata' may hold at most {MAX_METADATA} pairs, got {len(value)}.",
                             extra={"param": "metadata"})
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise InvalidRequest(f"Invalid value for 'metadata.{key[:64]}': keys are strings of at most 64 "
                                 "characters, values strings of at most 512.", extra={"param": "metadata"})
    return dict(value)


def _refuse_stateful(body: dict[str, Any]) -> None:
    for name in ("previous_response_id", "conversation", "prompt"):
        if body.get(name) is not None:
            raise _unsupported(name, STATELESS.format(name))
    if body.get("background") not in (None, False):
        raise _unsupported("background", "'background' is not supported: this gateway does not store responses; "
                           "send the request with 'background': false (streaming it if it is long).")
    if body.get("truncation") not in (None, "disabled"):
        raise _unsupported("truncation", "Invalid value for 'truncation': only 'disabled' is supported.")
    if body.get("top_logprobs") not in (None, 0):
        raise _unsupported("top_logprobs", "'top_logprobs' is not supported by this gateway.")
    # Codex asks for `reasoning.encrypted_content`: accepted, as every other name, and nothing comes of it (the
    # gateway returns no reasoning items and serves no built-in tools whose outputs `include` could add).
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(i, str) for i in include)):
        raise _bad_type("include", "an array of strings", include)


def translate(body: dict[str, Any]) -> ResponsesCall:
    """The chat-completions call for a Responses request body; raises `InvalidRequest` naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}.")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", extra={"param": "model"})
    if not isinstance(model, str) or not model:
        raise _bad_type("model", "a non-empty string", model)
    plain = body.keys() <= PLAIN_FIELDS
    if not plain:
        _refuse_stateful(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad_type("stream", "a boolean", stream)
    stream = bool(stream)
    messages = _messages(body)
    if not messages:
        raise InvalidRequest("'input' holds no message to answer (reasoning items alone are not one).",
                             extra={"param": "input"})
    chat: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if plain:
        return ResponsesCall(model, stream, chat, PLAIN_ECHO, echo_inside=PLAIN_ECHOED)
    tools, echoed_tools = _tools(body)
    tool_choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad_type("parallel_tool_calls", "a boolean", parallel)
    if tools:
        chat["tools"] = tools
        if parallel is not None:  # chat refuses parallel_tool_calls without tools
            chat["parallel_tool_calls"] = parallel
    if tool_choice is not None:
        chat["tool_choice"] = _tool_choice(tool_choice)
    text = body.get("text")
    if text is not None:
        response_format = _response_format(text)
        if response_format is not None:
            chat["response_format"] = response_format
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 1:
            raise InvalidRequest(f"'max_output_tokens' must be a positive integer, got {max_output!r}.",
                                 extra={"param": "max_output_tokens"})
        chat["max_tokens"] = max_output
    for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = _number(body, name, low, high)
        if value is not None:
            chat[name] = value
    metadata = _metadata(body.get("metadata"))
    user = _string(body, "safety_identifier", "", required=False) or _string(body, "user", "", required=False)
    if user:
        chat["user"] = user
    reasoning = body.get("reasoning")
    effort = None
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad_type("reasoning", "an object", reasoning)
        effort = _string(reasoning, "effort", "reasoning.", required=False)
        if effort is not None:
            chat["reasoning_effort"] = effort
    echo = {
        "instructions": body.get("instructions"),
        "metadata": metadata,
        "tools": echoed_tools,
        "tool_choice": tool_choice if tool_choice is not None else "auto",
        "parallel_tool_calls": parallel if parallel is not None else True,
        "max_output_tokens": max_output,
        "text": text if text is not None else {"format": {"type": "text"}},
        "reasoning": {"effort": effort, "summary": None},
        "truncation": "disabled",
        "store": False,
        "background": False,
        "previous_response_id": None,
        "user": user or None,
    }
    return ResponsesCall(model, stream, chat, echo)
