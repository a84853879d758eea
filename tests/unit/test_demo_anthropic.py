"""Tests for the demo upstream's Anthropic Messages API: the fixture every ``format = "anthropic"`` translation test
stands on, so its wire format must be the vendor's and its answers must match the OpenAI endpoint's.

Driven over real sockets with aiohttp (the ``anthropic`` SDK is not installed in this environment).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest_asyncio

from clexproxy.demo.knobs import DEFAULT_COMPLETION_TOKENS
from clexproxy.demo.upstream import DemoServer
from tests.cut_streams import read_until_cut

PROMPT = "hello there world"
MODEL = "claude-demo"
HEADERS = {"x-api-key": "sk-ant-demo", "anthropic-version": "2023-06-01"}


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def message_body(prompt: str = PROMPT, /, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}], **extra}


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, json=body, headers={**HEADERS, **(headers or {})}) as response:
        return response.status, dict(response.headers), orjson.loads(await response.read())


async def stream(
    session: aiohttp.ClientSession, server: DemoServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Every SSE event of one streamed message as (event name, data); checks each name equals its data's type."""
    async with session.post(
        f"{server.url}/messages", json={**body, "stream": True}, headers={**HEADERS, **(headers or {})}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in raw.split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name, data = name_line[len("event: ") :], orjson.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


async def test_non_stream_matches_the_chat_endpoint(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, _, message = await post(session, f"{upstream.url}/messages", message_body())
    chat_body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    _, _, chat = await post(session, f"{upstream.url}/chat/completions", chat_body)
    assert status == 200
    assert set(message) == {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == MODEL
    assert message["content"] == [{"type": "text", "text": chat["choices"][0]["message"]["content"]}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"] == 3
    assert message["usage"]["output_tokens"] == chat["usage"]["completion_tokens"] == DEFAULT_COMPLETION_TOKENS
    recorded = upstream.recorder.requests[0]
    assert recorded.path == "/v1/messages" and recorded.headers["anthropic-version"] == "2023-06-01"


async def test_system_blocks_and_tool_results_count_as_prompt(
    session: aiohttp.ClientSession, upstream: DemoServer
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 50,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [{"name": "get_time", "description": "now", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what time"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon today"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
        ],
    }
    status, _, message = await post(session, f"{upstream.url}/messages", body)
    assert status == 200
    assert message["usage"]["input_tokens"] == 6  # be brief / what time / noon today
    _, _, again = await post(session, f"{upstream.url}/messages", {**body, "system": "be brief"})
    assert again["content"] == message["content"]


async def test_max_tokens_caps_and_says_so(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    _, _, message = await post(session, f"{upstream.url}/messages", message_body(max_tokens=3))
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 3 and len(message["content"][0]["text"].split()) == 3


async def test_stop_sequence_cuts_the_answer(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    _, _, full = await post(session, f"{upstream.url}/messages", message_body())
    words = full["content"][0]["text"].split()
    stop = " " + words[2]
    _, _, message = await post(session, f"{upstream.url}/messages", message_body(stop_sequences=["zzz", stop]))
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == stop
    assert message["content"][0]["text"] == " ".join(words[:2])
    assert message["usage"]["output_tokens"] == 2


async def test_stream_event_sequence(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    _, _, whole = await post(session, f"{upstream.url}/messages", message_body())
    events = await stream(session, upstream, message_body())
    names = [name for name, _ in events]
    tokens = DEFAULT_COMPLETION_TOKENS
    assert names == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * tokens,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == MODEL
    assert start["usage"]["input_tokens"] == 3
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(delta["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["text"] for delta in deltas) == whole["content"][0]["text"]
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": tokens},
    }
    assert (await upstream.recorder.wait_for(lambda seen: seen.completed)).status == 200


async def test_stream_drop_cuts_before_message_stop(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    async with session.post(
        f"{upstream.url}/messages", json=message_body(stream=True), headers={**HEADERS, "x-demo-drop-after": "2"}
    ) as response:
        raw = await read_until_cut(response)
    assert raw.count(b"event: content_block_delta") == 2 and b"message_stop" not in raw
    assert (await upstream.recorder.wait_for(lambda seen: seen.dropped)).dropped


async def test_errors_in_anthropic_shape(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    url = f"{upstream.url}/messages"
    cases = [
        ({"x-demo-status": "529", "x-demo-retry-after": "3"}, 529, "overloaded_error"),
        ({"x-demo-status": "429"}, 429, "rate_limit_error"),
        ({"x-demo-status": "401"}, 401, "authentication_error"),
        ({"x-demo-status": "500"}, 500, "api_error"),
        ({"x-demo-model-missing": "1"}, 404, "not_found_error"),
    ]
    for headers, expected_status, expected_type in cases:
        status, response_headers, payload = await post(session, url, message_body(), headers)
        assert status == expected_status
        assert payload["type"] == "error" and payload["error"]["type"] == expected_type
        assert isinstance(payload["error"]["message"], str) and payload["request_id"].startswith("req_")
    status, response_headers, payload = await post(session, url, message_body(), cases[0][0])
    assert payload["error"]["message"] == "Overloaded" and response_headers["Retry-After"] == "3"
    _, _, missing = await post(session, url, message_body(), {"x-demo-model-missing": "1"})
    assert missing["error"]["message"] == f"model: {MODEL}"


async def test_invalid_requests_are_400(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    url = f"{upstream.url}/messages"
    no_max = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    bad_role = {**message_body(), "messages": [{"role": "system", "content": PROMPT}]}
    for body in (no_max, bad_role, {**message_body(), "messages": []}, {"max_tokens": 5, "messages": []}, [1]):
        status, _, payload = await post(session, url, body)
        assert status == 400
        assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    _, _, payload = await post(session, url, no_max)
    assert payload["error"]["message"] == "max_tokens: Field required"
