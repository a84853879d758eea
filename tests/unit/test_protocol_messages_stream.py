"""Golden tests of `MessagesEncoder`: chat chunk sequences → Anthropic's exact SSE bytes (text; text then a tool
call; two tool calls; an error), each event checked against the anthropic SDK's `RawMessageStreamEvent` union, and
the SDK's own `messages.stream()` accumulator rebuilding the message from the bytes, served on a loopback socket.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from clexproxy.errors import InternalError, ServiceUnavailable
from clexproxy.protocols.messages import translate
from clexproxy.protocols.messages_stream import MessagesEncoder

MODEL = "meta/llama-3.1-8b-instruct"
EVENT = TypeAdapter(RawMessageStreamEvent)
MSG_ID = re.compile(rb'"id":"msg_[0-9a-f]{24}"')


def delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def call(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    item: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        item.update(id=call_id, type="function")
    return item


def encode(chunks: list[dict[str, Any]], end: bool = True) -> tuple[MessagesEncoder, bytes]:
    encoder = translate({"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}],
                         "stream": True}).encoder()
    out = b"".join(encoder.chunk(chunk) for chunk in chunks)
    return encoder, out + (encoder.end() if end else b"")


def fixed(raw: bytes) -> bytes:
    """The bytes with the random message id replaced, each event validated by the SDK's event union."""
    for frame in raw.split(b"\n\n")[:-1]:
        name, data = frame.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = orjson.loads(data[6:])
        assert event["type"] == name[7:].decode()
        if event["type"] not in ("ping", "error"):  # the SDK skips these two: not in its union
            EVENT.validate_python(event)
    assert raw.endswith(b"\n\n")
    return MSG_ID.sub(b'"id":"msg_X"', raw)


START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_X","type":"message",'
         b'"role":"assistant","model":"meta/llama-3.1-8b-instruct","content":[],"stop_reason":null,'
         b'"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}\n\n'
         b'event: ping\ndata: {"type":"ping"}\n\n')
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def end(stop: str, prompt: int, completion: int) -> bytes:
    return (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"' + stop.encode()
            + b'","stop_sequence":null},"usage":{"input_tokens":' + str(prompt).encode() + b',"output_tokens":'
            + str(completion).encode() + b"}}\n\n" + STOP)


def text_start(index: int) -> bytes:
    return (b'event: content_block_start\ndata: {"type":"content_block_start","index":' + str(index).encode()
            + b',"content_block":{"type":"text","text":""}}\n\n')


def text_delta(index: int, text: str) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(index).encode()
            + b',"delta":{"type":"text_delta","text":' + orjson.dumps(text) + b"}}\n\n")


def tool_start(index: int, call_id: str, name: str) -> bytes:
    return (b'event: content_block_start\ndata: {"type":"content_block_start","index":' + str(index).encode()
            + b',"content_block":{"type":"tool_use","id":"' + call_id.encode() + b'","name":"' + name.encode()
            + b'","input":{}}}\n\n')


def json_delta(index: int, partial: str) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(index).encode()
            + b',"delta":{"type":"input_json_delta","partial_json":' + orjson.dumps(partial) + b"}}\n\n")


def block_stop(index: int) -> bytes:
    return (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":' + str(index).encode()
            + b"}\n\n")


TEXT_CHUNKS = [delta({"role": "assistant", "content": ""}), delta({"content": "Hello"}),
               delta({"content": " \"world\"\n"}), delta({}, "stop"), usage_chunk(9, 3)]
TEXT_BYTES = (START + text_start(0) + text_delta(0, "Hello") + text_delta(0, ' "world"\n') + block_stop(0)
              + end("end_turn", 9, 3))

TOOL_CHUNKS = [delta({"role": "assistant", "content": "Checking."}),
               delta({"tool_calls": [call(0, "call_a", "get_weather")]}),
               delta({"tool_calls": [call(0, arguments='{"city":')]}),
               delta({"tool_calls": [call(0, arguments=' "Paris"}')]}),
               delta({}, "tool_calls"), usage_chunk(20, 11)]
TOOL_BYTES = (START + text_start(0) + text_delta(0, "Checking.") + block_stop(0)
              + tool_start(1, "call_a", "get_weather") + json_delta(1, '{"city":') + json_delta(1, ' "Paris"}')
              + block_stop(1) + end("tool_use", 20, 11))

