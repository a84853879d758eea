"""The OpenAI Responses API's answer shapes from chat completions: the response object and its SSE stream.

Why the response object lives with the stream: `ResponsesEncoder` builds it three times (opening,
completed, failed) and `ResponsesCall.answer` once, from the same pieces (`response_head`,
`message_item`, `function_call_item`, `responses_usage`, `finish_status`), so a JSON answer and the
last event of a stream are the same document.

The stream is what `openai.lib.streaming.responses` accumulates: `response.created` first, every
event's `sequence_number` one more than the last (from 0), each content event after the
`response.output_item.added` of its `output_index`, every item added closed by its
`response.output_item.done` before `response.completed`. Items are numbered in the order their
first delta arrives; a chat stream's parallel tool calls interleave their argument fragments by
chat `index`, so their items stay open side by side (the SDK keys them by `output_index`) and all
close at `end()`. A stream cut by max tokens or a content filter still ends in `response.completed`
(status "incomplete", as in the JSON answer): the SDK's `get_final_response` needs that event.

`ResponseError.code` is a closed vocabulary in the SDK ("server_error", "rate_limit_exceeded", ...):
SPEC's codes outside it are sent as "server_error", with SPEC's error type in `type`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from clexproxy.errors import ApiError
from clexproxy.protocols.chunks import MAX_TOKEN_COUNT, Chunk, random_hex, text_only, token_count

IdFactory = Callable[[str], str]

_DELTA_START = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
_DELTA_END = b',"logprobs":[]}\n\n'
_EVENT = b'event: %s\ndata: {"type":"%s","sequence_number":%d,%s}\n\n'  # kind, kind, number, the fields' inside

# `ResponseError.code` values SPEC's error codes keep as they are; any other becomes "server_error".
SDK_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded"})


def random_id(prefix: str) -> str:
    """`prefix` and 32 random hex digits ("resp_…", "msg_…", "fc_…")."""
    return prefix + random_hex(32)


# A count beyond this (2**53 - 1, JSON's largest exact integer) counts 0: the total of two would not serialize.
def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """A chat `usage`'s (input, cached input, output, reasoning, total) tokens, as the Responses `usage` says them.

    Every JSON Responses answer reads one: the two counts every usage has are checked in line.
    """
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt = prompt if type(prompt) is int and 0 <= prompt <= MAX_TOKEN_COUNT else 0
    completion = completion if type(completion) is int and 0 <= completion <= MAX_TOKEN_COUNT else 0
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = token_count(prompt_details.get("cached_tokens")) if type(prompt_details) is dict else 0
    reasoning = token_count(completion_details.get("reasoning_tokens")) if type(completion_details) is dict else 0
    total = usage.get("total_tokens")
    return prompt, cached, completion, reasoning, token_count(total) if total is not None else prompt + completion


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """The Responses `usage` from a chat `usage` (None when the chat answer had none)."""
    if not isinstance(usage, dict):
        return None
    prompt, cached, completion, reasoning, total = usage_counts(usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    }


def finish_status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """The response's `status` and `incomplete_details` for a chat `finish_reason`."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """An assistant `message` output item holding one `output_text` part."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_text_part(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A `function_call` output item; `call_id` is the chat tool call's id, which the client answers with."""
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def response_head(
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a `response` object says of its answer: the fields before the request fields it echoes."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete_details,
        "model": model,
        "output": output,
        "usage": usage,
    }


def created_at(value: Any) -> int:
    """A chat answer's `created` (seconds), or now when it has none (or one no JSON integer can hold)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 2**63:
        return int(value)
    return int(time.time())


