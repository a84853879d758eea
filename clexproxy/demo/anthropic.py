"""The demo upstream's Anthropic Messages API (``POST /v1/messages``): ``format = "anthropic"`` providers, tested on
real sockets.

Why a second wire format: translations onto providers that do not speak OpenAI must be exercised against a real
server, byte for byte as the vendor frames it. This endpoint gives the SAME answer words and token counts as the
OpenAI chat endpoint for the same prompt text (it builds the prompt view and calls `plan_chat`), and honours the
same ``x-demo-*`` knobs (`Knobs`: tokens, ttft, delay, drop, status, fail-times, retry-after, model-missing), only
dressed in Anthropic's shapes.

Modelled
    Request: ``model``, ``max_tokens`` (required, caps the answer: ``stop_reason`` ``"max_tokens"``), ``messages``
    (role ``user``/``assistant``; content a string or blocks), ``system`` (string or text blocks), ``stream``,
    ``stop_sequences`` (the answer is cut before the first match: ``stop_reason`` ``"stop_sequence"``).
    The prompt text (seed and ``input_tokens``) is the system text, the ``text`` blocks and the text inside
    ``tool_result`` blocks; ``image`` and ``tool_use`` blocks are accepted and ignored, like the other sampling
    fields (temperature, top_p, top_k, metadata). ``tools``: when declared, ``tool_choice`` is not ``none`` and the
    last message carries no ``tool_result``, the answer is one ``tool_use`` block (``stop_reason`` ``"tool_use"``)
    calling the first tool (or ``tool_choice``'s named one), its required string/number/boolean properties filled
    deterministically, as the Gemini endpoint does; streamed as ``input_json_delta`` fragments. Headers
    ``x-api-key`` and ``anthropic-version`` are accepted, never checked (the recorder keeps them for tests).
    Answer: the ``message`` object with one ``text`` block, ``stop_reason``, ``stop_sequence`` and ``usage``
    (``input_tokens``, ``output_tokens``, cache counters 0). Stream (SSE with ``event:`` lines): ``message_start``
    (usage with ``output_tokens`` 1, as the vendor sends), ``content_block_start``, ``ping``, one
    ``content_block_delta`` (``text_delta``) per answer token, ``content_block_stop``, ``message_delta`` (stop
    reason and cumulative ``output_tokens``), ``message_stop``.
    Errors: ``{"type":"error","error":{"type","message"},"request_id"}`` with the vendor's status → type table
    (`error_type`); ``x-demo-status: 529`` is ``overloaded_error``; ``retry-after`` is kept.
    ``x-demo-anthropic-error-after: N`` (streams only): the vendor's in-stream ``event: error``
    (``overloaded_error``) after N content deltas, ending the stream; with 0 it is the stream's first event, before
    ``message_start``, as when the vendor is overloaded from the start.
Not modelled
    parallel tool_use answers, text beside a tool_use, thinking blocks, in-stream errors other than overloaded,
    ``/v1/messages/count_tokens``, the ``request-id`` response header, and a malformed shared ``x-demo-*`` header,
    which the shared dispatcher answers in OpenAI's shape before this endpoint runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from clexproxy.demo.answers import TOKEN_JSON, ChatPlan, plan_chat
from clexproxy.demo.errors import DemoError, bad_request, optional_bool, require_object
from clexproxy.demo.knobs import Knobs, preflight
from clexproxy.demo.recorder import DemoState, RecordedRequest
from clexproxy.demo.responses import drop_connection, send_body, send_json, sleep
from clexproxy.demo.sse import serve_sse

__all__ = ["ERROR_AFTER_HEADER", "anthropic_error_payload", "error_type", "serve_messages"]

ERROR_AFTER_HEADER: Final = "x-demo-anthropic-error-after"
_OVERLOADED_EVENT: Final = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                            b'"message":"Overloaded"}}\n\n')

_ROLES: Final = frozenset(("user", "assistant"))

# The vendor's documented HTTP status → error type; other 4xx are invalid_request_error, other 5xx api_error.
_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS: Final[Mapping[str, str]] = {"stop": "end_turn", "length": "max_tokens"}


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status."""
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_payload(error: DemoError, request_id: str) -> bytes:
    """A `DemoError` re-dressed in Anthropic's error shape (529 says "Overloaded", as the vendor does)."""
    kind = error_type(error.status)
    message = "Overloaded" if kind == "overloaded_error" else error.message
    if error.status == 404 and error.code == "model_not_found" and error.param == "model":
        message = error.message.replace("The model", "model:", 1).replace("`", "").replace(" does not exist", "")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})