TWO_TOOLS_CHUNKS = [delta({"role": "assistant", "tool_calls": [call(0, "call_a", "get_weather", '{"city":"Paris"}')]}),
                    delta({"tool_calls": [call(1, "call_b", "get_time", "")]}),
                    delta({"tool_calls": [call(1, arguments='{"tz":"CET"}')]}, "tool_calls"),
                    usage_chunk(30, 22)]
TWO_TOOLS_BYTES = (START + tool_start(0, "call_a", "get_weather") + json_delta(0, '{"city":"Paris"}') + block_stop(0)
                   + tool_start(1, "call_b", "get_time") + json_delta(1, '{"tz":"CET"}') + block_stop(1)
                   + end("tool_use", 30, 22))


@pytest.mark.parametrize(("chunks", "expected"), [(TEXT_CHUNKS, TEXT_BYTES), (TOOL_CHUNKS, TOOL_BYTES),
                                                  (TWO_TOOLS_CHUNKS, TWO_TOOLS_BYTES)], ids=["text", "tool", "two"])
def test_chunks_to_exact_events(chunks: list[dict[str, Any]], expected: bytes) -> None:
    _, raw = encode(chunks)
    assert fixed(raw) == expected


def test_text_after_a_tool_call_opens_a_new_block_and_length_is_max_tokens() -> None:
    chunks = [delta({"tool_calls": [call(0, "call_a", "f", "{}")]}), delta({"content": "and"}),
              delta({"content": " more"}, "length")]
    _, raw = encode(chunks)
    assert fixed(raw) == (START + tool_start(0, "call_a", "f") + json_delta(0, "{}") + block_stop(0) + text_start(1)
                          + text_delta(1, "and") + text_delta(1, " more") + block_stop(1) + end("max_tokens", 0, 0))


def test_an_empty_stream_still_ends_like_a_message() -> None:
    encoder = MessagesEncoder(MODEL)
    assert fixed(encoder.end()) == START + end("end_turn", 0, 0)


def test_a_tool_call_without_an_id_gets_one() -> None:
    _, raw = encode([delta({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]})])
    assert re.search(rb'"content_block":\{"type":"tool_use","id":"toolu_[0-9a-f]{24}","name":"f","input":\{\}\}', raw)


def test_error_after_the_start() -> None:
    encoder, raw = encode(TEXT_CHUNKS[:2], end=False)
    raw += encoder.error(ServiceUnavailable("The model is overloaded; try again."))
    assert fixed(raw) == (START + text_start(0) + text_delta(0, "Hello")
                          + b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                            b'"message":"The model is overloaded; try again."}}\n\n')
    assert encoder.error(InternalError("x")) == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n')


# --- the anthropic SDK's own stream accumulator, fed these bytes over a loopback socket ---------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """A loopback server answering each POST /v1/messages with the next canned SSE body; yields a setter."""
    bodies: list[bytes] = []

    async def messages(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=bodies.pop(0), content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="test", max_retries=0)
    try:
        yield client, bodies
    finally:
        await client.close()
        await runner.cleanup()


async def test_sdk_rebuilds_text_and_tool_calls(serve: Any) -> None:
    client, bodies = serve
    bodies.append(encode(TOOL_CHUNKS)[1])
    async with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as s:
        texts = [text async for text in s.text_stream]
        message = await s.get_final_message()
    assert texts == ["Checking."]
    content = [block.model_dump(exclude_none=True) for block in message.content]
    assert content == [{"type": "text", "text": "Checking."},
                       {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}}]
    assert (message.model, message.stop_reason, message.stop_sequence) == (MODEL, "tool_use", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 11)


async def test_sdk_rebuilds_two_tool_calls(serve: Any) -> None:
    client, bodies = serve
    bodies.append(encode(TWO_TOOLS_CHUNKS)[1])
    async with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as s:
        message = await s.get_final_message()
    assert [(block.type, getattr(block, "input", None)) for block in message.content] == [
        ("tool_use", {"city": "Paris"}), ("tool_use", {"tz": "CET"})]


async def test_sdk_raises_its_own_error_on_an_error_event(serve: Any) -> None:
    client, bodies = serve
    encoder, raw = encode(TEXT_CHUNKS[:2], end=False)
    bodies.append(raw + encoder.error(ServiceUnavailable("The model is overloaded; try again.")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model=MODEL, max_tokens=50,
                                          messages=[{"role": "user", "content": "Hi"}]) as s:
            await s.get_final_message()
    assert "overloaded" in str(caught.value)
