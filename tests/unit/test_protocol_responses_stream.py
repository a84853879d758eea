"""Golden tests of `ResponsesEncoder`: chat chunk sequences to the exact Responses event lists.

Every event is also parsed by the openai SDK's `ResponseStreamEvent` union and fed to the SDK's own
stream accumulator (`ResponseStreamState`, what `client.responses.stream` runs), which checks the
order, the output indexes and item ids, and builds the final response.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from clexproxy.errors import RateLimited, ServiceUnavailable
from clexproxy.protocols.responses import translate
from clexproxy.protocols.responses_stream import ResponsesEncoder

MODEL = "meta/llama-3.3-70b-instruct"
CREATED = 1_700_000_000
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def encoder(body: dict[str, Any] | None = None) -> ResponsesEncoder:
    call = translate(body or {"model": MODEL, "input": "hi", "stream": True})
    numbers = itertools.count()
    call.new_id = lambda prefix: f"{prefix}{next(numbers)}"
    made = call.encoder()
    assert isinstance(made, ResponsesEncoder)
    return made


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, **more: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
            "choices": choices, **more}


USAGE_CHUNK = chunk(usage={"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
USAGE = {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
         "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}
ECHO: dict[str, Any] = {
        "instructions": None, "metadata": {}, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
        "max_output_tokens": None, "text": {"format": {"type": "text"}}, "reasoning": {"effort": None, "summary": None},
        "truncation": "disabled", "store": False, "background": False, "previous_response_id": None, "user": None,
        "temperature": None, "top_p": None}


def run(made: ResponsesEncoder, chunks: list[dict[str, Any]], last: bytes | None = None) -> list[dict[str, Any]]:
    """The events the chunks and `end()` (or `last`) give, checked: SSE framing, SDK types, SDK accumulation."""
    raw = b"".join(made.chunk(c) for c in chunks) + (made.end() if last is None else last)
    assert raw.endswith(b"\n\n")
    out = []
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for block in raw[:-2].split(b"\n\n"):
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = orjson.loads(data[6:])
        assert event["type"] == name[7:].decode()
        state.handle_event(EVENTS.validate_python(event))
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def response(status: str, output: list[dict[str, Any]], usage: Any = None, **more: Any) -> dict[str, Any]:
    return {"id": "resp_0", "object": "response", "created_at": CREATED, "status": status, "error": None,
            "incomplete_details": None, "model": MODEL, "output": output, "usage": usage, **ECHO, **more}


def opening() -> list[dict[str, Any]]:
    return [
        {"type": "response.created", "sequence_number": 0, "response": response("in_progress", [])},
        {"type": "response.in_progress", "sequence_number": 1, "response": response("in_progress", [])},
    ]


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "status": status, "role": "assistant", "content": content}


def test_text_stream() -> None:
    events = run(encoder(), [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}),
                             chunk({"content": " there."}), chunk({}, "stop"), USAGE_CHUNK])
    done = message("completed", [text_part("Hello there.")])
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    assert events == [
        *opening(),
        {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
         "item": message("in_progress", [])},
        {"type": "response.content_part.added", "sequence_number": 3, **at, "part": text_part("")},
        {"type": "response.output_text.delta", "sequence_number": 4, **at, "delta": "Hello", "logprobs": []},
        {"type": "response.output_text.delta", "sequence_number": 5, **at, "delta": " there.", "logprobs": []},
        {"type": "response.output_text.done", "sequence_number": 6, **at, "text": "Hello there.", "logprobs": []},
        {"type": "response.content_part.done", "sequence_number": 7, **at, "part": text_part("Hello there.")},
        {"type": "response.output_item.done", "sequence_number": 8, "output_index": 0, "item": done},
        {"type": "response.completed", "sequence_number": 9, "response": response("completed", [done], USAGE)},
    ]


def call_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        delta.update(id=call_id, type="function")
        delta["function"]["name"] = name
    return {"tool_calls": [delta]}


def call_item(item_id: str, call_id: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": "get_weather",
            "arguments": arguments}


def test_two_parallel_tool_calls_interleaved() -> None:
    events = run(encoder(), [
        chunk({"role": "assistant", "content": None}),
        chunk(call_delta(0, "", "call_a", "get_weather")),
        chunk(call_delta(0, "{\"city\":")),
        chunk(call_delta(1, "{\"city\":", "call_b", "get_weather")),
        chunk(call_delta(0, "\"Paris\"}")),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "\"Rome\"}"}}]}, "tool_calls"),
        USAGE_CHUNK,
    ])
    paris = call_item("fc_1", "call_a", "{\"city\":\"Paris\"}", "completed")
    rome = call_item("fc_2", "call_b", "{\"city\":\"Rome\"}", "completed")
    assert events == [
        *opening(),
        {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
         "item": call_item("fc_1", "call_a", "", "in_progress")},
        {"type": "response.function_call_arguments.delta", "sequence_number": 3, "item_id": "fc_1",
         "output_index": 0, "delta": "{\"city\":"},
        {"type": "response.output_item.added", "sequence_number": 4, "output_index": 1,
         "item": call_item("fc_2", "call_b", "", "in_progress")},
        {"type": "response.function_call_arguments.delta", "sequence_number": 5, "item_id": "fc_2",
         "output_index": 1, "delta": "{\"city\":"},
        {"type": "response.function_call_arguments.delta", "sequence_number": 6, "item_id": "fc_1",
         "output_index": 0, "delta": "\"Paris\"}"},
        {"type": "response.function_call_arguments.delta", "sequence_number": 7, "item_id": "fc_2",
         "output_index": 1, "delta": "\"Rome\"}"},
        {"type": "response.function_call_arguments.done", "sequence_number": 8, "item_id": "fc_1",
         "output_index": 0, "arguments": "{\"city\":\"Paris\"}"},
        {"type": "response.output_item.done", "sequence_number": 9, "output_index": 0, "item": paris},
        {"type": "response.function_call_arguments.done", "sequence_number": 10, "item_id": "fc_2",
         "output_index": 1, "arguments": "{\"city\":\"Rome\"}"},
        {"type": "response.output_item.done", "sequence_number": 11, "output_index": 1, "item": rome},
        {"type": "response.completed", "sequence_number": 12,
         "response": response("completed", [paris, rome], USAGE)},
    ]


def test_text_then_a_tool_call_final_response() -> None:
    state_events = run(encoder(), [chunk({"content": "Checking."}), chunk(call_delta(0, "{}", "call_a", "get_weather")),
                                   chunk({}, "tool_calls"), USAGE_CHUNK])
    final = state_events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert [e["type"] for e in state_events[2:]] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]


def test_cut_by_max_output_tokens() -> None:
    made = encoder({"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 3})
    events = run(made, [chunk({"content": "Once upon a"}, "length"), USAGE_CHUNK])
    done = message("incomplete", [text_part("Once upon a")])
    assert events[-2] == {"type": "response.output_item.done", "sequence_number": 7, "output_index": 0, "item": done}
    assert events[-1] == {
        "type": "response.completed", "sequence_number": 8,
        "response": response("incomplete", [done], USAGE, incomplete_details={"reason": "max_output_tokens"},
                             max_output_tokens=3),
    }


def test_failure_after_text() -> None:
    made = encoder()
    failure = made.chunk(chunk({"content": "Hel"}))
    error = ServiceUnavailable("The provider for model 'm' failed mid-stream.", error_type="upstream_error")
    events = run(made, [], last=failure + made.error(error))
    assert events[-1] == {
        "type": "response.failed", "sequence_number": 5,
        "response": response("failed", [message("incomplete", [text_part("Hel")])],
                             error={"code": "server_error", "message": "The provider for model 'm' failed mid-stream.",
                                    "type": "upstream_error"}),
    }
    assert made.chunk(chunk({"content": "lo"})) == b"" and made.end() == b"" and made.error(error) == b""


def test_failure_before_any_chunk_opens_the_response_first() -> None:
    made = encoder()
    raw = made.error(RateLimited("Daily credits exhausted.", limit="daily_credits", retry_after=60.0))
    events = [orjson.loads(block.split(b"\n")[1][6:]) for block in raw[:-2].split(b"\n\n")]
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[2]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "Daily credits exhausted.",
                                              "type": "rate_limit_error"}
    for event in events:
        EVENTS.validate_python(event)


def test_an_empty_answer_still_completes() -> None:
    events = run(encoder(), [chunk({"role": "assistant"}, "stop"), USAGE_CHUNK])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert events[-1]["response"]["output"] == [] and events[-1]["response"]["usage"] == USAGE


def test_end_without_chunks() -> None:
    events = run(encoder(), [])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert events[0]["response"]["created_at"] > 0 and events[-1]["response"]["usage"] is None
