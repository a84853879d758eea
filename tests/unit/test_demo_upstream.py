"""Tests for the bundled demo upstream: it is the fixture every gateway test and benchmark stands on.

Driven over real sockets with aiohttp and with the official ``openai`` client, so the wire format is checked
by the same parser real users run.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from clexproxy.demo.answers import DEMO_MODELS
from clexproxy.demo.embeddings import DEFAULT_EMBEDDING_DIMENSIONS
from clexproxy.demo.knobs import DEFAULT_COMPLETION_TOKENS
from clexproxy.demo.recorder import DEMO_RECORDER_KEY, DemoRecorder, RecordedRequest
from clexproxy.demo.upstream import DemoServer, build_demo_app, start_demo_upstream

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "hello there world"


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def server(upstream: DemoServer) -> DemoServer:
    return upstream


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest_asyncio.fixture
async def client(server: DemoServer) -> AsyncIterator[openai.AsyncOpenAI]:
    openai_client = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0)
    try:
        yield openai_client
    finally:
        await openai_client.close()


def chat_body(prompt: str = PROMPT, /, **extra: Any) -> dict[str, Any]:
    return {"model": "meta/llama-3.1-8b-instruct", "messages": [{"role": "user", "content": prompt}], **extra}


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def stream_events(
    session: aiohttp.ClientSession, server: DemoServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[str]:
    """Every SSE ``data:`` payload of one streamed chat completion, as text."""
    async with session.post(f"{server.url}/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        text = await response.text()
    assert text.endswith("\n\n")
    blocks = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in blocks)
    return [block.removeprefix("data: ") for block in blocks]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_models_lists_the_demo_catalog(server: DemoServer, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{server.url}/models") as response:
        assert response.status == 200
        payload = orjson.loads(await response.read())
    assert payload["object"] == "list"
    ids = [model["id"] for model in payload["data"]]
    assert ids == list(DEMO_MODELS)
    for required in ("meta/llama-3.1-8b-instruct", "meta/llama-3.3-70b-instruct", "nvidia/nv-embedqa-e5-v5"):
        assert required in ids
    assert all(model["object"] == "model" and model["owned_by"] for model in payload["data"])


@pytest.mark.asyncio
async def test_models_via_openai_client(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert {model.id for model in page.data} == set(DEMO_MODELS)


# ---------------------------------------------------------------------------------------------------------------
# Chat completions: non-streaming
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_non_stream_shape_and_usage(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await post_json(session, f"{server.url}/chat/completions", chat_body())
    assert status == 200
    assert payload["id"].startswith("chatcmpl-demo-")
    assert payload["object"] == "chat.completion"
    assert isinstance(payload["created"], int)
    assert payload["model"] == "meta/llama-3.1-8b-instruct"
    [choice] = payload["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == DEFAULT_COMPLETION_TOKENS
    assert choice["finish_reason"] == "stop"
    assert payload["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": DEFAULT_COMPLETION_TOKENS,
        "total_tokens": 3 + DEFAULT_COMPLETION_TOKENS,
    }


@pytest.mark.asyncio
async def test_chat_ids_are_unique_per_response(server: DemoServer, session: aiohttp.ClientSession) -> None:
    ids = {(await post_json(session, f"{server.url}/chat/completions", chat_body()))[1]["id"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.asyncio
async def test_prompt_tokens_count_words_of_string_and_text_part_contents(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "one two three"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "four"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    _, payload = await post_json(session, f"{server.url}/chat/completions", body)
    assert payload["usage"]["prompt_tokens"] == 6


@pytest.mark.asyncio
async def test_prompt_tokens_are_at_least_one(server: DemoServer, session: aiohttp.ClientSession) -> None:
    _, payload = await post_json(session, f"{server.url}/chat/completions", chat_body("   "))
    assert payload["usage"]["prompt_tokens"] == 1


@pytest.mark.asyncio
async def test_answers_are_deterministic_and_seeded_by_the_prompt(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    url = f"{server.url}/chat/completions"
    headers = {"x-demo-tokens": "16"}
    first = (await post_json(session, url, chat_body("tell me a story"), headers))[1]
    second = (await post_json(session, url, chat_body("tell me a story"), headers))[1]
    other = (await post_json(session, url, chat_body("tell me a joke"), headers))[1]
    answer = first["choices"][0]["message"]["content"]
    assert answer == second["choices"][0]["message"]["content"]
    assert answer != other["choices"][0]["message"]["content"]


@pytest.mark.asyncio
async def test_unknown_model_is_accepted_and_echoed(server: DemoServer, session: aiohttp.ClientSession) -> None:
    body = {"model": "someone/brand-new-model", "messages": [{"role": "user", "content": "hi"}]}
    status, payload = await post_json(session, f"{server.url}/chat/completions", body)
    assert status == 200
    assert payload["model"] == "someone/brand-new-model"


@pytest.mark.asyncio
@pytest.mark.parametrize("tokens", [0, 1, 3, 50])
async def test_x_demo_tokens_sets_the_completion_length(
    server: DemoServer, session: aiohttp.ClientSession, tokens: int
) -> None:
    headers = {"x-demo-tokens": str(tokens)}
    _, payload = await post_json(session, f"{server.url}/chat/completions", chat_body(), headers)
    assert len(payload["choices"][0]["message"]["content"].split()) == tokens
    assert payload["usage"]["completion_tokens"] == tokens
    assert payload["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_caps_the_answer_with_finish_reason_length(
    server: DemoServer, session: aiohttp.ClientSession, field: str
) -> None:
    url = f"{server.url}/chat/completions"
    headers = {"x-demo-tokens": "10"}
    _, capped = await post_json(session, url, chat_body(**{field: 4}), headers)
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 4
    _, full = await post_json(session, url, chat_body(**{field: 10}), headers)
    assert full["choices"][0]["finish_reason"] == "stop"
    assert full["usage"]["completion_tokens"] == 10
    assert full["choices"][0]["message"]["content"].startswith(capped["choices"][0]["message"]["content"])


@pytest.mark.asyncio
async def test_chat_non_stream_via_openai_client(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="meta/llama-3.3-70b-instruct",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=5,
    )
    assert completion.model == "meta/llama-3.3-70b-instruct"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)
    assert completion.usage.total_tokens == 8


# ---------------------------------------------------------------------------------------------------------------
# Chat completions: streaming
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_frames_without_usage(server: DemoServer, session: aiohttp.ClientSession) -> None:
    events = await stream_events(session, server, chat_body(stream=True), {"x-demo-tokens": "5"})
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert len(chunks) == 1 + 5
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "meta/llama-3.1-8b-instruct" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 5 + ["stop"]
    assert all(chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:])

    _, non_stream = await post_json(session, f"{server.url}/chat/completions", chat_body(), {"x-demo-tokens": "5"})
    assert content_of(chunks) == non_stream["choices"][0]["message"]["content"]


@pytest.mark.asyncio
async def test_stream_include_usage_matches_openai(server: DemoServer, session: aiohttp.ClientSession) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    events = await stream_events(session, server, body, {"x-demo-tokens": "3"})
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    *content_chunks, usage_chunk = chunks
    assert len(content_chunks) == 1 + 3
    assert all("usage" in chunk and chunk["usage"] is None for chunk in content_chunks)
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert usage_chunk["id"] == content_chunks[0]["id"]


@pytest.mark.asyncio
async def test_stream_with_max_tokens_finishes_with_length(server: DemoServer, session: aiohttp.ClientSession) -> None:
    events = await stream_events(session, server, chat_body(stream=True, max_tokens=2), {"x-demo-tokens": "6"})
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, "length"]


@pytest.mark.asyncio
async def test_stream_of_zero_tokens_still_sends_a_finish_reason(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    events = await stream_events(session, server, chat_body(stream=True), {"x-demo-tokens": "0"})
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert len(chunks) == 2
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert content_of(chunks) == ""


@pytest.mark.asyncio
async def test_stream_via_openai_client_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="meta/llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-demo-tokens": "4"},
    )
    chunks = [chunk async for chunk in stream]
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(text.split()) == 4
    assert chunks[-2].choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    ],
)
async def test_invalid_chat_bodies_get_an_openai_400(
    server: DemoServer, session: aiohttp.ClientSession, raw: bytes, param: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{server.url}/chat/completions", data=raw, headers=headers) as response:
        assert response.status == 400
        error = orjson.loads(await response.read())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] and error["code"]
    assert error["param"] == param


@pytest.mark.asyncio
async def test_openai_client_sees_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="m", messages=[])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-demo-tokens", "many"),
        ("x-demo-tokens", "-1"),
        ("x-demo-delay-ms", "fast"),
        ("x-demo-ttft-ms", "-5"),
        ("x-demo-headers-delay-ms", "nan"),
        ("x-demo-status", "200"),
        ("x-demo-status", "abc"),
        ("x-demo-fail-times", "x"),
        ("x-demo-drop-after", "-2"),
        ("x-demo-model-missing", "maybe"),
    ],
)
async def test_malformed_knobs_are_rejected_loudly(
    server: DemoServer, session: aiohttp.ClientSession, name: str, value: str
) -> None:
    status, payload = await post_json(session, f"{server.url}/chat/completions", chat_body(), {name: value})
    assert status == 400
    assert payload["error"]["code"] == "invalid_demo_header"
    assert name in payload["error"]["message"]


# ---------------------------------------------------------------------------------------------------------------
# Knobs: status, fail-times, retry-after, model-missing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (400, "invalid_request_error", "bad_request"),
        (401, "authentication_error", "invalid_api_key"),
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "server_error", "internal_error"),
        (502, "server_error", "bad_gateway"),
        (503, "server_error", "service_unavailable"),
        (504, "server_error", "gateway_timeout"),
        (418, "invalid_request_error", "i'm_a_teapot"),
        (507, "server_error", "insufficient_storage"),
    ],
)
async def test_status_knob_renders_an_openai_error(
    server: DemoServer, session: aiohttp.ClientSession, status: int, error_type: str, code: str
) -> None:
    got, payload = await post_json(
        session, f"{server.url}/chat/completions", chat_body(), {"x-demo-status": str(status)}
    )
    assert got == status
    assert payload["error"]["type"] == error_type
    assert payload["error"]["code"] == code
    assert payload["error"]["message"]


@pytest.mark.asyncio
async def test_status_knob_429_body_is_exactly_openai_shaped(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    _, payload = await post_json(session, f"{server.url}/chat/completions", chat_body(), {"x-demo-status": "429"})
    assert payload == {
        "error": {"message": "rate limited", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    }


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_status_knob_maps_to_openai_client_exceptions(
    client: openai.AsyncOpenAI, status: int, exception: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-demo-status": str(status)}
        )
    assert caught.value.status_code == status


@pytest.mark.asyncio
async def test_status_knob_applies_to_embeddings_and_models(server: DemoServer, session: aiohttp.ClientSession) -> None:
    headers = {"x-demo-status": "503"}
    status, _ = await post_json(session, f"{server.url}/embeddings", {"model": "e", "input": "x"}, headers)
    assert status == 503
    async with session.get(f"{server.url}/models", headers=headers) as response:
        assert response.status == 503


@pytest.mark.asyncio
async def test_retry_after_knob_adds_the_header(server: DemoServer, session: aiohttp.ClientSession) -> None:
    headers = {"x-demo-status": "429", "x-demo-retry-after": "7"}
    async with session.post(f"{server.url}/chat/completions", json=chat_body(), headers=headers) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
    async with session.post(f"{server.url}/chat/completions", json=chat_body()) as response:
        assert response.status == 200
        assert "Retry-After" not in response.headers


@pytest.mark.asyncio
async def test_fail_times_fails_the_first_k_requests_of_each_key(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    url = f"{server.url}/chat/completions"

    async def attempt(key: str) -> int:
        headers = {"x-demo-status": "502", "x-demo-fail-times": "2", "x-demo-fail-key": key}
        return (await post_json(session, url, chat_body(), headers))[0]

    assert [await attempt("alpha") for _ in range(2)] == [502, 502]
    assert await attempt("beta") == 502
    assert [await attempt("alpha") for _ in range(2)] == [200, 200]
    assert await attempt("beta") == 502
    assert await attempt("beta") == 200
    statuses = [r.status for r in server.recorder.requests if r.headers.get("x-demo-fail-key") == "alpha"]
    assert statuses == [502, 502, 200, 200]


@pytest.mark.asyncio
async def test_fail_times_without_status_defaults_to_500(server: DemoServer, session: aiohttp.ClientSession) -> None:
    headers = {"x-demo-fail-times": "1", "x-demo-fail-key": "default-status"}
    statuses = [(await post_json(session, f"{server.url}/chat/completions", chat_body(), headers))[0] for _ in "ab"]
    assert statuses == [500, 200]


@pytest.mark.asyncio
async def test_openai_client_retries_through_fail_times(server: DemoServer) -> None:
    headers = {
        "x-demo-status": "503",
        "x-demo-fail-times": "2",
        "x-demo-fail-key": "retry",
        "x-demo-retry-after": "0.01",
    }
    async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=2) as retrying:
        completion = await retrying.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )
    assert completion.choices[0].finish_reason == "stop"
    assert [r.status for r in server.recorder.requests] == [503, 503, 200]


@pytest.mark.asyncio
async def test_model_missing_knob_returns_openai_404(server: DemoServer, session: aiohttp.ClientSession) -> None:
    body = chat_body()
    status, payload = await post_json(session, f"{server.url}/chat/completions", body, {"x-demo-model-missing": "1"})
    assert status == 404
    assert payload["error"] == {
        "message": "The model `meta/llama-3.1-8b-instruct` does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    status, payload = await post_json(session, f"{server.url}/chat/completions", body, {"x-demo-status": "404"})
    assert (status, payload["error"]["code"]) == (404, "model_not_found")
    status, payload = await post_json(
        session, f"{server.url}/embeddings", {"model": "e5", "input": "x"}, {"x-demo-model-missing": "true"}
    )
    assert (status, payload["error"]["message"]) == (404, "The model `e5` does not exist")


@pytest.mark.asyncio
async def test_model_missing_via_openai_client(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="ghost", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-demo-model-missing": "1"}
        )
    assert caught.value.code == "model_not_found"


# ---------------------------------------------------------------------------------------------------------------
# Knobs: drop-after
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_drop_after_cuts_the_stream_after_n_content_chunks(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    headers = {"x-demo-tokens": "6", "x-demo-drop-after": "2", "x-demo-delay-ms": "100"}
    events: list[bytes] = []
    async with session.post(f"{server.url}/chat/completions", json=chat_body(stream=True), headers=headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(line.removeprefix(b"data: ").strip())
    assert b"[DONE]" not in events
    assert len(events) == 1 + 2
    recorded = await server.recorder.wait_for(lambda r: r.finished.is_set())
    assert (recorded.dropped, recorded.completed, recorded.disconnected) == (True, False, False)


@pytest.mark.asyncio
async def test_drop_after_beyond_the_answer_withholds_usage_and_done(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    headers = {"x-demo-tokens": "2", "x-demo-drop-after": "5"}
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with session.post(f"{server.url}/chat/completions", json=body, headers=headers) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.asyncio
async def test_drop_after_raises_in_the_openai_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-demo-tokens": "5", "x-demo-drop-after": "1"},
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) <= 1 + 1


@pytest.mark.asyncio
async def test_drop_after_non_stream_closes_before_the_body(
    server: DemoServer, session: aiohttp.ClientSession, client: openai.AsyncOpenAI
) -> None:
    headers = {"x-demo-drop-after": "0"}
    async with session.post(f"{server.url}/chat/completions", json=chat_body(), headers=headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )
    async with session.post(f"{server.url}/embeddings", json={"model": "e", "input": "x"}, headers=headers) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert all(r.dropped and not r.completed for r in server.recorder.requests)


# ---------------------------------------------------------------------------------------------------------------
# Knobs: delays
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_ttft_sends_headers_first_and_data_after_the_delay(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    headers = {"x-demo-ttft-ms": "1000", "x-demo-tokens": "2"}
    started = time.monotonic()
    async with session.post(f"{server.url}/chat/completions", json=chat_body(stream=True), headers=headers) as resp:
        assert resp.status == 200
        recorded = server.recorder.requests[-1]
        assert not recorded.finished.is_set()  # headers arrived while the upstream was still in its ttft wait
        first_line = await resp.content.readline()
        assert first_line.startswith(b"data: ")
        assert time.monotonic() - started >= 1.0
        await resp.read()
    assert recorded.completed


@pytest.mark.asyncio
async def test_non_stream_ttft_delays_the_body(server: DemoServer, session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    status, _ = await post_json(session, f"{server.url}/chat/completions", chat_body(), {"x-demo-ttft-ms": "200"})
    assert status == 200
    assert time.monotonic() - started >= 0.2


@pytest.mark.asyncio
async def test_delay_is_applied_between_streamed_tokens(server: DemoServer, session: aiohttp.ClientSession) -> None:
    headers = {"x-demo-tokens": "4", "x-demo-delay-ms": "60"}
    started = time.monotonic()
    events = await stream_events(session, server, chat_body(stream=True), headers)
    assert time.monotonic() - started >= 3 * 0.06
    assert len(events) == 1 + 4 + 1


@pytest.mark.asyncio
async def test_headers_delay_holds_back_any_response(server: DemoServer, session: aiohttp.ClientSession) -> None:
    for extra in ({}, {"x-demo-status": "429"}):
        headers = {"x-demo-headers-delay-ms": "200", **extra}
        started = time.monotonic()
        async with session.post(f"{server.url}/chat/completions", json=chat_body(stream=True), headers=headers) as resp:
            assert time.monotonic() - started >= 0.2
            await resp.read()


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_embeddings_are_deterministic_unit_vectors(server: DemoServer, session: aiohttp.ClientSession) -> None:
    url = f"{server.url}/embeddings"
    body = {"model": "nvidia/nv-embedqa-e5-v5", "input": "the quick brown fox"}
    status, payload = await post_json(session, url, body)
    assert status == 200
    assert payload["object"] == "list"
    assert payload["model"] == "nvidia/nv-embedqa-e5-v5"
    [item] = payload["data"]
    assert (item["object"], item["index"]) == ("embedding", 0)
    vector = item["embedding"]
    assert len(vector) == DEFAULT_EMBEDDING_DIMENSIONS
    assert math.isclose(math.sqrt(sum(value * value for value in vector)), 1.0, rel_tol=1e-5)
    assert payload["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert (await post_json(session, url, body))[1]["data"][0]["embedding"] == vector
    other = (await post_json(session, url, {**body, "input": "a lazy dog"}))[1]
    assert other["data"][0]["embedding"] != vector


@pytest.mark.asyncio
async def test_embeddings_honour_dimensions(server: DemoServer, session: aiohttp.ClientSession) -> None:
    _, payload = await post_json(session, f"{server.url}/embeddings", {"model": "e", "input": "x", "dimensions": 64})
    assert len(payload["data"][0]["embedding"]) == 64


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("value", "count", "tokens"),
    [
        (["a b", "c", "d e f"], 3, 6),
        ([101, 102, 103], 1, 3),
        ([[1, 2], [3, 4, 5]], 2, 5),
    ],
)
async def test_embeddings_accept_every_openai_input_shape(
    server: DemoServer, session: aiohttp.ClientSession, value: Any, count: int, tokens: int
) -> None:
    status, payload = await post_json(session, f"{server.url}/embeddings", {"model": "e", "input": value})
    assert status == 200
    assert [item["index"] for item in payload["data"]] == list(range(count))
    assert payload["usage"]["prompt_tokens"] == tokens


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        {"model": "e"},
        {"model": "e", "input": []},
        {"model": "e", "input": ["a", 1]},
        {"model": "e", "input": [[]]},
        {"model": "e", "input": {"text": "a"}},
        {"input": "a"},
        {"model": "e", "input": "a", "dimensions": 0},
        {"model": "e", "input": "a", "encoding_format": "int8"},
    ],
)
async def test_invalid_embedding_bodies_get_an_openai_400(
    server: DemoServer, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    status, payload = await post_json(session, f"{server.url}/embeddings", body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_openai_client_base64_embeddings_equal_the_float_ones(
    server: DemoServer, session: aiohttp.ClientSession, client: openai.AsyncOpenAI
) -> None:
    # The openai client asks for base64 unless told otherwise, so both encodings must carry the same numbers.
    response = await client.embeddings.create(model="e", input=["alpha", "beta"], dimensions=8)
    assert server.recorder.requests[-1].body["encoding_format"] == "base64"
    _, floats = await post_json(
        session, f"{server.url}/embeddings", {"model": "e", "input": ["alpha", "beta"], "dimensions": 8}
    )
    assert [item.embedding for item in response.data] == [item["embedding"] for item in floats["data"]]
    assert response.usage.prompt_tokens == 2


@pytest.mark.asyncio
async def test_embeddings_base64_is_little_endian_float32(server: DemoServer, session: aiohttp.ClientSession) -> None:
    url = f"{server.url}/embeddings"
    _, encoded = await post_json(session, url, {"model": "e", "input": "x", "encoding_format": "base64"})
    _, floats = await post_json(session, url, {"model": "e", "input": "x", "encoding_format": "float"})
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack(f"<{DEFAULT_EMBEDDING_DIMENSIONS}f", raw)) == floats["data"][0]["embedding"]


# ---------------------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_recorder_keeps_path_body_headers_authorization_and_request_id(server: DemoServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.url, api_key="sk-provider-credential", max_retries=0, default_headers={"X-Request-ID": "req-42"}
    ) as provider_client:
        await provider_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.5
        )
    [recorded] = server.recorder.requests
    assert recorded.path == "/v1/chat/completions"
    assert recorded.method == "POST"
    assert recorded.body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    assert recorded.headers["authorization"] == "Bearer sk-provider-credential"
    assert recorded.authorization == "Bearer sk-provider-credential"
    assert recorded.request_id == "req-42"
    assert all(name == name.lower() for name in recorded.headers)
    assert recorded.finished.is_set() and recorded.completed and not recorded.disconnected
    assert recorded.status == 200


@pytest.mark.asyncio
async def test_recorder_records_errors_streams_and_bodyless_requests(
    server: DemoServer, session: aiohttp.ClientSession
) -> None:
    await post_json(session, f"{server.url}/chat/completions", chat_body(), {"x-demo-status": "500"})
    await stream_events(session, server, chat_body(stream=True))
    async with session.get(f"{server.url}/models") as response:
        await response.read()
    errored, streamed, listed = server.recorder.requests
    assert (errored.status, errored.completed) == (500, True)
    assert streamed.completed and streamed.body["stream"] is True
    assert (listed.method, listed.body, listed.request_id, listed.completed) == ("GET", {}, None, True)


@pytest.mark.asyncio
async def test_unknown_v1_paths_are_recorded_404s(server: DemoServer, session: aiohttp.ClientSession) -> None:
    status, payload = await post_json(session, f"{server.url}/audio/speech", {"model": "m", "input": "hi"})
    assert status == 404
    assert payload["error"]["code"] == "unknown_url"
    assert server.recorder.requests[-1].path == "/v1/audio/speech"
    assert server.recorder.requests[-1].body == {"model": "m", "input": "hi"}


@pytest.mark.asyncio
async def test_disconnect_mid_stream_is_recorded(server: DemoServer, session: aiohttp.ClientSession) -> None:
    headers = {"x-demo-tokens": "1000", "x-demo-delay-ms": "20"}
    response = await session.post(f"{server.url}/chat/completions", json=chat_body(stream=True), headers=headers)
    for _ in range(3):
        assert (await response.content.readline()).startswith(b"data: ")
        await response.content.readline()
    response.close()
    recorded = await server.recorder.wait_for(lambda r: r.disconnected, timeout=5.0)
    assert recorded.finished.is_set() and not recorded.completed and not recorded.dropped


@pytest.mark.asyncio
async def test_disconnect_mid_stream_via_openai_client_is_recorded(
    server: DemoServer, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-demo-tokens": "1000", "x-demo-delay-ms": "20"},
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.close()
    recorded = await server.recorder.wait_for(lambda r: r.disconnected, timeout=5.0)
    assert not recorded.completed


@pytest.mark.asyncio
@pytest.mark.parametrize("knob", ["x-demo-ttft-ms", "x-demo-headers-delay-ms"])
@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_during_a_wait_is_recorded(
    server: DemoServer, session: aiohttp.ClientSession, knob: str, stream: bool
) -> None:
    body = chat_body(stream=stream)
    request = asyncio.ensure_future(session.post(f"{server.url}/chat/completions", json=body, headers={knob: "30000"}))
    if stream and knob == "x-demo-ttft-ms":
        response = await request  # headers are out; the client walks away during the ttft wait
        await server.recorder.wait_for(lambda r: True)
        response.close()
    else:
        await server.recorder.wait_for(lambda r: True)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    recorded = await server.recorder.wait_for(lambda r: r.disconnected, timeout=5.0)
    assert recorded.finished.is_set()
    assert not recorded.completed


@pytest.mark.asyncio
async def test_wait_for_times_out_when_nothing_matches(server: DemoServer, session: aiohttp.ClientSession) -> None:
    await post_json(session, f"{server.url}/chat/completions", chat_body())
    with pytest.raises(TimeoutError):
        await server.recorder.wait_for(lambda r: r.disconnected, timeout=0.05)


@pytest.mark.asyncio
async def test_wait_for_sees_requests_that_arrive_later(server: DemoServer, session: aiohttp.ClientSession) -> None:
    waiter = asyncio.ensure_future(server.recorder.wait_for(lambda r: r.request_id == "late" and r.completed))
    await asyncio.sleep(0)
    assert not waiter.done()
    await post_json(session, f"{server.url}/chat/completions", chat_body(), {"x-request-id": "late"})
    recorded = await waiter
    assert recorded.request_id == "late"


def test_recorder_clear_and_validation() -> None:
    recorder = DemoRecorder()
    recorder.requests.append(RecordedRequest(path="/v1/models", headers={}, body={}))
    recorder.clear()
    assert recorder.requests == []
    assert DemoRecorder(max_requests=None).max_requests is None
    with pytest.raises(ValueError):
        DemoRecorder(max_requests=0)


@pytest.mark.asyncio
async def test_recorder_keeps_only_the_most_recent_requests(session: aiohttp.ClientSession) -> None:
    recorder = DemoRecorder(max_requests=4)
    demo = await start_demo_upstream("127.0.0.1", 0, recorder)
    try:
        for index in range(20):
            await post_json(session, f"{demo.url}/chat/completions", chat_body(), {"x-request-id": str(index)})
        assert 4 <= len(recorder.requests) <= 5
        assert recorder.requests[-1].request_id == "19"
        ids = [int(r.request_id or -1) for r in recorder.requests]
        assert ids == sorted(ids) and ids == list(range(20 - len(ids), 20))
    finally:
        await demo.close()


# ---------------------------------------------------------------------------------------------------------------
# App, server and command line
# ---------------------------------------------------------------------------------------------------------------


def test_build_demo_app_stores_the_recorder() -> None:
    recorder = DemoRecorder()
    assert build_demo_app(recorder)[DEMO_RECORDER_KEY] is recorder
    assert isinstance(build_demo_app()[DEMO_RECORDER_KEY], DemoRecorder)


@pytest.mark.asyncio
async def test_app_runs_under_a_caller_owned_runner(session: aiohttp.ClientSession) -> None:
    recorder = DemoRecorder()
    runner = web.AppRunner(build_demo_app(recorder), handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        status, _ = await post_json(session, f"http://127.0.0.1:{port}/v1/chat/completions", chat_body())
        assert status == 200
        assert recorder.requests[0].completed
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_server_url_port_keepalive_and_idempotent_close(session: aiohttp.ClientSession) -> None:
    demo = await start_demo_upstream()
    try:
        assert demo.port > 0
        assert demo.url == f"http://127.0.0.1:{demo.port}/v1"
        for _ in range(3):
            async with session.post(f"{demo.url}/chat/completions", json=chat_body()) as response:
                assert response.status == 200
                assert response.headers.get("Connection", "").lower() != "close"
                await response.read()
    finally:
        await demo.close()
        await demo.close()


@pytest.mark.asyncio
async def test_main_runs_standalone_and_prints_the_url() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clexproxy.demo.upstream",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(PROJECT_ROOT),
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with aiohttp.ClientSession() as standalone, standalone.get(f"{url}/models") as response:
            assert response.status == 200
    finally:
        if process.returncode is None:
            process.terminate()
        return_code = await asyncio.wait_for(process.wait(), timeout=20)
    assert return_code == 0
