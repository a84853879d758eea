"""The translated JSON answers' two ways to their bytes, and the usual requests' shortcuts through `translate`.

`ResponsesCall.answer` and `MessagesCall.answer` write the usual answer into a template and serialize
any other; both must be the bytes of the object's JSON (`response(doc)`, the one Response object the
stream's last event carries too; `message(doc)`). And a Responses request of `PLAIN_FIELDS` only, or
a Messages turn of one string, must translate exactly as the long way would.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson
from anthropic.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response

from clexproxy.protocols import messages
from clexproxy.protocols.messages_stream import MessagesEncoder
from clexproxy.protocols.messages_stream import usage as messages_usage
from clexproxy.protocols.responses import translate
from clexproxy.protocols.responses_answer import PLAIN_ECHO, ResponsesCall


def counter_ids() -> Any:
    numbers = itertools.count()
    return lambda prefix: f"{prefix}{next(numbers)}"


TEXT = st.text(max_size=40)  # any code point: the template's text must be escaped as orjson escapes it
COUNT = st.one_of(st.integers(min_value=-5, max_value=2**64 - 1), st.none(), st.booleans(), st.floats(allow_nan=False),
                  st.text(max_size=3))
USAGE = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.fixed_dictionaries({}, optional={
        "prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": COUNT,
        "prompt_tokens_details": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"cached_tokens": COUNT})),
        "completion_tokens_details": st.one_of(st.none(), st.lists(COUNT, max_size=1),
                                               st.fixed_dictionaries({}, optional={"reasoning_tokens": COUNT})),
    }),
)
TOOL_CALL = st.one_of(st.none(), TEXT, st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.none(), TEXT),
    "function": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"name": TEXT, "arguments": TEXT})),
}))
MESSAGE = st.one_of(st.none(), TEXT, st.fixed_dictionaries({}, optional={
    "role": st.just("assistant"),
    "content": st.one_of(st.none(), TEXT, st.just(""), st.integers()),
    "tool_calls": st.one_of(st.none(), TEXT, st.lists(TOOL_CALL, max_size=3)),
}))
CHOICE = st.fixed_dictionaries({}, optional={
    "message": MESSAGE,
    "finish_reason": st.sampled_from([None, "stop", "length", "content_filter", "tool_calls", 7]),
})
ANY_DOC = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.none(), TEXT, st.integers()),
    "created": st.one_of(st.none(), st.integers(min_value=-2, max_value=2**64 - 1), st.floats(allow_nan=False),
                         st.booleans()),
    "choices": st.one_of(st.none(), TEXT, st.lists(st.one_of(CHOICE, st.integers()), max_size=2)),
    "usage": USAGE,
})
# The answers that take the template: text, counted usage, and no tool call (or an empty list of them).
USUAL_DOC = st.fixed_dictionaries({
    "choices": st.tuples(st.fixed_dictionaries({"message": st.fixed_dictionaries(
        {"content": st.text(min_size=1, max_size=40)},
        optional={"role": st.just("assistant"), "tool_calls": st.one_of(st.none(), st.just([]), TEXT)})},
        optional={"finish_reason": st.sampled_from([None, "stop", "length", "content_filter"])})).map(list),
    "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": COUNT, "completion_tokens": COUNT,
                                                 "total_tokens": COUNT}),
}, optional={"model": st.one_of(st.none(), TEXT), "created": st.integers(min_value=1, max_value=2**63 - 1)})
DOC = st.one_of(USUAL_DOC, ANY_DOC)
REQUEST = st.sampled_from([
    {"model": "m", "input": "hi"},
    {"model": "m", "input": "hi", "instructions": "Be brief.", "metadata": {"k": "\u2028"}, "max_output_tokens": 9,
     "temperature": 0.5, "top_p": 1, "user": "u\x00"},
    {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
     "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low"}},
])


@settings(max_examples=400, deadline=None)
@given(doc=DOC, request=REQUEST, fixed_time=st.booleans(), sampled=st.booleans())
def test_the_answer_is_the_response_objects_json(doc: dict[str, Any], request: dict[str, Any], fixed_time: bool,
                                                 sampled: bool) -> None:
    if not fixed_time:
        doc["created"] = 1_700_000_000  # an answer without its time takes now's: the two would differ by a second
    elif not (isinstance(doc.get("created"), (int, float)) and not isinstance(doc["created"], bool)
              and 0 < doc["created"] < 2**63):
        doc["created"] = 1_700_000_001
    written, built = translate(request), translate(request)
    assert isinstance(written, ResponsesCall) and isinstance(built, ResponsesCall)
    written.new_id, built.new_id = counter_ids(), counter_ids()
    if sampled:
        written.body["temperature"] = built.body["temperature"] = 0.25  # as the handler's SPEC defaults add it
    assert written.answer(doc) == orjson.dumps(built.response(doc))


def test_the_usual_answer_is_an_sdk_response() -> None:
    doc = {"created": 5, "model": "meta/x", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
           "choices": [{"message": {"content": "He said \"hi\"\n\u2028"}, "finish_reason": "length"}]}
    written, built = translate({"model": "m", "input": "hi"}), translate({"model": "m", "input": "hi"})
    assert isinstance(written, ResponsesCall) and isinstance(built, ResponsesCall)
    written.new_id, built.new_id = counter_ids(), counter_ids()
    assert written.answer(doc) == orjson.dumps(built.response(doc))
    response = Response.model_validate_json(translate({"model": "m", "input": "hi"}).answer(doc))
    assert response.output_text == "He said \"hi\"\n\u2028" and response.status == "incomplete"
    assert response.usage is not None and response.usage.total_tokens == 5


def test_the_usual_answer_with_drawn_ids() -> None:
    """The default ids come from one draw for both: each its own 32 hex digits, as the factory's would be."""
    doc = {"created": 9, "usage": {"prompt_tokens": 1}, "choices": [{"message": {"content": "x"}}]}
    written, built = translate({"model": "m", "input": "hi"}), translate({"model": "m", "input": "hi"})
    assert isinstance(written, ResponsesCall) and isinstance(built, ResponsesCall)
    answers = [written.answer(doc) for _ in range(50)]
    ids = [(sent["id"], sent["output"][0]["id"]) for sent in map(orjson.loads, answers)]
    assert all(re.fullmatch("resp_[0-9a-f]{32}", r) and re.fullmatch("msg_[0-9a-f]{32}", m) for r, m in ids)
    assert len({digits for pair in ids for digits in (pair[0][5:], pair[1][4:])}) == 100
    response_id, item_id = ids[0]
    built.new_id = {"resp_": response_id, "msg_": item_id}.__getitem__
    assert answers[0] == orjson.dumps(built.response(doc))


