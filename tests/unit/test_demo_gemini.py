"""Tests for the demo upstream's Gemini API: the foundation every ``gemini``-format provider test stands on.

Driven over a real socket with aiohttp (no Google SDK is installed in the venv); the answers are compared with the
OpenAI endpoint's for the same prompt, so both formats provably carry the same words and token counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest_asyncio

from clexproxy.demo.knobs import DEFAULT_COMPLETION_TOKENS
from clexproxy.demo.upstream import DemoServer, start_demo_upstream

PROMPT = "hello there world"
MODEL = "gemini-2.0-flash"
KEY = {"x-goog-api-key": "demo"}


@pytest_asyncio.fixture
async def server() -> AsyncIterator[DemoServer]:
    demo = await start_demo_upstream()
    try:
        yield demo
    finally:
        await demo.close()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def base(server: DemoServer) -> str:
    return f"http://{server.host}:{server.port}/v1beta"


def gemini_body(prompt: str = PROMPT, /, **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}], **extra}


async def generate(
    session: aiohttp.ClientSession,
    server: DemoServer,
    body: Any,
    headers: dict[str, str] | None = None,
    model: str = MODEL,
    query: str = "",
) -> tuple[int, Any]:
    url = f"{base(server)}/models/{model}:generateContent{query}"
    async with session.post(url, json=body, headers=KEY if headers is None else headers) as response:
        return response.status, orjson.loads(await response.read())


async def stream(
    session: aiohttp.ClientSession, server: DemoServer, body: Any, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    url = f"{base(server)}/models/{MODEL}:streamGenerateContent?alt=sse"
    async with session.post(url, json=body, headers={**KEY, **(headers or {})}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        text = await response.text()
    blocks = [block for block in text.split("\r\n\r\n") if block]
    assert all(block.startswith("data: ") for block in blocks)
    return [orjson.loads(block.removeprefix("data: ")) for block in blocks]


async def openai_answer(session: aiohttp.ClientSession, server: DemoServer, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], **extra}
    async with session.post(f"{server.url}/chat/completions", json=body) as response:
        result: dict[str, Any] = orjson.loads(await response.read())
    return result


async def test_generate_content_matches_the_openai_answer(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await generate(session, server, gemini_body())
    assert status == 200
    candidate = payload["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert candidate["finishReason"] == "STOP"
    openai = await openai_answer(session, server)
    assert candidate["content"]["parts"] == [{"text": openai["choices"][0]["message"]["content"]}]
    assert payload["usageMetadata"] == {
        "promptTokenCount": openai["usage"]["prompt_tokens"],
        "candidatesTokenCount": DEFAULT_COMPLETION_TOKENS,
        "totalTokenCount": openai["usage"]["total_tokens"],
    }
    assert payload["modelVersion"] == MODEL
    recorded = server.recorder.requests[0]
    assert recorded.path == f"/v1beta/models/{MODEL}:generateContent"
    assert recorded.completed


async def test_key_in_query_and_system_instruction_and_other_parts(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": PROMPT}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": True}}}]},
        ],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "stopSequences": ["zzz"]},
    }
    status, payload = await generate(session, server, body, headers={}, query="?key=demo")
    assert status == 200
    # Text parts only count: "be brief" + "hello there world".
    assert payload["usageMetadata"]["promptTokenCount"] == 5
    assert "text" in payload["candidates"][0]["content"]["parts"][0]


async def test_max_output_tokens_gives_max_tokens(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await generate(session, server, gemini_body(generationConfig={"maxOutputTokens": 3}))
    assert status == 200
    assert payload["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert len(payload["candidates"][0]["content"]["parts"][0]["text"].split()) == 3
    assert payload["usageMetadata"]["candidatesTokenCount"] == 3


async def test_stream_frames_and_usage_on_the_last(server: DemoServer, session: aiohttp.ClientSession) -> None:
    frames = await stream(session, server, gemini_body(), {"x-demo-tokens": "4"})
    assert len(frames) == 4
    text = "".join(frame["candidates"][0]["content"]["parts"][0]["text"] for frame in frames)
    assert all("finishReason" not in frame["candidates"][0] for frame in frames[:-1])
    # Every frame says what was used so far, as Gemini's do: the prompt and the candidate tokens sent.
    assert [frame["usageMetadata"]["candidatesTokenCount"] for frame in frames] == [1, 2, 3, 4]
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert frames[-1]["usageMetadata"]["candidatesTokenCount"] == 4
    openai = await openai_answer(session, server, max_tokens=4)
    assert text == openai["choices"][0]["message"]["content"]
    assert server.recorder.requests[0].completed


async def test_stream_drop_knob_cuts_the_connection(server: DemoServer, session: aiohttp.ClientSession) -> None:
    url = f"{base(server)}/models/{MODEL}:streamGenerateContent?alt=sse"
    async with session.post(url, json=gemini_body(), headers={**KEY, "x-demo-drop-after": "2"}) as response:
        assert response.status == 200
        try:
            await response.read()
        except aiohttp.ClientPayloadError:
            pass
    recorded = await server.recorder.wait_for(lambda r: r.dropped)
    assert recorded.dropped


async def test_function_declarations_answer_a_function_call(server: DemoServer, session: aiohttp.ClientSession) -> None:
    declaration = {
        "name": "get_weather",
        "description": "weather",
        "parameters": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}, "metric": {"type": "BOOLEAN"}},
            "required": ["city", "days", "metric"],
        },
    }
    body = gemini_body(tools=[{"functionDeclarations": [declaration]}])
    status, payload = await generate(session, server, body)
    assert status == 200
    call = payload["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str) and call["args"]["city"]
    assert call["args"]["days"] == 2 and call["args"]["metric"] is True
    again = await generate(session, server, body)
    assert again[1]["candidates"][0]["content"]["parts"][0]["functionCall"] == call  # deterministic
    # After the function answered, the model answers in text.
    body["contents"] += [
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}]},
    ]
    status, payload = await generate(session, server, body)
    assert status == 200 and "text" in payload["candidates"][0]["content"]["parts"][0]
    frames = await stream(session, server, gemini_body(tools=[{"functionDeclarations": [declaration]}]))
    assert frames[-1]["candidates"][0]["content"]["parts"][0]["functionCall"] == call


async def test_safety_knob_blocks_prompt_or_response(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await generate(session, server, gemini_body(), {**KEY, "x-demo-gemini-safety": "prompt"})
    assert status == 200
    assert payload["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in payload
    status, payload = await generate(session, server, gemini_body(), {**KEY, "x-demo-gemini-safety": "response"})
    assert status == 200
    assert payload["candidates"][0]["finishReason"] == "SAFETY"
    assert "content" not in payload["candidates"][0]
    frames = await stream(session, server, gemini_body(), {"x-demo-gemini-safety": "response"})
    assert len(frames) == 1 and frames[0]["candidates"][0]["finishReason"] == "SAFETY"


async def test_errors_in_google_shape(server: DemoServer, session: aiohttp.ClientSession) -> None:
    cases = [
        ({**KEY, "x-demo-status": "429", "x-demo-retry-after": "3"}, 429, "RESOURCE_EXHAUSTED"),
        ({**KEY, "x-demo-status": "503"}, 503, "UNAVAILABLE"),
        ({**KEY, "x-demo-status": "500"}, 500, "INTERNAL"),
        ({**KEY, "x-demo-model-missing": "1"}, 404, "NOT_FOUND"),
        ({}, 403, "PERMISSION_DENIED"),
        ({**KEY, "x-demo-gemini-safety": "maybe"}, 400, "INVALID_ARGUMENT"),
    ]
    for headers, code, name in cases:
        status, payload = await generate(session, server, gemini_body(), headers)
        assert status == code, headers
        assert payload["error"]["code"] == code and payload["error"]["status"] == name
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    url = f"{base(server)}/models/{MODEL}:generateContent"
    async with session.post(
        url, json=gemini_body(), headers={**KEY, "x-demo-status": "429", "x-demo-retry-after": "3"}
    ) as r:
        assert r.headers["Retry-After"] == "3"


async def test_bad_requests_and_unknown_methods(server: DemoServer, session: aiohttp.ClientSession) -> None:
    bad_bodies: list[Any] = [
        {},
        {"contents": []},
        {"contents": [{"role": "system", "parts": [{"text": "x"}]}]},
        {"contents": [{"role": "user", "parts": "x"}]},
        gemini_body(generationConfig={"maxOutputTokens": 0}),
        gemini_body(generationConfig={"temperature": "hot"}),
        gemini_body(generationConfig={"stopSequences": "x"}),
    ]
    for body in bad_bodies:
        status, payload = await generate(session, server, body)
        assert status == 400, body
        assert payload["error"]["status"] == "INVALID_ARGUMENT"
    status, payload = await generate(session, server, gemini_body(), model="m:countTokens")
    assert status == 404 and payload["error"]["status"] == "NOT_FOUND"
    url = f"{base(server)}/models/{MODEL}:streamGenerateContent"
    async with session.post(url, json=gemini_body(), headers=KEY) as response:
        assert response.status == 400
        assert orjson.loads(await response.read())["error"]["status"] == "INVALID_ARGUMENT"


async def test_model_names_with_slashes(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await generate(session, server, gemini_body(), model="meta/llama-3.1-8b-instruct")
    assert status == 200 and payload["modelVersion"] == "meta/llama-3.1-8b-instruct"
