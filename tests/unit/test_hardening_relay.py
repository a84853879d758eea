"""Issue 10, relay and upstream pieces on their own: scrubbing, Retry-After, the attempt plan, the SSE frames.

The frames are fed as an upstream's reads would come (whole events, events split across reads);
`answer_headers` is exercised through a real aiohttp server relaying from the demo upstream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import formatdate
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from clexproxy import relay
from clexproxy.catalog import Deployment, Model, Provider, default_catalog
from clexproxy.config import Settings, load_settings
from clexproxy.demo.upstream import DemoServer
from clexproxy.errors import MAX_RETRY_AFTER, RateLimited, ServiceUnavailable, retry_after_values
from clexproxy.fastpath.sse import SSEParser
from clexproxy.keepalive import KEEPALIVE, KeepAlives
from clexproxy.outcome import CallOutcome
from clexproxy.sse_frames import Frames, _carries_nothing
from clexproxy.upstream.failures import Scrubber, retry_after
from clexproxy.upstream.http1 import Origin
from clexproxy.upstream.pool import UpstreamPool, UpstreamReply

SECRET = "nvapi-unit-SECRET-0123456789"
CLEX = "meta/llama-3.3-70b-instruct"

# ---------------------------------------------------------------------------------------------
# 2. Scrubbing upstream error text
# ---------------------------------------------------------------------------------------------

SCRUB = Scrubber([SECRET], ["integrate.api.nvidia.com", "vllm"])


@pytest.mark.parametrize("leak", [
    "10.0.0.5:8000", "api.internal:443", "[::1]:9000", "[fe80::1%eth0]:80", "vllm-box:8000", "my_svc:8080",
    "localhost:11434", "http://10.0.0.5:8000/v1/chat", "https://integrate.api.nvidia.com/v1", "grpc://triton:8001",
    "integrate.api.nvidia.com", "192.168.1.20", "[2001:db8::7]", SECRET, f"Bearer {SECRET[:12]}",
])
def test_scrub_removes_every_host_port_url_and_credential(leak: str) -> None:
    text = SCRUB(f"upstream failed talking to {leak} (again)")
    assert leak not in text
    assert text.startswith("upstream failed talking to [redacted") and text.endswith(" (again)")


def test_scrub_names_the_clex_model_not_the_deployment() -> None:
    text = SCRUB("model 'llama3.3:70b' is not loaded; try llama3.3:70b-q4 or meta/llama3.3:70b", "llama3.3:70b", CLEX)
    assert text == f"model '{CLEX}' is not loaded; try llama3.3:70b-q4 or meta/llama3.3:70b"
    # A one-letter deployment name is replaced where it stands alone, not inside words.
    assert SCRUB("model m: max tokens exceeded", "m", CLEX) == f"model {CLEX}: max tokens exceeded"
    # The catalog id itself is never taken for a host.
    assert SCRUB("m failed", "m", "local:8000") == "local:8000 failed"


def test_scrub_keeps_words_that_only_look_like_ports() -> None:
    text = "resets at 12:30 UTC; error at line 1:5; model llama3.1:8b"
    assert SCRUB(text) == text
    assert len(SCRUB("x" * 2000)) == 500


# ---------------------------------------------------------------------------------------------
# 5 / 9. Retry-After
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (math.inf, (86_400, 86_400_000)), (1e308, (86_400, 86_400_000)), (math.nan, (1, 1)), (-5.0, (1, 1)),
    (0.0, (1, 1)), (0.0004, (1, 1)), (1.5, (2, 1500)), (86_400.5, (86_400, 86_400_000)),
])
def test_service_unavailable_caps_and_sanitizes_retry_after(value: float, expected: tuple[int, int]) -> None:
    """Item 5: ServiceUnavailable(retry_after=inf) raised OverflowError (a 500); nan/negative are 1 s."""
    error = ServiceUnavailable("busy", retry_after=value)
    assert (int(error.headers["Retry-After"]), int(error.headers["retry-after-ms"])) == expected
    assert retry_after_values(value) == expected
    limited = RateLimited("slow down", limit="requests_per_minute", retry_after=value)
    assert int(limited.headers["Retry-After"]) == expected[0]


def headers(value: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Retry-After": value}))


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 1.0), ("-3", 1.0), ("nan", 1.0), ("inf", MAX_RETRY_AFTER),
    ("1e308", MAX_RETRY_AFTER), ("999999999", MAX_RETRY_AFTER), ("soon", 1.0), ("", 1.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),  # a date in the past: retry at once
])
def test_upstream_retry_after_is_parsed_and_capped(value: str, expected: float) -> None:
    """Item 9: capped at a day as the 429's is; unusable values are 1 s."""
    assert retry_after(headers(value)) == expected