PLAIN = [
    {"model": "m", "input": "hi"},
    {"model": "m", "input": "hi", "stream": True, "store": True},
    {"model": "m", "input": [{"role": "developer", "content": "x"}, {"role": "user", "content": [
        {"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "data:,"}]}], "stream": False},
]


def test_a_plain_request_translates_as_the_long_way_does() -> None:
    for body in PLAIN:
        short, long = translate(orjson.loads(orjson.dumps(body))), translate({**body, "metadata": None})
        assert isinstance(short, ResponsesCall) and isinstance(long, ResponsesCall)
        assert (short.model, short.stream, short.body, short.echo()) == (long.model, long.stream, long.body,
                                                                          long.echo())
        short.new_id, long.new_id = counter_ids(), counter_ids()
        doc = {"created": 1, "choices": [{"message": {"content": "x"}}], "usage": {}}
        assert short.answer(doc) == long.answer(doc)


def test_the_shared_echo_is_never_changed_by_a_call() -> None:
    before = orjson.dumps(PLAIN_ECHO)
    call = translate({"model": "m", "input": "hi", "stream": True})
    assert isinstance(call, ResponsesCall)
    encoder = call.encoder()
    encoder.chunk({"choices": [{"delta": {"content": "a"}}]})
    encoder.chunk({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}})
    encoder.end()
    call.answer({"choices": [{"message": {"content": "a"}}], "usage": {}})
    assert orjson.dumps(PLAIN_ECHO) == before


@settings(max_examples=300, deadline=None)
@given(doc=DOC)
def test_the_messages_answer_is_the_message_objects_json(doc: dict[str, Any]) -> None:
    call = messages.translate({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})
    written = call.answer(doc)
    built = call.message(doc)
    sent = orjson.loads(written)
    built["id"] = sent["id"]  # ids are drawn at random: the written one stands in for the object's own
    for block, sent_block in zip(built["content"], sent["content"], strict=True):
        if block["type"] == "tool_use":
            block["id"] = sent_block["id"]
    assert written == orjson.dumps(built)


def test_a_messages_answer_of_text_is_the_sdks_message() -> None:
    call = messages.translate({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})
    doc = {"model": "meta/x", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
           "choices": [{"message": {"content": "a \"quote\"\u2028"}, "finish_reason": "length"}]}
    message = Message.model_validate_json(call.answer(doc))
    assert message.content[0].type == "text" and message.content[0].text == "a \"quote\"\u2028"
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("max_tokens", 3, 2)


STRING_TURNS = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXT}),
                        min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(turns=STRING_TURNS)
def test_a_turn_of_one_string_translates_as_its_one_text_block(turns: list[dict[str, Any]]) -> None:
    as_blocks = [{**turn, "content": [{"type": "text", "text": turn["content"]}]} for turn in turns]
    short = messages.translate({"model": "m", "max_tokens": 9, "messages": turns})
    long = messages.translate({"model": "m", "max_tokens": 9, "messages": as_blocks})
    assert short.body == long.body


def test_a_streams_last_response_is_the_json_answers() -> None:
    request = {"model": "m", "input": "hi", "instructions": "Be brief.", "temperature": 0.5}
    doc = {"created": 7, "model": "meta/x", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
           "choices": [{"message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}]}
    answered = orjson.loads(translate(request).answer(doc))
    call = translate({**request, "stream": True})
    encoder = call.encoder()
    sent = encoder.chunk({"created": 7, "model": "meta/x", "choices": [{"delta": {"role": "assistant",
                                                                                 "content": "Hello there."}}]})
    sent += encoder.chunk({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": doc["usage"]})
    sent += encoder.end()
    events = [orjson.loads(line[6:]) for line in sent.split(b"\n") if line.startswith(b"data: ")]
    streamed = events[-1]["response"]
    assert events[-1]["type"] == "response.completed" and events[0]["response"]["status"] == "in_progress"
    for response in (answered, streamed):
        response["id"] = response["output"][0]["id"] = "-"
    assert streamed == answered


def test_a_messages_answer_counts_out_of_range_usage_as_zero() -> None:
    """An upstream's negative count, or one past what JSON holds exactly, is its error: the answer says 0, not a 500."""
    bad = {"prompt_tokens": -5, "completion_tokens": 2**70}
    call = messages.translate({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})
    message = Message.model_validate_json(call.answer({"usage": bad, "choices": [{"message": {"content": "a"}}]}))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)
    encoder = MessagesEncoder("m")
    events = encoder.chunk({"choices": [{"delta": {"content": "a"}}], "usage": bad}) + encoder.end()
    last_delta = [line for line in events.split(b"\n") if b'"message_delta"' in line and line.startswith(b"data:")]
    assert orjson.loads(last_delta[-1][5:])["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert messages_usage({"prompt_tokens": 2**53 - 1, "completion_tokens": True}) == (2**53 - 1, 0)