class ResponsesEncoder:
    """One Responses stream from chat chunks (a `StreamEncoder`).

    `echoed` is the request fields every response object repeats, as the inside of their JSON object
    (serialized once for the three response objects of a stream); `model` names the response until a
    chunk names the model that answers; `new_id` makes the response's and items' ids.
    """

    __slots__ = ("_calls", "_created_at", "_delta_head", "_echo_end", "_finish_reason", "_finished", "_id",
                 "_items", "_message", "_model", "_new_id", "_seq", "_started", "_texts", "_usage")

    def __init__(self, echoed: bytes, model: str, new_id: IdFactory = random_id) -> None:
        self._echo_end = b"," + echoed + b"}" if echoed else b"}"  # what ends each response object's JSON
        self._model = model
        self._new_id = new_id
        self._id = new_id("resp_")
        self._created_at = 0
        self._seq = 0
        self._started = False
        self._finished = False
        self._items: list[dict[str, Any]] = []  # the output items, in output_index order
        self._message: dict[str, Any] | None = None  # the message item, once text arrived
        self._texts: list[str] = []  # the message's text deltas
        self._delta_head = b""  # a text delta event's bytes between its sequence number and its text (`_text`)
        self._calls: dict[Any, dict[str, Any]] = {}  # chat tool call index -> its function_call item
        self._finish_reason: Any = None
        self._usage: Any = None

    def _event(self, kind: bytes, fields: dict[str, Any]) -> bytes:
        """An event of `kind`: its type and sequence number, then `fields` (never empty; written into `_EVENT`)."""
        seq = self._seq
        self._seq = seq + 1
        return _EVENT % (kind, kind, seq, orjson.dumps(fields)[1:-1])

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                  incomplete_details: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> orjson.Fragment:
        """The response object as JSON an event carries: `response_head`'s, then the echoed fields'."""
        head = response_head(response_id=self._id, created_at=self._created_at, model=self._model, status=status,
                             output=output, usage=usage, incomplete_details=incomplete_details, error=error)
        return orjson.Fragment(orjson.dumps(head)[:-1] + self._echo_end)

    def _open(self, chunk: Chunk | None) -> list[bytes]:
        self._started = True
        self._created_at = created_at(chunk.get("created") if chunk else None)
        model = chunk.get("model") if chunk else None
        if isinstance(model, str) and model:
            self._model = model
        opening = self._response("in_progress", [], None)
        return [self._event(b"response.created", {"response": opening}),
                self._event(b"response.in_progress", {"response": opening})]

    def chunk(self, chunk: Chunk) -> bytes:
        if self._finished:
            return b""
        if self._message is not None:
            content = text_only(chunk)
            if content is not None:  # most chunks: `_text`'s delta event, without its checks
                self._texts.append(content)
                seq = self._seq
                self._seq = seq + 1
                return _DELTA_START + b"%d" % seq + self._delta_head + orjson.dumps(content) + _DELTA_END
        out = [] if self._started else self._open(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue  # the gateway never asks for n > 1
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        out.extend(self._text(content))
                    tool_calls = delta.get("tool_calls")
                    if isinstance(tool_calls, list):
                        for call in tool_calls:
                            if isinstance(call, dict):
                                out.extend(self._tool_call(call))
                if choice.get("finish_reason"):
                    self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text(self, content: str) -> list[bytes]:
        out = []
        message = self._message
        if message is None:
            message = self._message = message_item(self._new_id("msg_"), "", "in_progress")
            self._items.append(message)
            index = len(self._items) - 1
            added = {**message, "content": []}
            out.append(self._event(b"response.output_item.added", {"output_index": index, "item": added}))
            out.append(self._event(b"response.content_part.added", {
                "item_id": message["id"], "output_index": index, "content_index": 0, "part": output_text_part("")}))
            self._delta_head = b',"item_id":%s,"output_index":%d,"content_index":0,"delta":' % (
                orjson.dumps(message["id"]), index)
        self._texts.append(content)
        # The stream's most frequent event, written from its fixed parts: the bytes `_event` would make.
        out.append(_DELTA_START + b"%d" % self._seq + self._delta_head + orjson.dumps(content) + _DELTA_END)
        self._seq += 1
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        key = call.get("index", 0)
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        item = self._calls.get(key)
        if item is None:
            call_id = call.get("id")
            name = function.get("name")
            item = function_call_item(self._new_id("fc_"), call_id if isinstance(call_id, str) and call_id
                                      else self._new_id("call_"), name if isinstance(name, str) else "", "",
                                      "in_progress")
            self._calls[key] = item
            self._items.append(item)
            out.append(self._event(b"response.output_item.added",
                                   {"output_index": len(self._items) - 1, "item": dict(item)}))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out.append(self._event(b"response.function_call_arguments.delta", {
                "item_id": item["id"], "output_index": self._items.index(item), "delta": arguments}))
        return out

    def _settle_items(self, status: str) -> None:
        """Every item's final `status`, and the message's whole text."""
        for item in self._items:
            item["status"] = status
        if self._message is not None:
            self._message["content"] = [output_text_part("".join(self._texts))]

    def _close_items(self, status: str) -> list[bytes]:
        self._settle_items(status)
        out = []
        for index, item in enumerate(self._items):
            if item["type"] == "message":
                part = item["content"][0]
                text = part["text"]
                out.append(self._event(b"response.output_text.done", {
                    "item_id": item["id"], "output_index": index, "content_index": 0, "text": text, "logprobs": []}))
                out.append(self._event(b"response.content_part.done", {
                    "item_id": item["id"], "output_index": index, "content_index": 0, "part": part}))
            else:
                out.append(self._event(b"response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": index, "arguments": item["arguments"]}))
            out.append(self._event(b"response.output_item.done", {"output_index": index, "item": item}))
        return out

    def end(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = [] if self._started else self._open(None)
        status, details = finish_status(self._finish_reason)
        out.extend(self._close_items(status))
        response = self._response(status, self._items, responses_usage(self._usage), incomplete_details=details)
        out.append(self._event(b"response.completed", {"response": response}))
        return b"".join(out)

    def error(self, error: ApiError) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        out = [] if self._started else self._open(None)
        self._settle_items("incomplete")  # no .done events: `response.failed` ends the stream as it stands
        code = error.code if error.code in SDK_ERROR_CODES else "server_error"
        failure = {"code": code, "message": error.message, "type": error.error_type}
        response = self._response("failed", self._items, responses_usage(self._usage), error=failure)
        out.append(self._event(b"response.failed", {"response": response}))
        return b"".join(out)
