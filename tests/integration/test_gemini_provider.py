"""Chat completions through a ``format = "gemini"`` provider: the official openai client against the gateway, whose
catalog puts a model on the demo upstream's Gemini API (``/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``).

What must hold end to end: the provider is asked in its own wire format (``x-goog-api-key``, no ``Authorization``,
``systemInstruction``, ``contents`` / ``parts``, ``generationConfig``), the client gets chat completions back (JSON
and stream, tool calls both ways, the function's name recovered for its ``functionResponse``), usage is metered from
Gemini's ``usageMetadata`` (credits, the access line's tokens), a blocked prompt is a clear 400, and the provider's
errors are mapped: a 400 is the client's 400, ``UNAVAILABLE`` (503) and ``RESOURCE_EXHAUSTED`` (429) are retried
(when the settings say so) and go to the fallback model, and with none are SPEC's 503.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from clexproxy.demo.upstream import DemoServer

from .conftest import GatewayFactory
from .providers import BACKUP, PROMPT, ProviderUnderTest, access_lines

MODEL = "clex/gemini"
UPSTREAM = "gemini-upstream"
SECRET = "AIza-SECRET-provider-credential"
PROVIDER = ProviderUnderTest("google", "gemini", "GEMINI_TEST_KEY", SECRET, MODEL, UPSTREAM,
                             base_path="/v1beta")
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "additionalProperties": False,
                       "properties": {"city": {"type": "string"}}, "required": ["city"]},
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
    assert sent.path == f"/v1beta/models/{UPSTREAM}:generateContent"
    assert sent.headers["x-goog-api-key"] == SECRET
    assert "authorization" not in {name.lower() for name in sent.headers}
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "hello there world"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"temperature": 0.7, "topP": 0.9},
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
    assert upstream.recorder.requests[-1].path == f"/v1beta/models/{UPSTREAM}:streamGenerateContent"

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
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert set(orjson.loads(call.function.arguments)) == {"city"}
    assert upstream.recorder.requests[-1].body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}]

    stream = await client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER_TOOL], stream=True)
    chunks = [c async for c in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert streamed[0].id and streamed[0].id.startswith("call_")  # a new answer: its own id
    assert streamed[0].function and streamed[0].function.name == "get_weather"
    assert "".join(s.function.arguments or "" for s in streamed if s.function) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    answered = [*asked, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = await client.chat.completions.create(model=MODEL, messages=answered, tools=[WEATHER_TOOL], stream=False)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    contents = upstream.recorder.requests[-1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": orjson.loads(call.function.arguments)}}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}}]}


async def test_a_field_the_provider_cannot_honour_is_a_400_before_any_call(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    before = len(upstream.recorder.requests)
    for extra in ({"n": 2}, {"logit_bias": {"1": 1}}):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=False, **extra)
        assert caught.value.body is not None and "is not supported by this model's provider" in str(caught.value.body)
    assert len(upstream.recorder.requests) == before


async def test_a_blocked_prompt_is_a_clear_400(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=stream,
                                                 extra_headers={"x-demo-gemini-safety": "prompt"})
        assert "The provider blocked the prompt (SAFETY)." in str(caught.value.body)
    filtered = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=False,
                                                    extra_headers={"x-demo-gemini-safety": "response"})
    assert filtered.choices[0].finish_reason == "content_filter"


async def test_the_providers_400_is_the_clients_400(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=stream,
                                                 extra_headers={"x-demo-status": "400"})
        assert SECRET not in str(caught.value.body)


@pytest.mark.parametrize(("status", "stream"), [("503", False), ("503", True), ("429", False)])
async def test_overloaded_goes_to_the_fallback(make_gateway: GatewayFactory, upstream: DemoServer,
                                               status: str, stream: bool) -> None:
    gw, client, access = await PROVIDER.start(make_gateway, upstream)
    knobs = {"x-demo-status": status, "x-demo-fail-times": "1", "x-demo-fail-key": f"gemini-{status}-{stream}"}
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, stream=stream, extra_headers=knobs)  # the fallback's call succeeds
    assert raw.headers["X-Clex-Served-Model"] == BACKUP
    paths = [r.path for r in upstream.recorder.requests]
    assert paths[0].startswith(f"/v1beta/models/{UPSTREAM}:") and paths[-1] == "/v1/chat/completions"
    (line,) = await access_lines(gw, access, 1)
    assert line["status"] == 200 and line["fallback_from"] == MODEL


async def test_unavailable_once_is_retried_on_the_provider(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream, fallback=False, upstream_retries=1,
                               upstream_retry_backoff=0.001)
    knobs = {"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": "gemini-503-once"}
    completion = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=False,
                                                      extra_headers=knobs)
    assert completion.model == MODEL and completion.choices[0].message.content
    assert [r.path for r in upstream.recorder.requests] == [f"/v1beta/models/{UPSTREAM}:generateContent"] * 2


async def test_unavailable_without_a_fallback_is_a_503(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    _, client, _ = await PROVIDER.start(make_gateway, upstream, fallback=False)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=stream,
                                                 extra_headers={"x-demo-status": "503"})
        assert caught.value.status_code == 503
        assert caught.value.response.headers.get("Retry-After")


async def test_a_stream_cut_short_records_the_usage_gemini_reported(make_gateway: GatewayFactory,
                                                                    upstream: DemoServer) -> None:
    """Gemini reports usage with every frame: a stream the upstream drops is charged and its tokens recorded so far."""
    gw, client, access = await PROVIDER.start(make_gateway, upstream, fallback=False)
    stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True,
                                                  extra_headers={"x-demo-drop-after": "3"})
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [line] = await access_lines(gw, access, 1)
    assert line["status"] == 503 and line["credits"] == 2  # the answer had started: charged
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 3)
