"""Anthropic's Messages API as a client protocol: a call put onto chat completions (`translate`) and its answer
put back (`MessagesCall.answer`, the stream by `MessagesEncoder`), plus `count_tokens`'s estimate.

Why a pure translation: the handler admits, meters and routes every protocol the same way; this module only
reshapes bodies, so each rule is a golden test. The rules, Anthropic's side first:
`system` (string or text blocks) → one system message first; a user turn's `tool_result` blocks → `tool`
messages (`tool_call_id`) placed BEFORE the rest of that turn, since chat requires the tool answers right
after the assistant's calls; text and `image` blocks (base64 → a `data:` URL, or a URL) → content parts;
an assistant turn's `tool_use` blocks → its `tool_calls` (arguments the JSON of `input`); `thinking` and
`redacted_thinking` blocks are dropped (chat has nowhere to put them), `cache_control` is ignored; custom
`tools` → function tools; `tool_choice` auto/any/tool/none → "auto"/"required"/a function/"none"
(`disable_parallel_tool_use` → `parallel_tool_calls` false); `stop_sequences` → `stop`;
`metadata.user_id` → `user`; `top_k` passes as `top_k`. A tool result's images ride in the user message
that follows its tool message (chat's tool messages carry text only); `is_error` has no chat field and is
dropped. Unknown top-level fields (`thinking`, `service_tier`, …) are accepted and not sent upstream.

Refused with a 400 naming the field, as Anthropic words it ("max_tokens: Field required"): a missing or
non-positive `max_tokens`, temperature outside Anthropic's 0 to 1, `document` and other block types chat
cannot carry, and server tools (a `type` other than "custom": web search, bash, text editor), which
would need Anthropic itself to run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from clexproxy.errors import InvalidRequest
from clexproxy.protocols.chunks import Chunk, first_choice
from clexproxy.protocols.messages_stream import (
    STOP_REASONS,
    MessagesEncoder,
    error_body,
    message_id,
    stop_reason,
    usage,
)
from clexproxy.protocols.token_count import estimate_chat

__all__ = ["MessagesCall", "chat_messages", "chat_tools", "count_tokens", "error_body", "translate"]

_IGNORED_BLOCKS: Final = frozenset(("thinking", "redacted_thinking"))
_TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}

# `MessagesCall.message`'s object for an answer of text alone, as bytes: every JSON Messages call pays for its
# answer, and this one is the same bytes around six values (a test holds it equal to the object's JSON).
_TEXT_MESSAGE: Final = (
    b'{"id":%s,"type":"message","role":"assistant","model":%s,"content":[{"type":"text","text":%s}],'
    b'"stop_reason":%s,"stop_sequence":null,"usage":{"input_tokens":%d,"output_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}'
)
_STOP_JSON: Final = {reason: orjson.dumps(reason) for reason in {*STOP_REASONS.values(), "end_turn"}}


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, extra={"param": param})


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text: Field required (a string)", where)
    return text


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An `image` block as chat's `image_url` part: base64 data becomes a `data:` URL."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source: Field required (an object)", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type:
            raise _bad(f"{where}.source.media_type: Field required", f"{where}.source.media_type")
        if not isinstance(data, str) or not data:
            raise _bad(f"{where}.source.data: Field required", f"{where}.source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise _bad(f"{where}.source.url: Field required", f"{where}.source.url")
        url = link
    else:
        raise _bad(f"{where}.source.type: Input should be 'base64' or 'url'", f"{where}.source.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}: Input should be a valid string or list of content blocks", where)
    for position, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}.{position}: Input should be a content block with a type", f"{where}.{position}")
    return content


def _parts_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    """Chat content from parts: none → None, one text part → its string, else the part list."""
    if not parts:
        return None
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A `tool_result` block as a tool message, and the images it carried (for the user message after it)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if content is not None:
        for position, inner in enumerate(_blocks(content, f"{where}.content")):
            inner_where = f"{where}.content.{position}"
            if inner["type"] == "text":
                texts.append(_text(inner, inner_where))
            elif inner["type"] == "image":
                images.append(_image_part(inner, inner_where))
            else:
                raise _bad(f"{inner_where}.type: '{inner['type']}' is not supported in a tool_result here "
                           "(text and image only)", f"{inner_where}.type")
    return {"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}, images


def _user_turn(content: Any, where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(_blocks(content, where)):
        block_where, kind = f"{where}.{position}", block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, block_where)})
        elif kind == "image":
            parts.append(_image_part(block, block_where))
        elif kind == "tool_result":
            message, images = _tool_result(block, block_where)
            tool_messages.append(message)
            parts.extend(images)
        elif kind not in _IGNORED_BLOCKS:
            raise _bad(f"{block_where}.type: '{kind}' blocks are not supported in a user message here "
                       "(text, image, tool_result)", f"{block_where}.type")
    content_out = _parts_content(parts)
    if content_out is None:
        return tool_messages
    return [*tool_messages, {"role": "user", "content": content_out}]


def _assistant_turn(content: Any, where: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(_blocks(content, where)):
        block_where, kind = f"{where}.{position}", block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, block_where)})
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{block_where}.id: Field required", f"{block_where}.id")
            if not isinstance(name, str) or not name:
                raise _bad(f"{block_where}.name: Field required", f"{block_where}.name")
            if not isinstance(arguments, dict):
                raise _bad(f"{block_where}.input: Input should be an object", f"{block_where}.input")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}})
        elif kind not in _IGNORED_BLOCKS:
            raise _bad(f"{block_where}.type: '{kind}' blocks are not supported in an assistant message here "
                       "(text, tool_use)", f"{block_where}.type")
    message: dict[str, Any] = {"role": "assistant", "content": _parts_content(parts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _bad("system: Input should be a valid string or list of text blocks", "system")
    texts = []
    for position, block in enumerate(system):
        where = f"system.{position}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{where}.type: Input should be 'text'", f"{where}.type")
        texts.append(_text(block, where))
    return "\n".join(texts)


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat's `messages` from a Messages body's `system` and `messages`; raises `InvalidRequest` naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required (a non-empty list of messages)", "messages")
    out: list[dict[str, Any]] = []
    if body.get("system") is not None:
        system = _system(body["system"])
        if system:
            out.append({"role": "system", "content": system})
    for position, message in enumerate(messages):
        if type(message) is dict:
            role, content = message.get("role"), message.get("content")
            if type(content) is str and (role == "user" or role == "assistant"):
                out.append({"role": role, "content": content})  # what a turn of one text block becomes
                continue
        where = f"messages.{position}"
        if not isinstance(message, dict):
            raise _bad(f"{where}: Input should be an object", where)
        if "content" not in message:
            raise _bad(f"{where}.content: Field required", f"{where}.content")
        role = message.get("role")
        if role == "user":
            out.extend(_user_turn(message["content"], f"{where}.content"))
        elif role == "assistant":
            out.append(_assistant_turn(message["content"], f"{where}.content"))
        else:
            raise _bad(f"{where}.role: Input should be 'user' or 'assistant'", f"{where}.role")
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Chat's function `tools` from Anthropic's custom tools; a server tool is a 400 naming its `type`."""
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a valid list", "tools")
    out = []
    for position, tool in enumerate(tools):
        where = f"tools.{position}"
        if not isinstance(tool, dict):
            raise _bad(f"{where}: Input should be an object", where)
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            raise _bad(f"{where}.type: server tools ('{kind}') are not supported; only custom tools "
                       "(name, description, input_schema) are", f"{where}.type")
        name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name: Field required", f"{where}.name")
        if not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema: Field required (a JSON schema object)", f"{where}.input_schema")
        function: dict[str, Any] = {"name": name}
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"{where}.description: Input should be a valid string", f"{where}.description")
            function["description"] = description
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise _bad("tool_choice: Input should be an object with a type", "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name: Field required", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise _bad("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", "tool_choice.type")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _bad("tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
                   "tool_choice.disable_parallel_tool_use")
    if disable and kind != "none":
        chat["parallel_tool_calls"] = False


def _number(body: dict[str, Any], name: str, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name}: Input should be a valid number", name)
    if not 0 <= value <= high:
        raise _bad(f"{name}: Input should be between 0 and {high:g}", name)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required (a string)", "model")
    return model


def translate(body: dict[str, Any]) -> MessagesCall:
    """The chat-completions call for a Messages body; raises `InvalidRequest` naming the field at fault."""
    if not isinstance(body, dict):
        raise _bad("The request body should be a JSON object", "body")
    model = _model(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: Field required", "max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise _bad("max_tokens: Input should be a positive integer", "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean", "stream")
    chat: dict[str, Any] = {"model": model, "messages": chat_messages(body), "max_tokens": max_tokens,
                            "stream": bool(stream)}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    if body.get("tools") is not None:
        tools = chat_tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise _bad("stop_sequences: Input should be a valid list of strings", "stop_sequences")
        if stops:
            chat["stop"] = stops
    for name in ("temperature", "top_p"):
        value = _number(body, name, 1.0)
        if value is not None:
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if type(top_k) is not int or top_k < 0:
            raise _bad("top_k: Input should be a non-negative integer", "top_k")
        chat["top_k"] = top_k
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata: Input should be an object", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _bad("metadata.user_id: Input should be a valid string", "metadata.user_id")
        if user:
            chat["user"] = user
    return MessagesCall(model=model, stream=bool(stream), body=chat)


def _input(arguments: Any) -> Any:
    """A tool call's arguments as `input`: parsed JSON object, anything else (unparseable included) → {}."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, (str, bytes)) and arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclass(slots=True)
class MessagesCall:
    """One Messages call on chat completions (a `Translation`): the chat body and how its answer goes back."""

    model: str
    stream: bool
    body: dict[str, Any]

    def message(self, doc: Chunk) -> dict[str, Any]:
        """The Anthropic `message` object for a chat completion."""
        choice, reply = first_choice(doc)
        content: list[dict[str, Any]] = []
        text = reply.get("content")
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        for call in reply.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            call_id, name = call.get("id"), function.get("name")
            content.append({"type": "tool_use",
                            "id": call_id if isinstance(call_id, str) and call_id else "toolu_" + message_id()[4:],
                            "name": name if isinstance(name, str) else "",
                            "input": _input(function.get("arguments"))})
        input_tokens, output_tokens = usage(doc.get("usage"))
        model = doc.get("model")
        return {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model if isinstance(model, str) and model else self.model,
            "content": content,
            "stop_reason": stop_reason(choice.get("finish_reason")),
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }

    def answer(self, doc: Chunk) -> bytes:
        """`message(doc)`'s JSON: an answer of text alone written into `_TEXT_MESSAGE`, any other serialized."""
        choice, reply = first_choice(doc)
        text = reply.get("content")
        if not (isinstance(text, str) and text) or reply.get("tool_calls"):
            return orjson.dumps(self.message(doc))
        model = doc.get("model")
        return _TEXT_MESSAGE % (
            orjson.dumps(message_id()),
            orjson.dumps(model if isinstance(model, str) and model else self.model),
            orjson.dumps(text),
            _STOP_JSON[stop_reason(choice.get("finish_reason"))],
            *usage(doc.get("usage")),
        )

    def encoder(self) -> MessagesEncoder:
        return MessagesEncoder(self.model)


def count_tokens(body: dict[str, Any]) -> int:
    """`/v1/messages/count_tokens`'s `input_tokens`: the body checked as `translate` checks it (model, messages,
    system, tools; `max_tokens` is not asked for), then `estimate_chat` of what chat would be sent."""
    if not isinstance(body, dict):
        raise _bad("The request body should be a JSON object", "body")
    _model(body)
    messages = chat_messages(body)
    tools = chat_tools(body["tools"]) if body.get("tools") is not None else []
    return estimate_chat(messages, tools)
