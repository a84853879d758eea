"""Chat completions' request as Gemini's GenerateContentRequest: the request half of `GEMINI`.

Why its own module: the mapping is mostly refusals and schema surgery, none of it on the answer's path.

Choices worth knowing
    Roles: system and developer messages become ``systemInstruction`` (all of them, in order); assistant is
    ``model``; a tool message is a ``functionResponse`` part in a ``user`` content whose ``name`` is recovered
    from the assistant ``tool_calls`` entry with the same id (its text travels as ``{"output": text}``).
    Adjacent contents of one role are merged, so parallel calls' responses share one turn as Gemini requires.
    A tool call id carrying a ``thoughtSignature`` after `SIGNATURE` (as `call_id` made it) puts the signature
    back on its ``functionCall`` part: Gemini 3 refuses a tool turn without it.
    Schemas (tool parameters, ``json_schema``) keep only the keys Gemini's OpenAPI-subset ``Schema`` accepts
    (`SCHEMA_KEYS`); others (``additionalProperties``, ``$schema``, ``$id``, ``$comment``, ``strict``,
    ``examples``, ``const``, ``not``...) are dropped, a local ``$ref`` into ``$defs`` / ``definitions`` is
    inlined, and a ``type`` list with ``"null"`` becomes ``nullable``. A tool with no parameters declares none
    (Gemini refuses an object schema without properties).
    Images, audio and files only as base64 ``data:`` URLs (``inlineData``): the Gemini API does not fetch URLs.
Not supported (an `InvalidRequest` naming the field): ``n`` > 1, ``logprobs`` / ``top_logprobs``,
``logit_bias``, ``audio`` / non-text ``modalities``, ``prediction``, ``reasoning_effort``, ``web_search_options``,
``functions``, any other field chat completions does not define, image URLs other than ``data:`` URLs, tools
other than functions. ``parallel_tool_calls`` has no Gemini switch and is dropped, as are ``user``,
``metadata``, ``store``, ``service_tier`` and ``stream_options``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from clexproxy.errors import InvalidRequest

__all__ = ["SCHEMA_KEYS", "SIGNATURE", "call_id", "payload_doc", "schema"]

SIGNATURE: Final = "__thought__"
SCHEMA_KEYS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties", "required",
    "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
    "default", "items", "minimum", "maximum",
})
_UNSUPPORTED: Final = ("logit_bias", "audio", "prediction", "reasoning_effort", "web_search_options", "functions")
_DROPPED: Final = frozenset({
    "model", "stream", "stream_options", "user", "metadata", "store", "service_tier", "parallel_tool_calls",
})
_HANDLED: Final = frozenset({
    "messages", "temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "stop",
    "presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice", "n", "logprobs",
    "top_logprobs", "modalities",
})


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, extra={"param": param})


def _unsupported(param: str) -> InvalidRequest:
    return _invalid(f"'{param}' is not supported by this model's provider.", param)


def call_id(response_id: str, index: int, name: str, args: str, signature: Any = None) -> str:
    """A stable id for Gemini's id-less function call; its ``thoughtSignature`` (if any) after `SIGNATURE`."""
    digest = hashlib.blake2b(f"{response_id}\x00{index}\x00{name}\x00{args}".encode(), digest_size=12).hexdigest()
    return f"call_{digest}" + (f"{SIGNATURE}{signature}" if isinstance(signature, str) and signature else "")


def schema(value: Any, param: str, defs: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A JSON Schema as Gemini's ``Schema``: unsupported keys dropped, local ``$ref`` inlined, null types nullable."""
    if not isinstance(value, dict):
        raise _invalid(f"'{param}' must be a JSON Schema object.", param)
    if depth > 32:
        raise _invalid(f"'{param}' nests too deeply (a recursive '$ref' is not supported by this model's provider).",
                       param)
    if defs is None:
        defs = {**(value.get("definitions") or {}), **(value.get("$defs") or {})}
    ref = value.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else ""
        if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise _invalid(f"'{param}.$ref' must point into the schema's own '$defs'.", f"{param}.$ref")
        return schema({**defs[name], **{k: v for k, v in value.items() if k != "$ref"}}, param, defs, depth + 1)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(item, dict):
            item = {name: schema(sub, f"{param}.properties.{name}", defs, depth + 1) for name, sub in item.items()}
        elif key == "items":
            item = schema(item, f"{param}.items", defs, depth + 1)
        elif key == "anyOf" and isinstance(item, list):
            item = [schema(sub, f"{param}.anyOf[{i}]", defs, depth + 1) for i, sub in enumerate(item)]
        elif key == "type" and isinstance(item, list):
            kinds = [kind for kind in item if kind != "null"]
            if len(item) != len(kinds):
                out["nullable"] = True
            if len(kinds) != 1:
                raise _invalid(f"'{param}.type' may name one type (and \"null\") for this model's provider.",
                               f"{param}.type")
            item = kinds[0]
        out[key] = item
    return out


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"'{param}' must be a string.", param)
    return value


def _data_url(url: Any, param: str) -> dict[str, Any]:
    """``data:<mime>;base64,<data>`` as an ``inlineData`` part; other URLs the Gemini API cannot fetch."""
    url = _text(url, param)
    head, comma, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not comma:
        raise _invalid(f"'{param}' must be a base64 data: URL; this model's provider does not fetch URLs.", param)
    return {"inlineData": {"mimeType": head[5:-7] or "application/octet-stream", "data": data}}


