"""Chat completions end to end: the official openai client → clexproxy → the demo upstream."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from clexproxy.demo.recorder import DemoRecorder

from .conftest import RunningGateway

MODEL = "meta/llama-3.3-70b-instruct"  # large: 3 credits
HELLO = [{"role": "user", "content": "Hello there!"}]
METERING_HEADERS = (
    "X-Clex-Credits-Remaining",
    "X-Clex-Credits-Limit",
    "X-Clex-Credits-Reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "X-Request-Id",
)


async def test_non_streaming_answer_usage_and_headers(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, stream=False)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    for name in METERING_HEADERS:
        assert raw.headers.get(name), name
    assert raw.headers["X-Clex-Credits-Remaining"] == "1997"
    assert raw.headers["X-Clex-Credits-Limit"] == "2000"
    assert raw.headers["x-ratelimit-limit-requests"] == "200"
    assert raw.headers["x-ratelimit-remaining-requests"] == "199"
    # 12:00 UTC on the manual clock: twelve hours to the reset.
    assert raw.headers["X-Clex-Credits-Reset"] == str(12 * 3600)
    assert float(raw.headers["X-Clex-Overhead-Ms"]) >= 0.0


async def test_streaming_matches_non_streaming(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    whole = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=False)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    # The client did not ask for usage: the gateway asked for it and stripped the usage-only chunk.
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


async def test_streaming_usage_when_client_asks(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


async def test_sse_headers_and_done(gw: RunningGateway, key: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        for name in METERING_HEADERS:
            assert resp.headers.get(name), name
        body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' not in body


async def test_defaults_reach_the_upstream(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        await resp.read()
    body = recorder.requests[-1].body
    assert body["stream"] is True
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert "max_tokens" not in body
    assert body["stream_options"] == {"include_usage": True}


async def test_openai_sdk_without_stream_gets_a_completion(
    gw: RunningGateway, key: str, recorder: DemoRecorder
) -> None:
    """The SDKs omit `stream` for plain calls and send `Accept: application/json`: they must get JSON, not SSE."""
    completion = await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.object == "chat.completion" and completion.choices[0].message.content
    assert recorder.requests[-1].body["stream"] is False


@pytest.mark.parametrize(("accept", "streamed"), [("application/json", False), ("text/event-stream", True),
                                                  ("*/*", True)])
async def test_default_stream_by_accept_header(gw: RunningGateway, key: str, accept: str, streamed: bool) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}", "Accept": accept},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream" if streamed else "application/json")


async def test_explicit_values_and_other_fields_pass_through(
    gw: RunningGateway, key: str, recorder: DemoRecorder
) -> None:
    client = gw.client(key)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=False,
        temperature=0.0,
        top_p=1.0,
        max_tokens=5,
        seed=42,
        stop=["\n"],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        response_format={"type": "text"},
        user="end-user-7",
        extra_body={"logit_bias": {"50256": -100}},
    )
    body = recorder.requests[-1].body
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and body["max_tokens"] == 5
    assert body["seed"] == 42 and body["stop"] == ["\n"] and body["tools"] == tools
    assert body["tool_choice"] == "auto" and body["response_format"] == {"type": "text"}
    assert body["user"] == "end-user-7" and body["logit_bias"] == {"50256": -100}
    assert body["stream"] is False and "stream_options" not in body


async def test_upstream_gets_provider_credential_not_client_key(
    gw: RunningGateway, key: str, recorder: DemoRecorder
) -> None:
    await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, stream=False)
    seen = recorder.requests[-1].headers
    assert key not in " ".join(seen.values())
    assert "authorization" not in seen  # the demo provider has no credential configured


async def test_request_id_echoed_and_forwarded(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, stream=False, extra_headers={"X-Request-Id": "trace-abc-123"}
    )
    assert raw.headers["X-Request-Id"] == "trace-abc-123"
    assert recorder.requests[-1].request_id == "trace-abc-123"
    other = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, stream=False)
    assert other.headers["X-Request-Id"] and other.headers["X-Request-Id"] != "trace-abc-123"


async def test_stream_relayed_byte_for_byte(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    """With include_usage asked for, the client gets exactly the upstream's bytes."""
    body = {"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            via_gateway = await resp.read()
        sent = recorder.requests[-1].body
        upstream_url = gw.gateway.catalog.providers["demo"].base_url
        async with session.post(upstream_url + "/chat/completions", data=orjson.dumps(sent)) as resp:
            direct = await resp.read()

    def normalise(raw: bytes) -> bytes:
        # The demo upstream numbers its answers; everything else must match to the byte.
        out = []
        for event in raw.split(b"\n\n"):
            if event.startswith(b"data: {"):
                doc = orjson.loads(event[6:])
                doc["id"], doc["created"] = "x", 0
                event = b"data: " + orjson.dumps(doc)
            out.append(event)
        return b"\n\n".join(out)

    assert normalise(via_gateway) == normalise(direct)
    assert via_gateway.count(b"\n\n") == direct.count(b"\n\n")


async def test_api_chat_alias(gw: RunningGateway, key: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/api/chat",
        json={"model": MODEL, "messages": HELLO, "stream": False},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["object"] == "chat.completion"


async def test_embeddings(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    raw = await client.embeddings.with_raw_response.create(model="nvidia/nv-embedqa-e5-v5", input=["a", "b"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert raw.headers["X-Clex-Credits-Remaining"] == "1999"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_keepalive_while_first_token_is_slow(make_gateway, path: str) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(sse_keepalive_seconds=0.1)
    key = await gw.add_key("slow", "pro")
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + path,
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}", "x-demo-ttft-ms": "450"},
    ) as resp:
        body = await resp.read()
    assert body.startswith(b": keep-alive\n\n")
    assert body.endswith(b"data: [DONE]\n\n")