def test_upstream_retry_after_http_date_is_honoured() -> None:
    """Item 9: an HTTP-date is a wait until then (it was read as 1 s)."""
    seconds = retry_after(headers(formatdate(time.time() + 600, usegmt=True)))
    assert 500 < seconds <= 600
    far = retry_after(headers(formatdate(time.time() + 30 * 86_400, usegmt=True)))
    assert far == MAX_RETRY_AFTER


# ---------------------------------------------------------------------------------------------
# 17. Attempts per call are capped
# ---------------------------------------------------------------------------------------------


def pool(**overrides: Any) -> tuple[UpstreamPool, Settings]:
    settings = load_settings(env={}, overrides=overrides)
    return UpstreamPool(settings.upstream, settings.catalog, settings.credentials), settings


def four_deployments(settings: Settings) -> Model:
    model = settings.catalog.models[CLEX]
    return Model(model.id, model.tier, model.context_length, model.max_output_tokens,
                 tuple(Deployment("nvidia", f"d{i}") for i in range(4)))


@pytest.mark.parametrize(("retries", "cap", "primary", "fallbacks"), [
    (0, 6, 4, 1), (2, 6, 5, 1), (5, 6, 5, 1), (2, 1, 1, 0), (2, 2, 1, 1), (1, 20, 8, 1), (0, 4, 3, 1),
])
def test_plan_is_capped_and_keeps_the_fallback(retries: int, cap: int, primary: int, fallbacks: int) -> None:
    """Item 17: deployments x (1 + retries) + fallback had no bound; now `upstream_max_attempts` bounds it."""
    upstream, settings = pool(upstream_retries=retries, upstream_max_attempts=cap)
    plan = upstream._plan(four_deployments(settings))
    assert len(plan) == primary + fallbacks <= cap
    assert [fb for _, _, fb in plan] == [False] * primary + [True] * fallbacks
    assert [d.model for _, d, _ in plan[:primary]] == [f"d{i % 4}" for i in range(primary)]


def test_plan_without_a_fallback_uses_the_whole_cap() -> None:
    upstream, settings = pool(upstream_retries=3, upstream_max_attempts=6)
    fallback = settings.catalog.models[settings.catalog.fallback_model or ""]
    assert len(upstream._plan(fallback)) == 4  # one deployment, 1 + 3 tries, no fallback of its own
    assert len(upstream._plan(four_deployments(settings))) == 6


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="upstream_max_attempts"):
        load_settings(env={}, overrides={"upstream_max_attempts": 0})


# ---------------------------------------------------------------------------------------------
# The SSE frames: 2 (error events), 8 (malformed usage), 15 (after [DONE]), 16 (usage), 17 (model)
# ---------------------------------------------------------------------------------------------

PROVIDER = Provider("p", "http://10.9.8.7:8000/v1", api_key_env="X")


def reply(upstream_name: str = CLEX) -> UpstreamReply:
    model = default_catalog().models[CLEX]
    return UpstreamReply(cast(Any, None), model, Deployment("p", upstream_name), PROVIDER, False,
                         Scrubber([SECRET], ["10.9.8.7"]), parser=SSEParser())


def chunk(model: str, text: str | None = None, usage: bool = False, choices: Any = None) -> bytes:
    doc: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "model": model}
    doc["choices"] = choices if choices is not None else (
        [] if text is None else [{"index": 0, "delta": {"content": text}, "finish_reason": None}])
    if usage:
        doc["usage"] = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def relay_all(frames: Frames, reads: list[bytes]) -> bytes:
    return b"".join(frames.feed(r) for r in reads)


def split_everywhere(data: bytes) -> list[list[bytes]]:
    """The stream as one read, and as two reads split at every byte."""
    return [[data]] + [[data[:i], data[i:]] for i in range(1, len(data))]


def test_frames_rename_the_model_in_every_chunk_whole_or_split() -> None:
    """Item 17: a deployment's own name never reaches the client, however the reads fall."""
    stream = (chunk("up-70b", "Hi") + b": comment\n\n" + chunk("up-70b", " there")
              + chunk("up-70b", usage=True) + DONE)
    for wants_usage in (True, False):
        for reads in split_everywhere(stream):
            frames = Frames(reply("up-70b"), wants_usage, CallOutcome("/chat/completions", 0.0))
            out = relay_all(frames, reads)
            assert b"up-70b" not in out and frames.finished
            docs = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
            assert {d["model"] for d in docs} == {CLEX}
            assert len(docs) == (3 if wants_usage else 2)


def test_frames_relay_byte_for_byte_when_the_names_agree() -> None:
    stream = chunk(CLEX, "Hi") + chunk(CLEX, " there") + chunk(CLEX, usage=True) + DONE
    for reads in split_everywhere(stream):
        frames = Frames(reply(), True, CallOutcome("/chat/completions", 0.0))
        assert relay_all(frames, reads) == stream