def _part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _invalid(f"'{param}' must be an object.", param)
    kind = part.get("type")
    if kind == "text":
        return {"text": _text(part.get("text"), f"{param}.text")}
    if kind == "image_url":
        image = part.get("image_url")
        return _data_url(image.get("url") if isinstance(image, dict) else image, f"{param}.image_url.url")
    if kind == "input_audio":
        audio = part.get("input_audio")
        audio = audio if isinstance(audio, dict) else {}
        fmt = _text(audio.get("format"), f"{param}.input_audio.format")
        data = _text(audio.get("data"), f"{param}.input_audio.data")
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": data}}
    if kind == "file":
        file = part.get("file")
        file = file if isinstance(file, dict) else {}
        return _data_url(file.get("file_data"), f"{param}.file.file_data")
    raise _invalid(f"'{param}.type' {kind!r} is not supported by this model's provider.", f"{param}.type")


def _parts(content: Any, param: str, texts_only: bool = False) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(f"'{param}' must be a string or a list of content parts.", param)
    parts = [_part(part, f"{param}[{i}]") for i, part in enumerate(content)]
    if texts_only and any("text" not in part for part in parts):
        raise _invalid(f"'{param}' may hold only text parts.", param)
    return parts


def _tool_call(call: Any, param: str) -> tuple[str, str, dict[str, Any]]:
    """One assistant ``tool_calls`` entry as (id, name, a ``functionCall`` part)."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise _invalid(f"'{param}' must be a function tool call.", param)
    ident = _text(call.get("id"), f"{param}.id")
    name = _text(call["function"].get("name"), f"{param}.function.name")
    raw = call["function"].get("arguments") or "{}"
    try:
        args = orjson.loads(_text(raw, f"{param}.function.arguments"))
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise _invalid(f"'{param}.function.arguments' must be a JSON object.", f"{param}.function.arguments")
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    _, marker, signature = ident.partition(SIGNATURE)
    if marker and signature:
        part["thoughtSignature"] = signature
    return ident, name, part


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chat messages as (``systemInstruction`` parts, ``contents``)."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list.", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"'{param}' must be an object.", param)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content"), f"{param}.content", texts_only=True))
            continue
        if role == "user":
            parts, gemini_role = _parts(message.get("content"), f"{param}.content"), "user"
        elif role == "assistant":
            parts, gemini_role = _parts(message.get("content"), f"{param}.content", texts_only=True), "model"
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _invalid(f"'{param}.tool_calls' must be a list.", f"{param}.tool_calls")
            for j, call in enumerate(calls):
                ident, name, part = _tool_call(call, f"{param}.tool_calls[{j}]")
                names[ident] = name
                parts.append(part)
        elif role == "tool":
            ident = _text(message.get("tool_call_id"), f"{param}.tool_call_id")
            if ident not in names:
                raise _invalid(f"'{param}.tool_call_id' names no earlier assistant tool call.", f"{param}.tool_call_id")
            output = "".join(p["text"] for p in _parts(message.get("content"), f"{param}.content", texts_only=True))
            parts, gemini_role = [{"functionResponse": {"name": names[ident], "response": {"output": output}}}], "user"
        else:
            raise _invalid(f"'{param}.role' {role!r} is not supported by this model's provider.", f"{param}.role")
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise _invalid("'messages' must hold a user, assistant or tool message with content.", "messages")
    return system, contents


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _invalid("'tools' must be a list.", "tools")
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise _invalid(f"'tools[{i}].type' {kind!r} is not supported by this model's provider; only function "
                           "tools are.", f"tools[{i}].type")
        declaration: dict[str, Any] = {"name": _text(function.get("name"), f"tools[{i}].function.name")}
        if function.get("description") is not None:
            declaration["description"] = _text(function["description"], f"tools[{i}].function.description")
        parameters = function.get("parameters")
        if parameters is not None:
            converted = schema(parameters, f"tools[{i}].function.parameters")
            if converted.get("properties"):
                declaration["parameters"] = converted
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(choice: Any) -> dict[str, Any]:
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(function, dict):
        name = _text(function.get("name"), "tool_choice.function.name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise _invalid("'tool_choice' must be 'auto', 'none', 'required' or a named function.", "tool_choice")


def _number(body: dict[str, Any], name: str) -> float | int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"'{name}' must be a number.", name)
    return value


def _config(body: dict[str, Any]) -> dict[str, Any]:
    """``generationConfig`` from the sampling, length, stop and format fields."""
    config: dict[str, Any] = {}
    for chat, gemini in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(chat) is not None:
            config[gemini] = _number(body, chat)
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are given
        if body.get(name) is not None:
            config["maxOutputTokens"] = _number(body, name)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("'stop' must be a string or a list of strings.", "stop")
        if stops:
            config["stopSequences"] = stops
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise _invalid("'response_format.json_schema.schema' must be an object.",
                               "response_format.json_schema.schema")
            config["responseSchema"] = schema(spec["schema"], "response_format.json_schema.schema")
        elif kind not in ("text", "json_object"):
            raise _invalid("'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                           "response_format.type")
    return config


def payload_doc(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentRequest for a chat-completions body (see the module's notes for what maps how)."""
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            raise _unsupported(name)
    if body.get("n") not in (None, 1):
        raise _unsupported("n")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise _unsupported("logprobs" if body.get("logprobs") else "top_logprobs")
    if body.get("modalities") not in (None, ["text"]):
        raise _unsupported("modalities")
    for name in body:
        if name not in _HANDLED and name not in _DROPPED and name not in _UNSUPPORTED:
            raise _unsupported(name)
    system, contents = _contents(body.get("messages"))
    doc: dict[str, Any] = {"contents": contents}
    if system:
        doc["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        doc["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        doc["toolConfig"] = _tool_config(body["tool_choice"])
    config = _config(body)
    if config:
        doc["generationConfig"] = config
    return doc
