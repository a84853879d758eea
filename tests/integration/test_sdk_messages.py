"""The official anthropic Python client against the gateway's Anthropic Messages ingress, on real sockets.

Messages calls are translated onto chat completions upstream (the demo upstream here), so each answer is
checked against the chat answer of the same conversation. Every refusal must reach the client as the SDK's
own error class, which it picks from the status and Anthropic's error shape.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import pytest
from anthropic.types import Message

from clexproxy.demo.recorder import DemoRecorder

from .conftest import GatewayFactory, RunningGateway

MODEL = "meta/llama-3.3-70b-instruct"  # large: 3 credits
PROMPT = "Hello there!"
HELLO: list[Any] = [{"role": "user", "content": PROMPT}]
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

Connect = Callable[..., anthropic.AsyncAnthropic]


def tiny_png() -> bytes:
    """A valid 1x1 red PNG, built here rather than shipped."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte 0, then one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
async def connect(gw: RunningGateway) -> AsyncIterator[Connect]:
    """Official anthropic clients on the gateway; each is closed when the test ends, while its loop still runs."""
    clients: list[anthropic.AsyncAnthropic] = []

    def factory(target: RunningGateway | None = None, **kwargs: Any) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(base_url=(target or gw).base_url, max_retries=0, **kwargs)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()


async def chat_text(gw: RunningGateway, key: str, messages: list[Any]) -> str:
    """The chat answer the same conversation gets: what a translated Messages call must say too."""
    completion = await gw.client(key).chat.completions.create(model=MODEL, messages=messages, stream=False)
    content = completion.choices[0].message.content
    assert content
    return content


async def test_create_text(gw: RunningGateway, key: str, connect: Connect, recorder: DemoRecorder) -> None:
    client = connect(api_key=key)
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=HELLO, stop_sequences=["zulu"],
        extra_body={"top_k": 5},  # Anthropic's API takes it; this SDK release has no keyword for it
    )
    message = await raw.parse()
    sent = recorder.requests[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert (sent["max_tokens"], sent["stop"], sent["top_k"], sent["stream"]) == (100, ["zulu"], 5, False)
    assert raw.headers["X-Clex-Credits-Remaining"] == "1997"
    assert raw.headers["X-Clex-Credits-Limit"] == "2000"
    expected = await chat_text(gw, key, sent["messages"])
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == expected
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 8)


async def test_max_tokens_reached(gw: RunningGateway, key: str, connect: Connect) -> None:
    message = await connect(api_key=key).messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


async def test_create_stream_events(gw: RunningGateway, key: str, connect: Connect) -> None:
    expected = await chat_text(gw, key, HELLO)
    stream = await connect(api_key=key).messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
    events = [event async for event in stream]
    types = [event.type for event in events]
    pieces = types.count("content_block_delta")  # a read's pieces of text go out as one: at most one per token
    assert 1 <= pieces <= 8
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * pieces,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start" and start.message.role == "assistant" and start.message.content == []
    text = "".join(
        event.delta.text for event in events if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == expected
    delta = events[-2]
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 8


async def test_stream_helper(gw: RunningGateway, key: str, connect: Connect) -> None:
    expected = await chat_text(gw, key, HELLO)
    async with connect(api_key=key).messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == expected
    assert final.content[0].type == "text" and final.content[0].text == expected
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8


async def test_tool_use_round_trip(gw: RunningGateway, key: str, connect: Connect, recorder: DemoRecorder) -> None:
    client = connect(api_key=key)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = await client.messages.create(
        model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL], tool_choice={"type": "auto"}
    )
    sent = recorder.requests[-1].body
    assert sent["tools"] == [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER_TOOL["input_schema"],
        },
    }]
    assert sent["tool_choice"] == "auto"
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "alpha"}
    use = uses[0]
    second = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant",
             "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
        ],
    )
    messages = recorder.requests[-1].body["messages"]
    assert messages[0] == question
    assert messages[1]["role"] == "assistant"
    [call] = messages[1]["tool_calls"]
    assert call["id"] == use.id and call["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": use.id, "content": "Sunny, 21 C"}
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text


