"""Anthropic Messages' stream and error shapes, written from chat chunks (`MessagesEncoder`, `error_body`).

Why an encoder of its own: Anthropic's stream is not a sequence of deltas of one object but of content
blocks, each opened (`content_block_start`), fed (`content_block_delta`: `text_delta` or
`input_json_delta`) and closed (`content_block_stop`) at its own `index`, framed by `message_start`
(and a `ping`) and `message_delta` (stop reason, usage) + `message_stop`. Chat chunks map onto that
with one rule: a block stays open while the same kind of delta keeps coming; text after a tool call,
or a new tool call, closes the open block and opens the next index. The SDK's accumulator
(`messages.stream()`) rebuilds the message from exactly these events.

What a chat stream cannot say: the input tokens before the end (so `message_start` carries 0 and
`message_delta` the real counts from the usage chunk), and which stop sequence matched (a chat
`stop` is `end_turn`). Each event is `event: <type>\\ndata: <json>\\n\\n` with the json's `type` equal to
the event name; the hot deltas are written from precomputed byte prefixes, not dicts.

The error shape lives here too (the encoder's `error` event uses it, and the JSON answer re-exports
it): `{"type": "error", "error": {"type", "message"}}`, the type chosen by our HTTP status, which stays
SPEC's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from clexproxy.errors import ApiError
from clexproxy.protocols.chunks import MAX_TOKEN_COUNT, Chunk, random_hex

__all__ = ["STOP_REASONS", "MessagesEncoder", "error_body", "error_type", "message_id", "stop_reason", "usage"]

# Anthropic's documented status → error type; any other status is an api_error.
_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

# Chat's finish_reason → Anthropic's stop_reason (a matched stop sequence is a chat "stop": end_turn).
STOP_REASONS: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def error_type(status: int) -> str:
    """Anthropic's `error.type` for one of our HTTP statuses."""
    return _ERROR_TYPES.get(status, "api_error")


def error_body(error: ApiError) -> bytes:
    """`error` in Anthropic's shape: only `type` and `error {type, message}`, as Anthropic's own body."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(error.status), "message": error.message}})


def message_id() -> str:
    """A message id as Anthropic's look: `msg_` and 24 random hex characters."""
    return "msg_" + random_hex(24)


def stop_reason(finish_reason: Any) -> str:
    """Anthropic's stop reason for a chat `finish_reason` (none, or one we do not know, is `end_turn`)."""
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def usage(chat_usage: Any) -> tuple[int, int]:
    """(input_tokens, output_tokens) from a chat `usage` object; what is missing, malformed or out of range counts 0."""
    if not isinstance(chat_usage, dict):
        return 0, 0
    prompt, completion = chat_usage.get("prompt_tokens"), chat_usage.get("completion_tokens")
    # `token_count`, in line: every Messages answer reads one. A negative count or one past 2**53 is 0.
    return ((prompt if type(prompt) is int and 0 <= prompt <= MAX_TOKEN_COUNT else 0),
            (completion if type(completion) is int and 0 <= completion <= MAX_TOKEN_COUNT else 0))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_PING: Final = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP: Final = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_TEXT_DELTA: Final = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_MID: Final = b',"delta":{"type":"text_delta","text":'
_JSON_MID: Final = b',"delta":{"type":"input_json_delta","partial_json":'
_DELTA_END: Final = b"}}\n\n"
_BLOCK_STOP: Final = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_TEXT_START: Final = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_TEXT_START_END: Final = b',"content_block":{"type":"text","text":""}}\n\n'


class MessagesEncoder:
    """One Messages stream's events from chat chunks (a `StreamEncoder`).

    `model` names the message when the chunks do not (a chunk's own `model` wins: the relay puts the
    catalog id there).
    """

    __slots__ = ("_blocks", "_finish", "_index", "_open", "_started", "_text_prefix", "_usage", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._started = False
        self._index = -1  # the index of the last block opened
        self._open = False  # whether block `_index` is still open
        self._text_prefix = b""  # the open text block's delta event up to its text (b"" when none is open)
        self._blocks: dict[int, int] = {}  # a chat tool call's index → its block's index
        self._finish: Any = None
        self._usage: Any = None

    def _start(self, chunk: Chunk | None) -> bytes:
        self._started = True
        model = chunk.get("model") if chunk is not None else None
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model if isinstance(model, str) and model else self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _PING

    def _close(self) -> bytes:
        if not self._open:
            return b""
        self._open = False
        self._text_prefix = b""
        return _BLOCK_STOP + str(self._index).encode() + _DELTA_END[1:]

    def chunk(self, chunk: Chunk) -> bytes:
        out = b"" if self._started else self._start(chunk)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return out
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return out
        text = delta.get("content")
        if isinstance(text, str) and text:
            if not self._text_prefix:
                out += self._close()
                self._index += 1
                self._open = True
                index = str(self._index).encode()
                self._text_prefix = _TEXT_DELTA + index + _TEXT_MID
                out += _TEXT_START + index + _TEXT_START_END
            out += self._text_prefix + orjson.dumps(text) + _DELTA_END
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    out += self._tool_call(call)
        return out

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        out = b""
        position = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        block = self._blocks.get(position)
        if block is None:
            out += self._close()
            self._index += 1
            self._open = True
            block = self._blocks[position] = self._index
            call_id, name = call.get("id"), function.get("name")
            content_block = {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else "toolu_" + random_hex(24),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            out += _event("content_block_start",
                          {"type": "content_block_start", "index": block, "content_block": content_block})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += _TEXT_DELTA + str(block).encode() + _JSON_MID + orjson.dumps(arguments) + _DELTA_END
        return out

    def end(self) -> bytes:
        out = (b"" if self._started else self._start(None)) + self._close()
        input_tokens, output_tokens = usage(self._usage)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish), "stop_sequence": None},
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        return out + _event("message_delta", delta) + _STOP

    def error(self, error: ApiError) -> bytes:
        return b"event: error\ndata: " + error_body(error) + b"\n\n"