# --------------------------------------------------------------------------------------------------------------
# Request: Anthropic's body → the prompt view `plan_chat` reads
# --------------------------------------------------------------------------------------------------------------


def _block_texts(content: Any, where: str) -> list[dict[str, str]]:
    """The text parts of a string or a block list; ``tool_result`` blocks contribute their own text."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: Input should be a valid list", "invalid_type")
    parts: list[dict[str, str]] = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"{where}: each content block must be an object with a type", "invalid_type")
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise bad_request(f"{where}.text: Field required", "missing_required_parameter")
            parts.append({"type": "text", "text": block["text"]})
        elif block["type"] == "tool_result" and block.get("content") is not None:
            parts.extend(_block_texts(block["content"], f"{where}.content"))
    return parts


def _prompt_view(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The system text and every message's text as OpenAI-style messages, so the seed and counts match chat's."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: at least one message is required", "missing_required_parameter", "messages")
    view: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        view.append({"role": "system", "content": _block_texts(system, "system")})
    for position, message in enumerate(messages):
        where = f"messages.{position}"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad_request(f"{where}.role: Input should be 'user' or 'assistant'", "invalid_value", "messages")
        if "content" not in message:
            raise bad_request(f"{where}.content: Field required", "missing_required_parameter", "messages")
        view.append({"role": message["role"], "content": _block_texts(message["content"], f"{where}.content")})
    return view


def _stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise bad_request("stop_sequences: Input should be a list of non-empty strings", "invalid_type")
    return tuple(value)


@dataclass(slots=True)
class MessagePlan:
    """One Anthropic answer: the text pieces (one per output token), the stop reason and the usage figures."""

    message_id: str
    model: str
    pieces: tuple[str, ...]
    output_tokens: int
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    tool_use: dict[str, Any] | None = None

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": self.output_tokens,
        }

    def message(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [self.tool_use] if self.tool_use else [{"type": "text", "text": "".join(self.pieces)}],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(),
        }


def _cut_at_stop(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], int, str | None]:
    """Cut the answer before the earliest stop sequence: the text pieces kept, the output tokens spent, the match.

    The token holding the match was generated, so it counts as output even when none of its text is kept.
    """
    text = "".join(pieces)
    found = [(index, stop) for stop in stops if (index := text.find(stop)) >= 0]
    if not found:
        return pieces, len(pieces), None
    cut, stop = min(found)
    kept: list[str] = []
    position = 0
    for piece in pieces:
        if position + len(piece) > cut:
            if cut > position:
                kept.append(piece[: cut - position])
            return kept, len(kept) if cut > position else len(kept) + 1, stop
        kept.append(piece)
        position += len(piece)
    return kept, len(kept), stop  # pragma: no cover - a match always lies inside the text


def plan_message(state: DemoState, knobs: Knobs, body: dict[str, Any], model: str) -> tuple[MessagePlan, bool]:
    """Validate Anthropic's fields, decide the answer through `plan_chat`; returns the plan and whether to stream."""
    if "max_tokens" not in body:
        raise bad_request("max_tokens: Field required", "missing_required_parameter", "max_tokens")
    view = _prompt_view(body)
    stops = _stop_sequences(body)
    stream = optional_bool(body, "stream")
    chat: ChatPlan = plan_chat(state, knobs, {"messages": view, "max_tokens": body["max_tokens"]}, model)
    pieces = [orjson.loads(TOKEN_JSON[token]) for token in chat.tokens]
    kept, output_tokens, stop = _cut_at_stop(pieces, stops)
    stop_reason = "stop_sequence" if stop is not None else _STOP_REASONS[chat.finish_reason]
    message_id = "msg_demo_" + chat.completion_id.rsplit("-", 1)[-1]
    plan = MessagePlan(message_id, model, tuple(kept), output_tokens, stop_reason, stop, chat.prompt_tokens)
    call = _tool_use(body, pieces, "toolu_demo_" + chat.completion_id.rsplit("-", 1)[-1])
    if call is not None:
        plan.tool_use, plan.stop_reason, plan.stop_sequence = call, "tool_use", None
    return plan, stream