async def test_streamed_tool_use(gw: RunningGateway, key: str, connect: Connect) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    async with connect(api_key=key).messages.stream(
        model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL]  # type: ignore[list-item]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    partials = [event.delta.partial_json for event in events
                if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
    assert "".join(partials) == '{"city":"alpha"}'  # the demo upstream's call, sent in fragments
    assert final.stop_reason == "tool_use"
    [use] = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "alpha"}
    assert use.id


async def test_image_block(gw: RunningGateway, key: str, connect: Connect, recorder: DemoRecorder) -> None:
    data = base64.b64encode(tiny_png()).decode()
    message = await connect(api_key=key).messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                {"type": "text", "text": "What colour is this pixel?"},
            ],
        }],
    )
    [sent] = recorder.requests[-1].body["messages"]
    assert sent["role"] == "user"
    assert sent["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": "What colour is this pixel?"},
    ]
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens == 5  # the demo counts the text's words only


async def test_count_tokens(gw: RunningGateway, key: str, connect: Connect, recorder: DemoRecorder) -> None:
    client = connect(api_key=key)
    before = len(recorder.requests)
    short = await client.messages.count_tokens(model=MODEL, messages=HELLO)
    long = await client.messages.count_tokens(
        model=MODEL, system="You are a careful assistant.", tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Tell me, in some detail, about the weather in Paris in spring."}],
    )
    assert isinstance(short.input_tokens, int) and short.input_tokens > 0
    assert long.input_tokens > short.input_tokens
    assert len(recorder.requests) == before  # an estimate: no upstream call


async def test_auth_by_x_api_key_and_by_bearer(gw: RunningGateway, key: str, connect: Connect,
                                               recorder: DemoRecorder) -> None:
    by_api_key = await connect(api_key=key).messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    by_bearer = await connect(auth_token=key).messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert by_api_key.content[0].type == by_bearer.content[0].type == "text"
    assert by_api_key.content[0].text == by_bearer.content[0].text
    for request in recorder.requests[-2:]:  # the client's CLEX key never goes upstream
        assert key not in str(request.headers)


async def test_bad_key_is_authentication_error(gw: RunningGateway, key: str, connect: Connect) -> None:
    for client in (connect(api_key="clex-not-a-key"), connect(auth_token="clex-not-a-key")):
        with pytest.raises(anthropic.AuthenticationError) as info:
            await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        assert info.value.status_code == 401
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "authentication_error" and body["error"]["message"]


async def test_missing_max_tokens_is_bad_request(gw: RunningGateway, key: str, connect: Connect,
                                                 recorder: DemoRecorder) -> None:
    client = connect(api_key=key)
    before = len(recorder.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        # The SDK's own create() insists on max_tokens; its generic post sends what we give it.
        await client.post("/v1/messages", body={"model": MODEL, "messages": HELLO}, cast_to=Message)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]
    assert info.value.response.headers["X-Clex-Credits-Remaining"] == "2000"
    assert len(recorder.requests) == before


async def test_unknown_model_is_not_found(gw: RunningGateway, key: str, connect: Connect) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await connect(api_key=key).messages.create(model="acme/no-such-model", max_tokens=100, messages=HELLO)
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"
    assert "acme/no-such-model" in body["error"]["message"]


async def test_exhausted_credits_are_rate_limit_error(make_gateway: GatewayFactory, connect: Connect) -> None:
    tight = await make_gateway(config="[plans.tiny]\ncredits_per_day = 4\nrequests_per_minute = 100\nmax_keys = 1\n")
    key = await tight.add_key("thrifty", "tiny")
    client = connect(tight, api_key=key)
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert raw.headers["X-Clex-Credits-Remaining"] == "1"
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert int(info.value.response.headers["retry-after"]) > 0
    assert info.value.response.headers["X-Clex-Credits-Remaining"] == "1"


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failure_is_internal_server_error(gw: RunningGateway, key: str, connect: Connect,
                                                         stream: bool) -> None:
    client = connect(api_key=key, default_headers={"x-demo-status": "500"})
    with pytest.raises(anthropic.InternalServerError) as info:
        if stream:
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as events:
                await events.get_final_message()
        else:
            await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert info.value.response.headers["X-Clex-Credits-Remaining"] == "2000"  # refunded
