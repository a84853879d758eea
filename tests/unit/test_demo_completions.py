"""Tests for the demo upstream's legacy completions (``POST /v1/completions``): the fixture the gateway's
``/v1/completions`` stands on, so its answers must be OpenAI's shapes, byte for byte, with chat's words and counts.

Driven over real sockets with aiohttp against `start_demo_upstream`; golden bodies are written out in full
(``created`` is the clock's, so it is checked to be an int and then pinned).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from clexproxy.demo.upstream import DemoServer
from tests.cut_streams import read_until_cut

MODEL = "gpt-3.5-turbo-instruct"
PROMPT = "hello there world"
ANSWER = "delta tundra jade uniform alpha nebula delta granite "  # chat's answer to PROMPT (8 tokens by default)
ANSWER_WORDS = ANSWER.split()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def post(
    session: aiohttp.ClientSession, server: DemoServer, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with session.post(f"{server.url}/completions", json=body, headers=headers or {}) as response:
        return response.status, dict(response.headers), orjson.loads(await response.read())


def pinned(payload: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(payload["created"], int)
    return {**payload, "created": 0}


async def stream_frames(
    session: aiohttp.ClientSession, server: DemoServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[bytes, list[Any]]:
    """The raw stream and its data payloads (``[DONE]`` as the string), ``created`` pinned to 0."""
    async with session.post(
        f"{server.url}/completions", json={**body, "stream": True}, headers=headers or {}
    ) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        raw = await response.read()
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    payloads: list[Any] = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and b"\n" not in frame
        data = frame[len(b"data: "):]
        payloads.append("[DONE]" if data == b"[DONE]" else pinned(orjson.loads(data)))
    return raw, payloads


def chunk(text: str, index: int = 0, finish: str | None = None, cid: str = "cmpl-demo-1", **extra: Any) -> Any:
    return {"id": cid, "object": "text_completion", "created": 0,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}], "model": MODEL,
            **extra}  # fmt: skip


# -- non-stream ------------------------------------------------------------------------------------------------


async def test_golden_answer_matches_the_chat_endpoint(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, headers, payload = await post(session, upstream, {"model": MODEL, "prompt": PROMPT})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert pinned(payload) == {
        "id": "cmpl-demo-1",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"text": ANSWER, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
    }
    _, _, chat = await post(session, upstream, {"model": MODEL, "prompt": PROMPT})  # the same again
    assert chat["choices"][0]["text"] == ANSWER and chat["id"] == "cmpl-demo-2"
    async with session.post(f"{upstream.url}/chat/completions",
                            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}) as response:
        chat = orjson.loads(await response.read())
    assert chat["choices"][0]["message"]["content"] == ANSWER and chat["usage"]["prompt_tokens"] == 3
    recorded = upstream.recorder.requests[0]
    assert recorded.path == "/v1/completions" and recorded.body == {"model": MODEL, "prompt": PROMPT}
    assert recorded.completed and recorded.status == 200


async def test_golden_prompts_n_echo_and_stop(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    body = {"model": MODEL, "prompt": ["a b", "c"], "n": 2, "echo": True, "stop": ["o", "zz"], "logprobs": None,
            "temperature": 0.2, "suffix": None}  # fmt: skip
    status, _, payload = await post(session, upstream, body)
    assert status == 200
    first = {"text": "a bindia prairie tundra h", "logprobs": None, "finish_reason": "stop"}
    second = {"text": "clumen anch", "logprobs": None, "finish_reason": "stop"}
    assert pinned(payload) == {
        "id": "cmpl-demo-1",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{**first, "index": 0}, {**first, "index": 1}, {**second, "index": 2}, {**second, "index": 3}],
        # "hotel " holds the stop: it counts (4 tokens); "anchor " too (2 tokens); each copy is charged; prompts once
        "usage": {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15},
    }


async def test_legacy_default_of_16_tokens_and_max_tokens(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, _, payload = await post(session, upstream, {"model": MODEL, "prompt": PROMPT}, {"x-demo-tokens": "40"})
    assert status == 200 and payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"]["completion_tokens"] == 16 and len(payload["choices"][0]["text"].split()) == 16
    _, _, payload = await post(session, upstream, {"model": MODEL, "prompt": PROMPT, "max_tokens": 3})
    assert payload["choices"][0] == {"text": "delta tundra jade ", "index": 0, "logprobs": None,
                                     "finish_reason": "length"}  # fmt: skip
    assert payload["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_suffix_joins_the_seed_and_is_not_returned(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    _, _, plain = await post(session, upstream, {"model": MODEL, "prompt": "def f(", "suffix": None})
    _, _, with_suffix = await post(session, upstream, {"model": MODEL, "prompt": "def f(", "suffix": " return x"})
    assert plain["usage"]["prompt_tokens"] == 2 and with_suffix["usage"]["prompt_tokens"] == 4
    assert with_suffix["choices"][0]["text"] != plain["choices"][0]["text"]
    assert "return" not in with_suffix["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": MODEL}, "prompt", "missing_required_parameter"),
        ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt", "unsupported_value"),
        ({"model": MODEL, "prompt": [[1, 2], [3]]}, "prompt", "unsupported_value"),
        ({"model": MODEL, "prompt": []}, "prompt", "invalid_type"),
        ({"model": MODEL, "prompt": ["a", 1]}, "prompt", "invalid_type"),
        ({"model": MODEL, "prompt": "x", "logprobs": 5}, "logprobs", "unsupported_value"),
        ({"model": MODEL, "prompt": "x", "suffix": 7}, "suffix", "invalid_type"),
        ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"model": MODEL, "prompt": "x", "stop": ""}, "stop", "invalid_value"),
        ({"model": MODEL, "prompt": "x", "n": 0}, "n", "invalid_value"),
        ({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens", "invalid_value"),
        ({"model": MODEL, "prompt": "x", "echo": "yes"}, "echo", "invalid_type"),
        ({"model": MODEL, "prompt": "x", "stream": 1}, "stream", "invalid_type"),
        ({"prompt": "x"}, "model", "missing_required_parameter"),
    ],
)
async def test_bad_fields_get_a_400_naming_them(
    session: aiohttp.ClientSession, upstream: DemoServer, body: dict[str, Any], param: str, code: str
) -> None:
    status, _, payload = await post(session, upstream, body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param and payload["error"]["code"] == code
    assert upstream.recorder.requests[0].status == 400


# -- stream ----------------------------------------------------------------------------------------------------


async def test_golden_stream_with_usage(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "stream_options": {"include_usage": True}}
    raw, payloads = await stream_frames(session, upstream, body, {"x-demo-tokens": "2"})
    assert payloads == [
        chunk("delta ", usage=None),
        chunk("tundra ", usage=None),
        chunk("", finish="stop", usage=None),
        {"id": "cmpl-demo-1", "object": "text_completion", "created": 0, "choices": [], "model": MODEL,
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        "[DONE]",
    ]
    created = orjson.loads(raw.split(b"\n\n")[0][len(b"data: "):])["created"]
    first = (b'data: {"id":"cmpl-demo-1","object":"text_completion","created":%d,' % created
             + b'"choices":[{"text":"delta ","index":0,"logprobs":null,"finish_reason":null}],'
             + b'"model":"gpt-3.5-turbo-instruct","usage":null}\n\n')
    assert raw.startswith(first) and raw.endswith(b"\n\ndata: [DONE]\n\n")
    assert (await upstream.recorder.wait_for(lambda seen: seen.completed)).status == 200


async def test_golden_stream_without_usage_is_the_answer(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    _, payloads = await stream_frames(session, upstream, {"model": MODEL, "prompt": PROMPT})
    assert payloads == [*(chunk(word + " ") for word in ANSWER_WORDS), chunk("", finish="stop"), "[DONE]"]


async def test_golden_stream_of_two_prompts_with_echo(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    body = {"model": MODEL, "prompt": ["a b", "c"], "echo": True, "max_tokens": 2, "stop": "o"}
    _, payloads = await stream_frames(session, upstream, body, {"x-demo-tokens": "3"})
    # "a b" answers "india prairie" (cut by max_tokens); "c" answers "lumen anchor" cut before its "o" after "anch"
    assert payloads == [
        chunk("a b", 0), chunk("c", 1),
        chunk("india ", 0), chunk("lumen ", 1),
        chunk("prairie ", 0), chunk("anch", 1),
        chunk("", 0, finish="length"), chunk("", 1, finish="stop"),
        "[DONE]",
    ]  # fmt: skip


# -- knobs -----------------------------------------------------------------------------------------------------


async def test_injected_errors_and_missing_models(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    body = {"model": MODEL, "prompt": PROMPT}
    status, headers, payload = await post(session, upstream, body, {"x-demo-status": "429", "x-demo-retry-after": "3"})
    assert status == 429 and headers["Retry-After"] == "3"
    assert payload == {"error": {"message": "rate limited", "type": "rate_limit_error", "param": None,
                                 "code": "rate_limit_exceeded"}}  # fmt: skip
    status, _, payload = await post(session, upstream, body, {"x-demo-model-missing": "1"})
    assert status == 404 and payload["error"]["code"] == "model_not_found" and payload["error"]["param"] == "model"
    fail_once = {"x-demo-fail-times": "1", "x-demo-fail-key": "cmpl", "x-demo-status": "503"}
    assert (await post(session, upstream, body, fail_once))[0] == 503
    assert (await post(session, upstream, body, fail_once))[0] == 200
    status, _, payload = await post(session, upstream, body, {"x-demo-tokens": "lots"})
    assert status == 400 and payload["error"]["code"] == "invalid_demo_header"


async def test_stream_drop_cuts_before_the_ending(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    async with session.post(f"{upstream.url}/completions", json={"model": MODEL, "prompt": PROMPT, "stream": True},
                            headers={"x-demo-drop-after": "2", "x-demo-delay-ms": "1"}) as response:
        raw = await read_until_cut(response)
    assert raw.count(b"data: ") == 2 and b'"finish_reason":"stop"' not in raw and b"[DONE]" not in raw
    assert (await upstream.recorder.wait_for(lambda seen: seen.dropped)).dropped


async def test_non_stream_drop_sends_headers_only(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(f"{upstream.url}/completions", json={"model": MODEL, "prompt": PROMPT},
                                headers={"x-demo-drop-after": "0"}) as response:
            assert response.status == 200
            await response.read()
    assert (await upstream.recorder.wait_for(lambda seen: seen.dropped)).path == "/v1/completions"