def _tool_use(body: dict[str, Any], pieces: list[str], call_id: str) -> dict[str, Any] | None:
    """One ``tool_use`` block to the first (or the forced) tool, unless the conversation just answered one."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    last = body["messages"][-1].get("content")
    if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        named = [t for t in named if t["name"] == choice.get("name")]
    if not named:
        raise bad_request("tools: each tool needs a name (and tool_choice must name a declared one)", "invalid_value")
    schema = named[0].get("input_schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required") if isinstance(schema, dict) else None
    arguments: dict[str, Any] = {}
    for position, name in enumerate(required if isinstance(required, list) else []):
        spec = properties.get(name)
        kind = str(spec.get("type", "string")).lower() if isinstance(spec, dict) else "string"
        if kind in ("number", "integer"):
            arguments[name] = position + 1
        elif kind == "boolean":
            arguments[name] = True
        else:
            arguments[name] = pieces[position % len(pieces)].strip() if pieces else ""
    return {"type": "tool_use", "id": call_id, "name": named[0]["name"], "input": arguments}


# --------------------------------------------------------------------------------------------------------------
# Answer
# --------------------------------------------------------------------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream_events(
    request: web.Request, response: web.StreamResponse, state: DemoState, recorded: RecordedRequest, knobs: Knobs,
    plan: MessagePlan,
) -> bool:  # fmt: skip
    """Write the event sequence after the headers; False when the drop knob cut it."""
    await sleep(knobs.ttft_s)
    error_after = _error_after(request)
    if error_after == 0:
        await response.write_eof(_OVERLOADED_EVENT)
        return True
    start = plan.message()
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**plan.usage(), "output_tokens": 1}
    await response.write(_event("message_start", {"type": "message_start", "message": start}))
    deltas: list[dict[str, str]]
    if plan.tool_use is not None:  # the vendor's shape: the block with empty input, then the JSON in fragments
        content_block: dict[str, Any] = {**plan.tool_use, "input": {}}
        arguments = orjson.dumps(plan.tool_use["input"]).decode()
        half = len(arguments) // 2
        parts = ("", arguments[:half], arguments[half:])
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in parts]
    else:
        content_block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in plan.pieces]
    block = {"type": "content_block_start", "index": 0, "content_block": content_block}
    await response.write(_event("content_block_start", block) + _event("ping", {"type": "ping"}))
    drop_after = knobs.drop_after
    for position, piece in enumerate(deltas):
        if position:
            await sleep(knobs.delay_s)
        if drop_after is not None and position >= drop_after:
            drop_connection(request, response, state.recorder, recorded)
            return False
        if position == error_after:
            await response.write_eof(_OVERLOADED_EVENT)
            return True
        await response.write(_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": piece}))
    if drop_after is not None:
        drop_connection(request, response, state.recorder, recorded)
        return False
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
        "usage": {"output_tokens": plan.output_tokens},
    }
    await response.write(
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}) + _event("message_delta", final)
    )
    await response.write_eof(_event("message_stop", {"type": "message_stop"}))
    return True


def _error_after(request: web.Request) -> int | None:
    value = request.headers.get(ERROR_AFTER_HEADER)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise bad_request(f"{ERROR_AFTER_HEADER} must be a whole number, got {value!r}", "invalid_demo_header")
    return int(value)


async def serve_messages(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/messages``: refusals decided here are rendered in Anthropic's error shape."""
    model: str | None = None
    try:
        checked = require_object(body)
        raw_model = checked.get("model")
        if not isinstance(raw_model, str) or not raw_model:
            raise bad_request("model: Field required", "missing_required_parameter", "model")
        model = raw_model
        plan, stream = plan_message(state, knobs, checked, model)
        _error_after(request)  # a malformed knob is refused before the stream starts
        preflight(state, knobs, model)
    except DemoError as error:
        request_id = f"req_demo_{next(state.completion_ids)}"
        payload = anthropic_error_payload(error, request_id)
        return await send_json(request, state.recorder, recorded, error.status, payload, error.headers)
    if stream:
        return await serve_sse(request, state, recorded,
                               lambda response: _stream_events(request, response, state, recorded, knobs, plan))
    return await send_body(request, state, recorded, knobs, orjson.dumps(plan.message()))
