"""Anthropic's Messages API as a provider format (`Provider.format` "anthropic"): chat completions asked of it.

Why a translation and not a relay: Anthropic speaks its own wire format (``POST /v1/messages``, ``x-api-key`` and
``anthropic-version`` headers, system text split out of the conversation, content blocks, ``tool_use`` /
``tool_result`` blocks, typed SSE events), so a chat-completions call is rewritten on the way out (`payload`) and
its answer on the way back (`answer` for JSON, `AnthropicDecoder` for a stream's events).

Choices a reader would otherwise wonder about:
- ``max_tokens`` is required by Anthropic and optional in chat completions: the chat value
  (``max_completion_tokens`` first, then ``max_tokens``) or `DEFAULT_MAX_TOKENS` (4096, the smallest output cap
  among current Claude models, so no model refuses it).
- Every system/developer message, wherever it stands, goes into the top-level ``system`` as text blocks, in order
  (Anthropic has no system turn); consecutive messages of one role are merged into one turn, so the tool results
  answering one assistant turn arrive together in the next user turn, as Anthropic requires.
- ``temperature`` above 1 (Anthropic's maximum) is refused, not clamped: clamping would change the answer.
- Anthropic's current models refuse ``temperature`` and ``top_p`` together ("cannot both be specified"), and SPEC's
  defaults put both in every call: when both come, the one still at its SPEC default is not sent (``top_p``
  first), so a call that set neither, or one, works; a call that set both to other values is sent as asked.
- Fields Anthropic cannot honour (``n`` > 1, ``logprobs``, ``seed``, non-zero penalties, ``logit_bias``,
  ``response_format`` JSON modes, audio, ``reasoning_effort``, ``functions``...) get a 400 naming the field;
  fields that change nothing (``store``, ``metadata``, ``stream_options``, ``service_tier``, ``name`` of a message,
  an image's ``detail``) are dropped; ``user`` becomes ``metadata.user_id``.
- Usage: OpenAI's ``prompt_tokens`` counts cached input too, so it is Anthropic's ``input_tokens`` plus both cache
  counters; in a stream the input counts come with ``message_start`` and ``output_tokens`` (cumulative) with
  ``message_delta``; the usage chunk goes out at ``message_stop``.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

import orjson

from clexproxy.errors import InvalidRequest
from clexproxy.fastpath.sse import SSEEvent
from clexproxy.protocols.chunks import Chunk, UpstreamEventError, event_doc, feed_each

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_MAX_TOKENS: Final = 4096
# SPEC's sampling defaults, as the chat handler adds them (`CHAT_DEFAULTS`, a layer above: a test keeps them equal).
SPEC_DEFAULTS: Final = {"temperature": 0.7, "top_p": 0.9}
IMAGE_TYPES: Final = frozenset(("image/jpeg", "image/png", "image/gif", "image/webp"))

_DATA_URL: Final = re.compile(r"data:(?P<type>[\w.+/-]+);base64,(?P<data>.*)", re.DOTALL)
_STOP_REASONS: Final = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                         "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                         "refusal": "content_filter"}
# Fields that change nothing Anthropic would do: dropped. `model` and `stream` are set from the call.
_DROPPED: Final = frozenset(("model", "stream", "stream_options", "store", "metadata", "service_tier",
                             "parallel_tool_calls", "modalities", "prompt_cache_key", "safety_identifier"))
_HANDLED: Final = frozenset(("messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
                             "top_k", "tools", "tool_choice", "user"))
# Fields Anthropic has no counterpart for, and the values of them that ask for nothing (clients send defaults).
_ASKS_NOTHING: Final[dict[str, tuple[Any, ...]]] = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": ({},), "response_format": ({"type": "text"},)}


def _unsupported(name: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}' is not supported by this model's provider.", extra={"param": name})


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, extra={"param": param})


# Request: chat body → Messages body


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _invalid(f"'{where}.image_url.url' must be a non-empty string.", f"{where}.image_url.url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise _invalid(f"'{where}.image_url.url' must be an http(s) URL or a base64 data: URL.",
                       f"{where}.image_url.url")
    if match["type"] not in IMAGE_TYPES:
        raise _invalid(f"'{where}.image_url.url': image type {match['type']!r} is not supported by this model's "
                       f"provider (jpeg, png, gif and webp are).", f"{where}.image_url.url")
    return {"type": "image", "source": {"type": "base64", "media_type": match["type"], "data": match["data"]}}


def _blocks(content: Any, where: str, images: bool) -> list[dict[str, Any]]:
    """Chat content (a string or parts) as Anthropic blocks; empty text is left out (Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(f"Invalid type for '{where}': expected a string or an array of parts.", where)
    blocks: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        at = f"{where}[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise _invalid(f"Invalid type for '{at}.{kind}': expected a string.", f"{at}.{kind}")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url" and images:
            blocks.append(_image(part, at))
        else:
            raise _invalid(f"Content part type {kind!r} at '{at}' is not supported by this model's provider.",
                           f"{at}.type")
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _invalid(f"'{where}' must be a function call with a 'function.name'.", where)
    if not isinstance(call.get("id"), str):
        raise _invalid(f"Missing required parameter: '{where}.id'.", f"{where}.id")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"'{where}.function.arguments' must be a JSON object in a string.",
                       f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _turn(message: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]] | str]:
    """One chat message as (Anthropic role, content)."""
    role = message.get("role")
    content = message.get("content")
    if role == "user":
        return "user", content if isinstance(content, str) and content else _blocks(content, f"{where}.content", True)
    if role == "assistant":
        blocks = _blocks(content, f"{where}.content", False)
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _invalid(f"Invalid type for '{where}.tool_calls': expected an array.", f"{where}.tool_calls")
        blocks.extend(_tool_use(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls))
        return "assistant", blocks
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"Missing required parameter: '{where}.tool_call_id'.", f"{where}.tool_call_id")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        output = content if isinstance(content, str) else _blocks(content, f"{where}.content", True)
        if output:  # an empty result is sent without content, as Anthropic documents it
            result["content"] = output
        return "user", [result]
    raise _invalid(f"Role {role!r} at '{where}.role' is not supported by this model's provider; "
                   f"use 'tool' messages for tool results.", f"{where}.role")


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) with consecutive turns of one role merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        where = f"messages[{position}]"
        if message.get("role") in ("system", "developer"):
            system.extend(_blocks(message.get("content"), f"{where}.content", False))
            continue
        role, content = _turn(message, where)
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            if isinstance(previous, str):
                previous = turns[-1]["content"] = [{"type": "text", "text": previous}]
            previous.extend([{"type": "text", "text": content}] if isinstance(content, str) else content)
        else:
            turns.append({"role": role, "content": content})
    if not turns:
        raise _invalid("'messages' must hold at least one user or assistant message with content.", "messages")
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _invalid("Invalid type for 'tools': expected an array.", "tools")
    out: list[dict[str, Any]] = []
    for position, tool in enumerate(tools):
        where = f"tools[{position}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _invalid(f"'{where}.type' must be 'function' for this model's provider.", f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(f"Missing required parameter: '{where}.function.name'.", f"{where}.function.name")
        declared: dict[str, Any] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declared["description"] = function["description"]
        schema = function.get("parameters")
        if schema is not None and not isinstance(schema, dict):
            raise _invalid(f"Invalid type for '{where}.function.parameters': expected an object.",
                           f"{where}.function.parameters")
        declared["input_schema"] = schema or {"type": "object", "properties": {}}
        out.append(declared)
    return out


