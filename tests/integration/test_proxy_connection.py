"""Proxied calls served in the connection's own loop (`ProxyConnection`): what aiohttp's path did around a handler.

Raw sockets, for what HTTP clients do but libraries hide: `Expect: 100-continue` (curl, for a body
over 1 KB), HTTP/1.0, `Connection: close`, pipelined requests mixing proxied calls with the
endpoints aiohttp still serves, and request targets the router matches though they are not the
bare path (a query, an escaped character, the absolute form).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.http_parser import RawRequestMessage

from .conftest import RunningGateway
from .test_hardening_http import BODY, CHEAP, Answer, assert_spec_error, connect, read_answer, request

STREAM_BODY = orjson.dumps({"model": CHEAP, "messages": [{"role": "user", "content": "Hello!"}], "stream": True})


@contextlib.asynccontextmanager
async def opened(gw: RunningGateway) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to the gateway, closed at the end."""
    reader, writer = await connect(gw)
    try:
        yield reader, writer
    finally:
        writer.close()


def assert_chat_answer(answer: Answer) -> None:
    status, headers, body = answer
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert headers["x-clex-credits-remaining"].isdigit()
    assert orjson.loads(body)["object"] == "chat.completion"


async def exchange(gw: RunningGateway, data: bytes, answers: int = 1) -> list[Answer]:
    async with opened(gw) as (reader, writer):
        writer.write(data)
        return [(await read_answer(reader))[0] for _ in range(answers)]


async def test_expect_100_continue_gets_its_100_before_the_body_is_sent(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        full = request(key, extra="Expect: 100-continue\r\n")
        head, body = full[: full.index(b"\r\n\r\n") + 4], full[full.index(b"\r\n\r\n") + 4:]
        writer.write(head)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)


async def test_another_expectation_is_a_417_and_the_connection_serves_on(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        writer.write(request(key, extra="Expect: something-else\r\n"))
        answer, _ = await read_answer(reader)
        assert_spec_error(answer, 417)
        assert answer[1].get("connection") != "close"
        writer.write(request(key))
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)


async def test_http_1_0_gets_an_http_1_0_answer_and_the_connection_ends(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        writer.write(request(key, line="POST /v1/chat/completions HTTP/1.0"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"\r\nConnection:" not in head  # HTTP/1.0 without keep-alive closes: nothing to say
        rest = await asyncio.wait_for(reader.read(), 10)  # to the end: the gateway closed the connection
        assert orjson.loads(rest)["object"] == "chat.completion"


async def test_an_http_1_0_stream_is_not_chunked_and_ends_with_the_connection(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        writer.write(request(key, line="POST /v1/chat/completions HTTP/1.0", extra="Connection: keep-alive\r\n",
                             body=STREAM_BODY))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"text/event-stream" in head
        assert b"Transfer-Encoding" not in head and b"Connection: keep-alive" not in head
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"data: {") and rest.endswith(b"data: [DONE]\n\n")


async def test_an_http_1_0_call_kept_alive_is_answered_and_kept(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        for _ in range(2):
            writer.write(request(key, line="POST /v1/chat/completions HTTP/1.0", extra="Connection: keep-alive\r\n"))
            answer, raw = await read_answer(reader)
            assert raw.startswith(b"HTTP/1.0 200 OK\r\n") and answer[1]["connection"] == "keep-alive"
            assert_chat_answer(answer)


async def test_connection_close_is_answered_then_closed(gw: RunningGateway, key: str) -> None:
    for body in (BODY, STREAM_BODY):
        async with opened(gw) as (reader, writer):
            writer.write(request(key, extra="Connection: close\r\n", body=body))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in head
            rest = await asyncio.wait_for(reader.read(), 10)
            assert rest.endswith(b"}" if body is BODY else b"0\r\n\r\n")


async def test_pipelined_calls_and_other_requests_are_answered_in_order(gw: RunningGateway, key: str) -> None:
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    missing = b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
    answers = await exchange(gw, request(key) + health + request(key) + missing + request(key), answers=5)
    assert_chat_answer(answers[0])
    assert answers[1][0] == 200 and orjson.loads(answers[1][2])["status"] == "ok"
    assert_chat_answer(answers[2])
    assert_spec_error(answers[3], 404)
    assert_chat_answer(answers[4])


@pytest.mark.parametrize("target", [
    "/v1/chat/completions?debug=1", "/v1/chat/%63ompletions", "http://t/v1/chat/completions",
])
async def test_targets_the_router_matches_are_the_endpoint(gw: RunningGateway, key: str, target: str) -> None:
    [answer] = await exchange(gw, request(key, line=f"POST {target} HTTP/1.1"))
    assert_chat_answer(answer)


async def test_targets_the_router_does_not_match_are_not_the_endpoint(gw: RunningGateway, key: str) -> None:
    for target in ("/v1/chat/completions/", "/v1/chat%2Fcompletions", "/V1/chat/completions"):
        [answer] = await exchange(gw, request(key, line=f"POST {target} HTTP/1.1"))
        assert_spec_error(answer, 404)
    [answer] = await exchange(gw, request(key, line="PUT /v1/chat/completions HTTP/1.1"))
    assert_spec_error(answer, 405)
    assert answer[1]["allow"] == "POST, OPTIONS"


async def test_a_chunked_body_is_read_as_aiohttp_reads_it(gw: RunningGateway, key: str) -> None:
    half = len(BODY) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, BODY[:half], len(BODY) - half, BODY[half:])
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    [answer] = await exchange(gw, head + chunked)
    assert_chat_answer(answer)


async def test_an_open_stream_lets_go_of_the_parse_of_its_request_head(gw: RunningGateway, key: str) -> None:
    """A stream can last minutes: once its upstream has answered, aiohttp's message of its head is not held."""
    probe = "/v1/chat/completions?probe=head"  # a target no other call of the suite uses
    async with opened(gw) as (reader, writer):
        writer.write(request(key, line=f"POST {probe} HTTP/1.1", body=STREAM_BODY, extra="x-demo-delay-ms: 200\r\n"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the upstream has answered
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        gc.collect()
        held = [m for m in gc.get_objects() if isinstance(m, RawRequestMessage) and m.path == probe]
        assert held == []
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):  # the stream still runs to its end
            rest += await asyncio.wait_for(reader.read(65536), 10)
        assert b"data: [DONE]" in rest
