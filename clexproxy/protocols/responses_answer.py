"""A Responses call once translated (`ResponsesCall`): the `Response` object for its chat completion, and its JSON.

Why a template: every JSON Responses call pays for its answer, and the usual one (one text message,
its usage counted) is the same bytes around ten values. `ResponsesCall.answer` writes those into
`_TEXT_ANSWER`, which is the bytes `orjson.dumps(call.response(doc))` gives, key for key (a test holds
the two equal on generated answers); the dicts are built only for the rest (tool calls, no text, no
usage). The echo, the request fields every response repeats, is serialized once per call, and the
usual request's (`PLAIN_ECHO`) once per process.
"""

from __future__ import annotations

from typing import Any

import orjson

from clexproxy.protocols.chunks import Chunk, StreamEncoder
from clexproxy.protocols.responses_stream import (
    IdFactory,
    ResponsesEncoder,
    created_at,
    finish_status,
    function_call_item,
    message_item,
    random_id,
    response_head,
    responses_usage,
    usage_counts,
)

# A request of these fields only sets nothing the response echoes: its echo is the defaults' (`PLAIN_ECHO`, one
# object every such call shares and nothing changes), and `translate` skips the other fields' checks, each of
# which would find its field absent. This is what most SDK calls send.
PLAIN_FIELDS = frozenset({"model", "input", "stream", "store"})
PLAIN_ECHO: dict[str, Any] = {
    "instructions": None,
    "metadata": {},
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "max_output_tokens": None,
    "text": {"format": {"type": "text"}},
    "reasoning": {"effort": None, "summary": None},
    "truncation": "disabled",
    "store": False,
    "background": False,
    "previous_response_id": None,
    "user": None,
}
PLAIN_ECHO_JSON = orjson.dumps(PLAIN_ECHO)

# `response_head`'s fields with one `message_item` as the output and `responses_usage`'s usage, then the
# echoed fields (`ResponsesCall._echoed`): the usual answer's bytes.
_TEXT_ANSWER = (
    b'{"id":%s,"object":"response","created_at":%d,"status":%s,"error":null,"incomplete_details":%s,"model":%s,'
    b'"output":[{"id":%s,"type":"message","status":%s,"role":"assistant","content":[{"type":"output_text",'
    b'"text":%s,"annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":%d,"input_tokens_details":'
    b'{"cached_tokens":%d,"cache_write_tokens":0},"output_tokens":%d,"output_tokens_details":'
    b'{"reasoning_tokens":%d},"total_tokens":%d},%s}'
)
_STATUS_JSON = {"completed": b'"completed"', "incomplete": b'"incomplete"'}


class ResponsesCall:
    """One Responses call put onto chat completions (a `Translation`)."""

    __slots__ = ("_echo", "_echo_json", "body", "model", "new_id", "stream")

    def __init__(self, model: str, stream: bool, body: dict[str, Any], echo: dict[str, Any],
                 new_id: IdFactory = random_id, echo_json: bytes | None = None) -> None:
        self.model = model
        self.stream = stream
        self.body = body
        self._echo = echo
        self._echo_json = echo_json  # `echo`'s JSON, when made before the answer (a shared echo's, once)
        self.new_id = new_id  # ids of the response and its items (tests give a counter)

    def _sampling(self) -> dict[str, Any]:
        """The response's sampling fields, as sent upstream (the handler may have added SPEC's defaults)."""
        body = self.body
        return {"temperature": body.get("temperature"), "top_p": body.get("top_p")}

    def echo(self) -> dict[str, Any]:
        """The request fields the response repeats, its sampling last."""
        return {**self._echo, **self._sampling()}

    def _echoed(self) -> bytes:
        """The inside of the JSON object of the fields the response repeats (`echo()`'s, without its braces)."""
        echo = self._echo_json
        if echo is None:
            echo = self._echo_json = orjson.dumps(self._echo)
        return echo[1:-1] + b"," + orjson.dumps(self._sampling())[1:-1]

    def _head(self, doc: Chunk, choice: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """What the Response object for a chat completion says of its answer (`response_head`)."""
        status, details = finish_status(choice.get("finish_reason"))
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[dict[str, Any]] = []
        content = message.get("content")
        if isinstance(content, str) and content:
            output.append(message_item(self.new_id("msg_"), content, item_status))
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            call_id = call.get("id")
            output.append(function_call_item(
                self.new_id("fc_"), call_id if isinstance(call_id, str) and call_id else self.new_id("call_"),
                str(function.get("name") or ""), str(function.get("arguments") or ""), "completed"))
        model = doc.get("model")
        return response_head(
            response_id=self.new_id("resp_"),
            created_at=created_at(doc.get("created")),
            model=model if isinstance(model, str) and model else self.model,
            status=status,
            output=output,
            usage=responses_usage(doc.get("usage")),
            incomplete_details=details,
        )

    def response(self, doc: Chunk) -> dict[str, Any]:
        """The Response object for a chat completion."""
        return {**self._head(doc, *_choice(doc)), **self.echo()}

    def answer(self, doc: Chunk) -> bytes:
        """`response(doc)`'s JSON: the usual answer written into `_TEXT_ANSWER`, any other serialized."""
        choice, message = _choice(doc)
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        usage = doc.get("usage")
        if not (isinstance(content, str) and content and isinstance(usage, dict)) or (
                isinstance(tool_calls, list) and tool_calls):
            return orjson.dumps(self._head(doc, choice, message))[:-1] + b"," + self._echoed() + b"}"
        status, details = finish_status(choice.get("finish_reason"))
        new_id = self.new_id
        item_id = new_id("msg_")
        model = doc.get("model")
        return _TEXT_ANSWER % (
            orjson.dumps(new_id("resp_")),
            created_at(doc.get("created")),
            _STATUS_JSON[status],
            b"null" if details is None else orjson.dumps(details),
            orjson.dumps(model if isinstance(model, str) and model else self.model),
            orjson.dumps(item_id),
            _STATUS_JSON["completed" if status == "completed" else "incomplete"],
            orjson.dumps(content),
            *usage_counts(usage),
            self._echoed(),
        )

    def encoder(self) -> StreamEncoder:
        return ResponsesEncoder(self.echo(), self.model, self.new_id)


def _choice(doc: Chunk) -> tuple[dict[str, Any], dict[str, Any]]:
    """A chat completion's first choice and its message (empty when it has none)."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    return choice, message if isinstance(message, dict) else {}