def _tool_choice(choice: Any, has_tools: bool, parallel: Any) -> dict[str, Any] | None:
    """Chat's tool_choice (and parallel_tool_calls) as Anthropic's; None to send none."""
    if choice is None:
        picked: dict[str, Any] | None = {"type": "auto"} if parallel is False and has_tools else None
    elif choice in ("auto", "none", "required"):
        picked = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        picked = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _invalid("'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                       "\"function\": {\"name\": ...}}.", "tool_choice")
    if picked is None:
        return None
    if not has_tools:
        if picked["type"] in ("any", "tool"):
            raise _invalid("'tool_choice' requires 'tools'.", "tool_choice")
        return None
    if parallel is False and picked["type"] != "none":
        picked["disable_parallel_tool_use"] = True
    return picked


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if not (value is None or name in _HANDLED or name in _DROPPED or value in _ASKS_NOTHING.get(name, ())):
            raise _unsupported(name)


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _invalid(f"'{name}' must be a positive integer, got {value!r}.", name)
            return value
    return DEFAULT_MAX_TOKENS


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
        raise _invalid("'stop' must be a string or an array of strings.", "stop")
    return [item for item in stops if item]


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """temperature, top_p and top_k; of temperature and top_p, the one still at SPEC's default goes when both came."""
    sent = {name: body[name] for name in ("temperature", "top_p", "top_k") if body.get(name) is not None}
    if "temperature" in sent and "top_p" in sent:
        dropped = next((name for name in ("top_p", "temperature") if sent[name] == SPEC_DEFAULTS[name]), None)
        if dropped is not None:
            del sent[dropped]
    temperature = sent.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 1):
        raise _invalid(f"'temperature' must be between 0 and 1 for this model's provider, got {temperature}.",
                       "temperature")
    return sent


