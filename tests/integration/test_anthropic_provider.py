"""Chat completions through a ``format = "anthropic"`` provider: the official openai client against the gateway,
whose catalog puts a model on the demo upstream's Anthropic Messages API (``/v1/messages``).

What must hold end to end: the provider is asked in its own wire format (``x-api-key``, ``anthropic-version``, no
``Authorization``, the system text split out, ``max_tokens`` always set), the client gets chat completions back
(JSON and stream, tool calls both ways), usage is metered from Anthropic's counts (credits, the access line's
tokens), and the provider's errors are mapped: a 400 is the client's 400, ``overloaded_error`` (529) goes to the
fallback model and, with none, is SPEC's 503.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from clexproxy.demo.upstream import DemoServer

from .conftest import GatewayFactory
from .providers import BACKUP, PROMPT, ProviderUnderTest, access_lines

MODEL = "clex/claude"
UPSTREAM = "claude-upstream"
SECRET = "sk-ant-SECRET-provider-credential"
PROVIDER = ProviderUnderTest("claude", "anthropic", "ANTHROPIC_TEST_KEY", SECRET, MODEL, UPSTREAM)
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


pytestmark = pytest.mark.usefixtures("access_enabled")  # the access lines at INFO, the level `serve` sets


async def test_json_answer_in_the_providers_wire_format_and_metered(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT, stream=False)
    completion = raw.parse()
    assert completion.model == MODEL and completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.content
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 8)
    assert raw.headers["X-Clex-Credits-Remaining"] == "1998"  # pro: 2,000 a day; standard: 2

    sent = upstream.recorder.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {name.lower() for name in sent.headers}
    assert sent.body == {
        "model": UPSTREAM, "max_tokens": 4096, "messages": [{"role": "user", "content": "hello there world"}],
        "system": [{"type": "text", "text": "be brief"}], "temperature": 0.7, "stream": False,
    }
    (line,) = await access_lines(gw, access, 1)
    assert line["status"] == 200 and line["prompt_tokens"] == 5 and line["completion_tokens"] == 8


async def test_stream_is_chat_chunks_with_usage(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    whole = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=False)
    stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert all(chunk.model == MODEL for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 8)
    assert upstream.recorder.requests[-1].body["stream"] is True

    quiet = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
    assert all(chunk.usage is None for chunk in [c async for c in quiet])  # usage only when asked for
    lines = await access_lines(gw, access, 3)
    assert [(line["prompt_tokens"], line["completion_tokens"]) for line in lines] == [(5, 8)] * 3


async def test_a_tool_call_round_trip(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    asked: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER_TOOL], stream=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(orjson.loads(call.function.arguments)) == {"city"}

    stream = await client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER_TOOL], stream=True)
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    streamed = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert streamed[0].id and streamed[0].function and streamed[0].function.name == "get_weather"
    assert "".join(s.function.arguments or "" for s in streamed if s.function) == call.function.arguments

    answered = [*asked, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = await client.chat.completions.create(model=MODEL, messages=answered, tools=[WEATHER_TOOL], stream=False)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    sent = upstream.recorder.requests[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": orjson.loads(call.function.arguments)}]}
    assert sent[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}


async def test_a_field_the_provider_cannot_honour_is_a_400_before_any_call(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    before = len(upstream.recorder.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=PROMPT, n=2, stream=False)
    assert caught.value.body is not None and "'n' is not supported" in str(caught.value.body)
    assert len(upstream.recorder.requests) == before


async def test_the_providers_400_is_the_clients_400(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=stream,
                                                 extra_headers={"x-demo-status": "400"})
    assert SECRET not in str(upstream.recorder.requests[-1].body)


@pytest.mark.parametrize("stream", [False, True])
async def test_overloaded_goes_to_the_fallback(make_gateway: GatewayFactory, upstream: DemoServer,
                                               stream: bool) -> None:
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    knobs = {"x-demo-status": "529", "x-demo-fail-times": "1", "x-demo-fail-key": f"anthropic-529-{stream}"}
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, stream=stream, extra_headers=knobs)  # the fallback's call succeeds
    assert raw.headers["X-Clex-Served-Model"] == BACKUP
    paths = [(r.path, r.body.get("model")) for r in upstream.recorder.requests]
    assert paths[0] == ("/v1/messages", UPSTREAM) and paths[-1] == ("/v1/chat/completions", "backup-m")
    (line,) = await access_lines(gw, access, 1)
    assert line["status"] == 200 and line["fallback_from"] == MODEL


async def test_overloaded_once_is_retried_on_the_provider(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream, fallback=False, upstream_retries=1,
                               upstream_retry_backoff=0.001)
    knobs = {"x-demo-status": "529", "x-demo-fail-times": "1", "x-demo-fail-key": "anthropic-529-once"}
    completion = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=False,
                                                      extra_headers=knobs)
    assert completion.model == MODEL and completion.choices[0].message.content
    assert [r.path for r in upstream.recorder.requests] == ["/v1/messages", "/v1/messages"]


async def test_overloaded_without_a_fallback_is_a_503(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream, fallback=False)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=stream,
                                                 extra_headers={"x-demo-status": "529"})
        assert caught.value.status_code == 503
        assert caught.value.response.headers.get("Retry-After")



async def test_an_error_event_before_the_answer_goes_to_the_fallback(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    """Anthropic overloaded from the start of a 200 stream (its first event is `event: error`): not an answer."""
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True,
                                                  extra_headers={"x-demo-anthropic-error-after": "0"})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [r.path for r in upstream.recorder.requests] == ["/v1/messages", "/v1/chat/completions"]
    (line,) = await access_lines(gw, access, 1)
    assert line["status"] == 200 and line["fallback_from"] == MODEL


async def test_an_error_event_mid_answer_ends_the_stream_with_an_error(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True,
                                                  extra_headers={"x-demo-anthropic-error-after": "2"})
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.extend(chunk.choices[0].delta.content or "" for _ in [0] if chunk.choices)
    assert "".join(seen) and len([text for text in seen if text]) <= 2  # the two deltas before the error
    assert isinstance(caught.value.body, dict)  # SPEC's error event, the provider's words scrubbed
    assert caught.value.body["type"] == "upstream_error" and caught.value.body["status"] == 500
    (line,) = await access_lines(gw, access, 1)
    assert line["credits"] == 2  # the answer started: charged


async def test_an_image_reaches_the_provider_as_a_base64_block(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    content: Any = [{"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                      stream=False)
    assert completion.choices[0].message.content
    assert upstream.recorder.requests[-1].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_anthropic_sdk_through_an_anthropic_provider(
    make_gateway: GatewayFactory, upstream: DemoServer, stream: bool
) -> None:
    """Messages in, chat completions in the middle, Messages out: the client's words reach the provider intact."""
    gw, _, access = await PROVIDER.start(make_gateway, upstream)
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=gw.keys["acme"], max_retries=0)
    try:
        asked: Any = {"model": MODEL, "max_tokens": 100, "system": "be brief",
                      "messages": [{"role": "user", "content": "hello there world"}]}
        if stream:
            async with client.messages.stream(**asked) as events:
                message = await events.get_final_message()
        else:
            message = await client.messages.create(**asked)
    finally:
        await client.close()
    assert message.model == MODEL and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 8)
    sent = upstream.recorder.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == SECRET
    assert sent.body["system"] == [{"type": "text", "text": "be brief"}] and sent.body["max_tokens"] == 100
    (line,) = await access_lines(gw, access, 1)
    assert line["api"] == "messages" and (line["prompt_tokens"], line["completion_tokens"]) == (5, 8)


async def test_a_stream_cut_short_records_the_usage_anthropic_reported(make_gateway: GatewayFactory,
                                                                       upstream: DemoServer) -> None:
    """`message_start` reports the prompt's tokens: a stream the upstream drops is charged and records them."""
    gw, client, access = await PROVIDER.start(make_gateway, upstream, fallback=False)
    stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True,
                                                  extra_headers={"x-demo-drop-after": "3"})
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [line] = await access_lines(gw, access, 1)
    assert line["status"] == 503 and line["credits"] == 2  # the answer had started: charged
    assert line["prompt_tokens"] == 5 and line["completion_tokens"] >= 1