def test_frames_end_at_an_error_event_keeping_what_came_before() -> None:
    """Item 2: the upstream's error event never goes out as it came; the events before it do."""
    leaky = {"error": {"message": f"up-70b at 10.9.8.7:8000 said no (key {SECRET})", "code": 503}}
    before = chunk("up-70b", "Hi") + chunk("up-70b", " there")
    stream = before + b"data: " + orjson.dumps(leaky) + b"\n\n" + chunk("up-70b", "never") + DONE
    for reads in split_everywhere(stream):
        outcome = CallOutcome("/chat/completions", 0.0)
        frames = Frames(reply("up-70b"), False, outcome)
        out = b""
        for r in reads:
            out += frames.feed(r)
            if frames.failure is not None:
                break
        assert out == before.replace(b"up-70b", CLEX.encode())
        assert not frames.finished and outcome.answer_started
        error = frames.failure
        assert isinstance(error, ServiceUnavailable)  # the upstream said 503
        assert error.message == f"The provider for model '{CLEX}' failed mid-stream: {CLEX} at [redacted-host] " \
                                "said no (key [redacted])"


def test_frames_ignore_the_word_error_in_content() -> None:
    stream = chunk(CLEX, 'say "error"') + chunk(CLEX, None, choices=[{"index": 0, "delta": {}, "finish_reason":
                                                                      "error"}]) + DONE
    frames = Frames(reply(), False, CallOutcome("/chat/completions", 0.0))
    assert frames.feed(stream) == stream and frames.failure is None and frames.finished


def test_frames_relay_content_before_a_malformed_usage_chunk() -> None:
    """Item 8: what came with (or before) the broken usage chunk in one read still goes out."""
    before = chunk(CLEX, "Hi") + chunk(CLEX, " there")
    stream = before + b'data: {"choices": [], "usage": {"prompt_tokens": 4\n\n' + DONE
    for reads in split_everywhere(stream):
        frames = Frames(reply(), False, CallOutcome("/chat/completions", 0.0))
        out = b""
        for r in reads:
            out += frames.feed(r)
            if frames.failure is not None:
                break
        assert out == before
        assert frames.failure is not None and "usage" in frames.failure.message


def test_frames_drop_what_follows_done() -> None:
    """Item 15: `[DONE]` completes the answer; bytes after it in the same read are not relayed."""
    stream = chunk(CLEX, "Hi") + DONE
    frames = Frames(reply(), False, CallOutcome("/chat/completions", 0.0))
    assert frames.feed(stream + b'data: {"after": 1}\n\ndata: {"error": {"message": "late"}}\n\n') == stream
    assert frames.finished and frames.failure is None


def test_frames_strip_unasked_usage_from_a_chunk_with_choices() -> None:
    """Item 16: LiteLLM puts usage on a chunk with choices; usage goes, the chunk stays if it says anything."""
    empty_choice = [{"index": 0, "delta": {}}]
    finishing = [{"index": 0, "delta": {"content": None}, "finish_reason": "stop"}]
    stream = (chunk(CLEX, "Hi") + chunk(CLEX, None, usage=True, choices=finishing)
              + chunk(CLEX, None, usage=True, choices=empty_choice) + DONE)
    for reads in split_everywhere(stream):
        outcome = CallOutcome("/chat/completions", 0.0)
        frames = Frames(reply(), False, outcome)
        out = relay_all(frames, reads)
        events = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
        assert [("usage" in e, e["choices"]) for e in events] == [
            (False, [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]), (False, finishing)]
        assert out.endswith(DONE) and (outcome.prompt_tokens, outcome.completion_tokens) == (4, 2)
        asked = Frames(reply(), True, CallOutcome("/chat/completions", 0.0))
        assert relay_all(asked, reads) == stream


@pytest.mark.parametrize(("choices", "nothing"), [
    ([], True), ([{"index": 0, "delta": {}}], True), ([{"index": 0, "delta": {"content": None, "role": None}}], True),
    ([{"index": 0, "delta": {}, "finish_reason": None, "logprobs": None}], True),
    ([{"index": 0, "delta": {"content": "x"}}], False), ([{"index": 0, "delta": {}, "finish_reason": "stop"}], False),
    ([{"index": 0, "delta": {"role": "assistant"}}], False), (["odd"], False), ("odd", False),
])
def test_carries_nothing(choices: Any, nothing: bool) -> None:
    assert _carries_nothing(choices) is nothing