def messages_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The Messages request (as a dict) for a chat-completions body."""
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _invalid("'messages' must be a non-empty array of objects.", "messages")
    system, turns = _conversation(messages)
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": _max_tokens(body), "messages": turns}
    if system:
        out["system"] = system
    out.update(_sampling(body))
    if body.get("stop") is not None and (stops := _stop(body["stop"])):
        out["stop_sequences"] = stops
    tools = _tools(body["tools"]) if body.get("tools") else []
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"), bool(tools), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise _invalid("Invalid type for 'user': expected a string.", "user")
        out["metadata"] = {"user_id": user}
    out["stream"] = body.get("stream") is True
    return out


# Answer: Messages answer → chat completion


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cached
    completion = usage.get("output_tokens") or 0
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def finish_reason(stop_reason: Any) -> str:
    """Chat's finish_reason for Anthropic's stop_reason (an unknown or absent one is "stop")."""
    return _STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_completion(doc: dict[str, Any], model_id: str) -> Chunk:
    if doc.get("type") == "error":
        raise UpstreamEventError(doc.get("error"))
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in doc.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id") or f"toolu_{len(calls)}", "type": "function",
                          "function": {"name": block.get("name") or "", "arguments": arguments}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    usage = doc.get("usage")
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(doc.get("stop_reason"))}
    return {"id": doc.get("id") or "msg", "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [choice], "usage": _usage(usage if isinstance(usage, dict) else {})}


# Stream: Messages events → chat chunks


class AnthropicDecoder:
    """One Messages stream's events as chat chunks (`StreamDecoder`).

    Content blocks keep their Anthropic index; a ``tool_use`` block becomes the next chat tool call (index 0, 1,
    ...), so parallel calls stream as OpenAI's do. ``thinking`` blocks and their deltas yield nothing.
    """

    __slots__ = ("_calls", "_created", "_id", "_model", "_usage", "done")

    def __init__(self, model_id: str) -> None:
        self.done = False
        self._model = model_id
        self._id = "msg"
        self._created = int(time.time())
        self._calls: dict[int, int] = {}  # Anthropic block index → chat tool-call index
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _tool_delta(self, index: int, function: dict[str, Any], **head: Any) -> Chunk:
        return self._chunk({"tool_calls": [{"index": index, **head, "function": function}]})

    feed_all = feed_each

    def feed(self, event: SSEEvent) -> list[Chunk]:
        data = event.data
        if data is None or self.done:
            return []
        doc = event_doc(data)
        kind = doc.get("type")
        if kind == "error" or event.event == b"error":
            raise UpstreamEventError(doc.get("error", doc))
        if kind == "content_block_delta":
            return self._delta(doc)
        if kind == "content_block_start":
            return self._start(doc)
        if kind == "message_start":
            message = doc.get("message") or {}
            self._id = message.get("id") or self._id
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            self._usage.update({k: v for k, v in (doc.get("usage") or {}).items() if v is not None})
            stop = (doc.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, finish_reason(stop))] if stop is not None else []
        if kind == "message_stop":
            self.done = True
            return [{**self._chunk({}), "choices": [], "usage": _usage(self._usage)}]
        return []  # ping, content_block_stop, and event types added after this was written

    def _start(self, doc: dict[str, Any]) -> list[Chunk]:
        block = doc.get("content_block") or {}
        if block.get("type") == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if block.get("type") != "tool_use":
            return []
        index = self._calls[doc.get("index", -1)] = len(self._calls)
        chunks = [self._tool_delta(index, {"name": block.get("name"), "arguments": ""}, id=block.get("id"),
                                   type="function")]
        if block.get("input"):  # a server may send the whole input at once
            chunks.append(self._tool_delta(index, {"arguments": orjson.dumps(block["input"]).decode()}))
        return chunks

    def _delta(self, doc: dict[str, Any]) -> list[Chunk]:
        delta = doc.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})] if delta.get("text") else []
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = self._calls.get(doc.get("index", -1))
            if index is not None:
                return [self._tool_delta(index, {"arguments": delta["partial_json"]})]
        return []

    def close(self) -> list[Chunk]:
        return []  # `message_stop` is the only end: a body that ends before it is cut short

    def reported_usage(self) -> dict[str, Any] | None:
        return _usage(self._usage) if self._usage else None


class AnthropicWire:
    """The ``anthropic`` provider format (`WireFormat`)."""

    name = "anthropic"

    def path(self, endpoint: str, upstream_model: str, stream: bool) -> str:
        if endpoint != "/chat/completions":
            raise InvalidRequest(f"'{endpoint}' is not served by this model's provider.", extra={"param": "model"})
        return "/messages"

    def auth_headers(self, credential: str) -> dict[str, str]:
        return {"x-api-key": credential, "anthropic-version": ANTHROPIC_VERSION}

    def payload(self, body: dict[str, Any], upstream_model: str) -> bytes:
        return orjson.dumps(messages_body(body, upstream_model))

    def check_first(self, data: bytes) -> None:
        return None  # a Messages stream opens with `message_start`; refusals come as a stop_reason, not a block

    def answer(self, doc: dict[str, Any], model_id: str) -> Chunk:
        return chat_completion(doc, model_id)

    def decoder(self, model_id: str) -> AnthropicDecoder:
        return AnthropicDecoder(model_id)


ANTHROPIC: Final = AnthropicWire()
