"""The lean connection (`LeanConnection`): plain calls served by it, the rest handed to aiohttp mid-connection.

Raw sockets, so the tests choose what shares a connection and how its bytes are cut: a body in
pieces, an answer that leaves before its body is whole, requests queued behind a call, and a
connection whose next request is one only aiohttp serves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import orjson
import pytest
from aiohttp import web

from clexproxy.server.lean_connection import HEAD_READS, PIPELINE_LIMIT, LeanConnection
from clexproxy.server.proxy_connection import ProxyConnection, ProxyServer

from .conftest import GatewayFactory, RunningGateway
from .test_hardening_http import BODY, assert_spec_error, closed, read_answer, request
from .test_proxy_connection import assert_chat_answer, opened

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def kinds(gw: RunningGateway) -> list[type]:
    server = gw.runner.server
    assert server is not None
    return [type(conn) for conn in server.connections]


async def settled(gw: RunningGateway, expected: list[type]) -> list[type]:
    for _ in range(100):
        if kinds(gw) == expected:
            break
        await asyncio.sleep(0.01)
    return kinds(gw)


async def test_plain_calls_stay_lean_until_a_request_only_aiohttp_serves(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        for _ in range(3):
            writer.write(request(key))
            answer, _ = await read_answer(reader)
            assert_chat_answer(answer)
            assert kinds(gw) == [LeanConnection]
        writer.write(HEALTH + request(key))  # aiohttp takes over at the GET, and serves the call after it
        (status, _, _), _ = await read_answer(reader)
        assert status == 200
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert kinds(gw) == [ProxyConnection]
    assert await settled(gw, []) == []


async def test_a_body_in_pieces_and_the_call_after_it(gw: RunningGateway, key: str) -> None:
    raw = request(key)
    async with opened(gw) as (reader, writer):
        cuts = [0, 10, raw.index(b"\r\n\r\n") + 4, len(raw) - 7, len(raw)]
        for start, end in itertools.pairwise(cuts):
            writer.write(raw[start:end])
            await writer.drain()
            await asyncio.sleep(0.05)
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        writer.write(raw)
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert kinds(gw) == [LeanConnection]


async def test_an_answer_before_the_whole_body_reads_its_rest_off(gw: RunningGateway, key: str) -> None:
    refused = request("clex_" + "x" * 40, extra="X-Request-Id: early\r\n")
    async with opened(gw) as (reader, writer):
        writer.write(refused[:-10])  # the key is refused before the body is read
        answer, _ = await read_answer(reader)
        assert_spec_error(answer, 401)
        assert answer[1]["x-request-id"] == "early"
        writer.write(refused[-10:] + request(key))  # the body's rest, then the next call in the same read
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert kinds(gw) == [LeanConnection]


async def test_calls_queued_behind_a_slow_one_are_answered_in_order(gw: RunningGateway, key: str) -> None:
    slow = request(key, extra="X-Request-Id: slow\r\nx-demo-headers-delay-ms: 300\r\n")
    padding = "x" * 2000
    queued = [
        request(key, extra=f"X-Request-Id: q{i}\r\n",
                body=orjson.dumps({**orjson.loads(BODY), "user": padding}))
        for i in range(2 * PIPELINE_LIMIT // 2000)  # twice what is held before reading pauses
    ]
    async with opened(gw) as (reader, writer):
        writer.write(slow + b"".join(queued))
        ids = []
        for _ in range(1 + len(queued)):
            answer, _ = await read_answer(reader)
            assert_chat_answer(answer)
            ids.append(answer[1]["x-request-id"])
        assert ids == ["slow"] + [f"q{i}" for i in range(len(queued))]


async def test_connection_close_is_answered_then_closed(gw: RunningGateway, key: str) -> None:
    async with opened(gw) as (reader, writer):
        writer.write(request(key, extra="Connection: close\r\n") + request(key))
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert answer[1]["connection"].lower() == "close"
        assert await closed(reader)  # the call behind it is not served


async def test_a_client_that_leaves_mid_call_ends_it(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    key = await gw.add_key("leaver")
    async with opened(gw) as (_, writer):
        writer.write(request(key, extra="x-demo-headers-delay-ms: 2000\r\n"))
        await writer.drain()
        await asyncio.sleep(0.2)
    assert await settled(gw, []) == []


async def test_a_framing_the_scan_does_not_take_is_answered_as_aiohttp_answers_it(gw: RunningGateway,
                                                                                    key: str) -> None:
    """CL with TE, a repeated length, a folded line: aiohttp's parser answers them, after a lean call."""
    for bad in (
        request(key, extra="Transfer-Encoding: chunked\r\n"),
        request(key, extra=f"Content-Length: {len(BODY)}\r\n"),
        request(key, extra="X-Folded: a\r\n b\r\n"),
        request(key, extra="X-Bare: a\nb\r\n"),
    ):
        async with opened(gw) as (reader, writer):
            writer.write(request(key))
            answer, _ = await read_answer(reader)
            assert_chat_answer(answer)
            writer.write(bad)
            answer, _ = await read_answer(reader)
            assert_spec_error(answer, 400)
            assert answer[1]["connection"].lower() == "close"
            assert await closed(reader)


async def test_a_head_in_many_pieces_is_read_by_aiohttps_parser(gw: RunningGateway, key: str) -> None:
    """Each read rescans a lean head: past `HEAD_READS` pieces aiohttp's incremental parser takes the connection."""
    raw = request(key)
    head_end = raw.index(b"\r\n\r\n") + 4
    async with opened(gw) as (reader, writer):
        for i in range(head_end):
            writer.write(raw[i:i + 1])
            await writer.drain()
            if i < HEAD_READS + 2:
                await asyncio.sleep(0.02)  # separate reads, at least until the hand-over
        writer.write(raw[head_end:])
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert kinds(gw) == [ProxyConnection]


async def test_a_head_in_a_few_pieces_stays_lean(gw: RunningGateway, key: str) -> None:
    raw = request(key)
    async with opened(gw) as (reader, writer):
        for start in range(0, len(raw), len(raw) // 3 + 1):
            writer.write(raw[start:start + len(raw) // 3 + 1])
            await writer.drain()
            await asyncio.sleep(0.02)
        answer, _ = await read_answer(reader)
        assert_chat_answer(answer)
        assert kinds(gw) == [LeanConnection]


async def test_an_answer_that_cannot_be_written_closes_the_connection(
    gw: RunningGateway, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler bug past `handle`'s own catch-alls (an answer prepared elsewhere): logged, and the connection ends."""

    class Broken:
        async def __call__(self, request: object) -> web.Response:
            answer = web.Response()
            answer._payload_writer = object()  # type: ignore[assignment]  # "prepared" somewhere else
            return answer

        def failed(self, request: object) -> web.Response:
            raise AssertionError("not reached: the handler returned")

    server = gw.runner.server
    assert isinstance(server, ProxyServer)
    path = "/v1/chat/completions"
    server.lean_routes[path] = (path, Broken(), None)
    async with opened(gw) as (reader, writer):
        writer.write(request(key, extra="X-Request-Id: broken-write\r\n"))
        assert await closed(reader)
    assert any("failed to write an answer" in r.getMessage() and "broken-write" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
