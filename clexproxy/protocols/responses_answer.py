"""A Responses call once translated (`ResponsesCall`): the `Response` object for its chat completion, and its JSON.

Why a template: every JSON Responses call pays for its answer, and the usual one (one text message,
its usage counted) is the same bytes around a few values. `ResponsesCall.answer` writes those into
`_TEXT_ANSWER`, which is the bytes `orjson.dumps(call.response(doc))` gives, key for key (a test holds
the two equal on generated answers); the dicts are built only for the rest (tool calls, no text, no
usage). The echo, the request fields every response repeats, is serialized once per call, and the
usual request's (`PLAIN_ECHO`) once per process.
"""

from __future__ import annotations

from typing import Any

import orjson

from clexproxy.protocols.chunks import Chunk, StreamEncoder, first_choice, random_hex
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
PLAIN_ECHOED = orjson.dumps(PLAIN_ECHO)[1:-1]  # the inside of its JSON object, as the answers join it

# `response_head`'s fields with one `message_item` as the output and `responses_usage`'s usage, then the
# echoed fields and the sampling (`echo()`): the usual answer's bytes.
_TEXT_ANSWER = (
    b'{"id":%s,"object":"response","created_at":%d,"status":%s,"error":null,"incomplete_details":%s,"model":%s,'
    b'"output":[{"id":%s,"type":"message","status":%s,"role":"assistant","content":[{"type":"output_text",'
    b'"text":%s,"annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":%d,"input_tokens_details":'
    b'{"cached_tokens":%d,"cache_write_tokens":0},"output_tokens":%d,"output_tokens_details":'
    b'{"reasoning_tokens":%d},"total_tokens":%d},%s,"temperature":%s,"top_p":%s}'
)
# Any other answer: `response_head`'s JSON without its closing brace, then as above.
_ANY_ANSWER = b'%s,%s,"temperature":%s,"top_p":%s}'
_ECHOED = b'%s,"temperature":%s,"top_p":%s'  # `echo()`'s JSON object's inside, as a stream's responses end
_STATUS_JSON = {"completed": b'"completed"', "incomplete": b'"incomplete"'}


class ResponsesCall:
    """One Responses call put onto chat completions (a `Translation`)."""

    __slots__ = ("_echo", "_echo_inside", "body", "model", "new_id", "stream")

    def __init__(self, model: str, stream: bool, body: dict[str, Any], echo: dict[str, Any],
                 new_id: IdFactory = random_id, echo_inside: bytes | None = None) -> None:
        self.model = model
        self.stream = stream
        self.body = body
        self._echo = echo
        self._echo_inside = echo_inside  # `echo`'s JSON object's inside, when made before (a shared echo's, once)
        self.new_id = new_id  # ids of the response and its items (tests give a counter)

    def _sampling(self) -> dict[str, Any]:
        """The response's sampling fields, as sent upstream (the handler may have added SPEC's defaults)."""
        body = self.body
        return {"temperature": body.get("temperature"), "top_p": body.get("top_p")}

    def echo(self) -> dict[str, Any]:
        """The request fields the response repeats, its sampling last."""
        return {**self._echo, **self._sampling()}

    def _echoed(self) -> bytes:
        """The inside of the echo's JSON object (without its braces), made once per call."""
        echo = self._echo_inside
        if echo is None:
            echo = self._echo_inside = orjson.dumps(self._echo)[1:-1]
        return echo

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
        return {**self._head(doc, *first_choice(doc)), **self.echo()}

    def answer(self, doc: Chunk) -> bytes:
        """`response(doc)`'s JSON: the usual answer written into `_TEXT_ANSWER`, any other serialized."""
        choice, message = first_choice(doc)
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        usage = doc.get("usage")
        body = self.body
        temperature, top_p = orjson.dumps(body.get("temperature")), orjson.dumps(body.get("top_p"))
        if not (isinstance(content, str) and content and isinstance(usage, dict)) or (
                isinstance(tool_calls, list) and tool_calls):
            head = orjson.dumps(self._head(doc, choice, message))[:-1]
            return _ANY_ANSWER % (head, self._echoed(), temperature, top_p)
        status, details = finish_status(choice.get("finish_reason"))
        new_id = self.new_id
        if new_id is random_id:  # the default ids, both from one draw
            digits = random_hex(64)
            item_id, response_id = "msg_" + digits[:32], "resp_" + digits[32:]
        else:
            item_id, response_id = new_id("msg_"), new_id("resp_")
        created = doc.get("created")
        if type(created) is not int or not 0 < created < 2**63:
            created = created_at(created)
        model = doc.get("model")
        return _TEXT_ANSWER % (
            orjson.dumps(response_id),
            created,
            _STATUS_JSON[status],
            b"null" if details is None else orjson.dumps(details),
            orjson.dumps(model if isinstance(model, str) and model else self.model),
            orjson.dumps(item_id),
            _STATUS_JSON["completed" if status == "completed" else "incomplete"],
            orjson.dumps(content),
            *usage_counts(usage),
            self._echoed(),
            temperature,
            top_p,
        )

    def encoder(self) -> StreamEncoder:
        body = self.body
        echoed = _ECHOED % (self._echoed(), orjson.dumps(body.get("temperature")), orjson.dumps(body.get("top_p")))
        return ResponsesEncoder(echoed, self.model, self.new_id)