# ---------------------------------------------------------------------------------------------
# 17 (for the fallback charge). `answer_headers`: called once, after the answer, merged when it can be
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def relaying(upstream: DemoServer) -> AsyncIterator[tuple[str, list[int]]]:
    """A bare aiohttp server relaying a stream from the demo upstream with `answer_headers`.

    `/relay` sends keep-alives after 5 s (never, here); `/relay-eager` after 0.05 s.
    """
    settings = load_settings(env={}, overrides={"demo": True})
    provider = Provider("demo", upstream.url, pass_headers=("x-demo-",))
    catalog = settings.catalog.with_all_models_on(provider)
    upstream_pool = UpstreamPool(settings.upstream, catalog, settings.credentials)
    keepalives = {"/relay": KeepAlives(5.0), "/relay-eager": KeepAlives(0.05)}
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        call = CallOutcome("/chat/completions", time.monotonic(), "rid-1", stream=True)
        body = {"model": CLEX, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        send = upstream_pool.send(catalog.models[CLEX], "/chat/completions", body, request.headers, call)

        def answer_headers() -> Mapping[str, str]:
            calls.append(int(call.fallback))
            return {"X-Answered-By": call.served_model}

        response = web.StreamResponse(status=200, headers={"X-Request-Id": "rid-1", **relay.SSE_HEADERS})
        answer = await relay.stream(request, response, send, False, keepalives[request.path], call,
                                    lambda error: {}, answer_headers=answer_headers)
        assert isinstance(answer, web.StreamResponse)
        return answer

    app = web.Application()
    app.router.add_post("/relay", handler)
    app.router.add_post("/relay-eager", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/relay", calls
    finally:
        await runner.cleanup()
        for keep in keepalives.values():
            keep.close()
        await upstream_pool.close()


async def test_answer_headers_are_merged_once_the_upstream_answered(relaying: tuple[str, list[int]]) -> None:
    url, calls = relaying
    async with aiohttp.ClientSession() as session:
        async with session.post(url) as resp:
            assert resp.headers["X-Answered-By"] == CLEX
            assert (await resp.read()).endswith(DONE)
        assert calls == [0]
        # Served by the fallback after a 503: called once, after the fallback answered.
        async with session.post(url, headers={"x-demo-status": "503", "x-demo-fail-times": "1",
                                              "x-demo-fail-key": "ah"}) as resp:
            assert resp.headers["X-Answered-By"] == "meta/llama-3.1-8b-instruct"
            await resp.read()
        assert calls == [0, 1]


async def test_answer_headers_still_called_when_a_keepalive_sent_the_headers(
    relaying: tuple[str, list[int]]
) -> None:
    url, calls = relaying
    slow_first_token = {"x-demo-ttft-ms": "400"}
    async with aiohttp.ClientSession() as session, session.post(url + "-eager", headers=slow_first_token) as resp:
        assert "X-Answered-By" not in resp.headers  # too late to change them, but the call happened
        body = await resp.read()
    assert body.startswith(KEEPALIVE) and body.endswith(DONE)
    assert calls == [0]


# ---------------------------------------------------------------------------------------------
# 15. A complete answer ends its upstream connection without the caller waiting for it
# ---------------------------------------------------------------------------------------------


async def answer_then(more: asyncio.Event, ending: bytes, ended: asyncio.Event) -> tuple[asyncio.Server, URL]:
    """A raw upstream: `[DONE]` at once, then, once `more` is set, `ending`; it holds the connection until closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            await more.wait()
            writer.write(ending)
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")


async def test_finish_pools_the_connection_once_the_upstream_ends_its_body() -> None:
    more, ended = asyncio.Event(), asyncio.Event()
    server, url = await answer_then(more, b'13\r\ndata: {"late": 1}\n\n\r\n0\r\n\r\n', ended)
    origin = Origin(url, limit=4, keepalive_timeout=15.0, connect_timeout=5.0, read_timeout=30.0)
    try:
        response = await origin.post(origin.request_head("/v1/x", {}), b"", b"{}")
        assert await response.readany() == b"data: [DONE]\n\n"
        response.finish()  # returns at once: the body has not ended
        assert (origin.open_connections, origin.idle_connections) == (1, 0)
        more.set()
        for _ in range(500):  # bounded wait for the background read, not a timing assertion
            if origin.idle_connections:
                break
            await asyncio.sleep(0.01)
        assert (origin.open_connections, origin.idle_connections) == (1, 1)
    finally:
        await origin.close()
        server.close()
        more.set()
        await ended.wait()


async def test_finish_of_a_body_that_never_ends_is_dropped_at_close() -> None:
    more, ended = asyncio.Event(), asyncio.Event()  # `more` set only at the end: the body never ends before
    server, url = await answer_then(more, b"", ended)
    origin = Origin(url, limit=4, keepalive_timeout=15.0, connect_timeout=5.0, read_timeout=30.0)
    try:
        response = await origin.post(origin.request_head("/v1/x", {}), b"", b"{}")
        assert await response.readany() == b"data: [DONE]\n\n"
        response.finish()
        assert origin.open_connections == 1
    finally:
        await origin.close()
        server.close()
        more.set()
        await ended.wait()
    assert (origin.open_connections, origin.idle_connections) == (0, 0)
