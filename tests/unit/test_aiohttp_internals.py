"""The aiohttp internals clexproxy builds on still exist: an aiohttp upgrade that moves one fails here first.

`ClientConnection` and `ProxyConnection` subclass aiohttp's connection protocol (`RequestHandler`)
and read its private state; `LeanConnection` lives in aiohttp's server's table of connections
beside them, and hands itself over to one; `drain` walks them at shutdown; `RateLimitAnswers`,
`raw_response` and the proxied calls' error answers render through `StreamResponse.prepare` and
aiohttp's header serializer (`response_bytes`); `ProxyConnection.start` is a copy of aiohttp's request
loop. pyproject.toml pins aiohttp below the next minor release and points here: before raising the
pin, make this file pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import http_parser, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from clexproxy.server.raw_answers import wire_bytes

# `ClientConnection._handle_request` is a copy of this method with SPEC's answers added: when
# aiohttp changes it, carry the change over to the copy, then record the new digest here.
HANDLE_REQUEST_SHA256 = "a88a34ee65a2714c6b392d23963ba9a80e7d50d4889905cd949a94d479102d8f"
# `ProxyConnection.start` is a copy of aiohttp's request loop with the proxied calls' branch: the same rule.
START_SHA256 = "2e565fd40c8e04fb3afb481d5ba52691a61d28396573b4b8a4cf3b168782288e"


def params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_connection_protocol_keeps_the_state_the_server_reads() -> None:
    """`ClientConnection`, `ProxyConnection` and `drain` read and write these on every connection."""
    for name in (
        "_request_count", "_force_close", "_close", "_keepalive_timeout", "_next_keepalive_close_time",
        "_waiter", "_handler_waiter", "_task_handler", "_current_request", "_request_in_progress",
        "max_line_size", "max_field_size", "max_headers",
    ):
        assert name in RequestHandler.__slots__, name
    for name in ("_loop", "_parser", "_reading_paused", "transport"):
        assert name in BaseProtocol.__slots__, name
    assert hasattr(RequestHandler, "peername")
    assert params(RequestHandler.__init__)[:2] == ["self", "manager"]
    assert params(RequestHandler.data_received) == ["self", "data"]
    assert params(RequestHandler.connection_made) == ["self", "transport"]
    assert params(RequestHandler.connection_lost) == ["self", "exc"]
    assert params(RequestHandler.force_close) == ["self"]
    assert params(RequestHandler.finish_response) == ["self", "request", "resp", "start_time"]
    assert params(RequestHandler.handle_error) == ["self", "request", "status", "exc", "message"]
    assert params(RequestHandler._handle_request) == ["self", "request", "start_time", "request_handler"]


def test_handle_request_is_still_the_one_client_connection_copies() -> None:
    source = inspect.getsource(RequestHandler._handle_request)
    assert hashlib.sha256(source.encode()).hexdigest() == HANDLE_REQUEST_SHA256, (
        "aiohttp's RequestHandler._handle_request changed: merge it into ClientConnection._handle_request"
    )


def test_start_is_still_the_loop_proxy_connection_copies() -> None:
    source = inspect.getsource(RequestHandler.start)
    assert hashlib.sha256(source.encode()).hexdigest() == START_SHA256, (
        "aiohttp's RequestHandler.start changed: merge it into ProxyConnection.start"
    )


PARSERS = sorted({http_parser.HttpRequestParser, http_parser.HttpRequestParserPy}, key=str)  # compiled, pure


@pytest.mark.parametrize("parser", PARSERS, ids=lambda parser: parser.__module__)
def test_a_long_request_line_is_told_from_a_long_header(parser: type[Any]) -> None:
    """`parser_refusal` tells them apart: the pure parser keeps its lines, the compiled one raises in `cb_on_url`."""
    loop = asyncio.new_event_loop()
    try:
        request = parser(None, loop, 2**16, max_line_size=100, max_field_size=100)
        with pytest.raises(LineTooLong) as raised:
            request.feed_data(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    finally:
        loop.close()
    lines = getattr(request, "_lines", None)
    frames = []
    tb = raised.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    if isinstance(lines, list):  # the pure parser: no line read yet means the request line was too long
        assert lines == []
    else:
        assert any(name.endswith("cb_on_url") for name in frames), frames


async def test_the_server_and_its_requests_keep_what_the_gateway_reads() -> None:
    """`GatewayRunner` rebuilds the server from these; the handlers and the relay read these of a request."""
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["chunked"] = request._message.chunked
        seen["output_size"] = request.writer.output_size
        seen["payload_writer"] = request._payload_writer is request.writer
        seen["total_bytes"] = request.content.total_bytes
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    assert params(web.AppRunner._make_server) == ["self"]
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, web.Server)
        assert isinstance(server._kwargs, dict) and server._loop is asyncio.get_running_loop()
        assert callable(server.request_handler) and callable(server.request_factory)
        assert server.handler_cancellation is False and server._connections == {}
        assert server.connections == [] and callable(server.pre_shutdown)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert list(runner.sites) == [site] and callable(site.stop)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session, session.post(f"http://127.0.0.1:{port}/", data=b"abc") as answer:
            assert answer.status == 200
    finally:
        await runner.cleanup()
    assert seen == {"chunked": False, "output_size": 0, "payload_writer": True, "total_bytes": 3}


def test_responses_render_through_prepare_and_the_header_serializer() -> None:
    """`wire_bytes` stands in for the request and writer `prepare` talks to: a new need of theirs fails here."""
    assert params(BaseRequest._prepare_hook) == ["self", "response"]
    raw = wire_bytes(web.Response(body=b"{}", content_type="application/json", headers={"X-Request-Id": "r"}))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b"{}"
    assert [line.split(b":")[0] for line in lines[1:]] == [b"X-Request-Id", b"Content-Type", b"Content-Length",
                                                          b"Date", b"Server"]


async def test_the_server_treats_its_connections_as_the_lean_one_expects() -> None:
    """`LeanConnection` is not a `RequestHandler`: aiohttp's server must ask only for what it provides."""
    calls: list[str] = []

    class Duck:
        _task_handler = None

        def close(self) -> None:
            calls.append("close")

        async def shutdown(self, timeout: float | None) -> None:
            calls.append(f"shutdown {timeout}")

    server = web.Server(lambda request: None)  # type: ignore[arg-type,return-value]
    duck: Any = Duck()
    transport: Any = object()
    server.connection_made(duck, transport)
    assert server._connections == {duck: transport} and server.connections == [duck]
    server.pre_shutdown()
    await server.shutdown(2.5)
    assert calls == ["close", "shutdown 2.5"] and server._connections == {}
    server.connection_made(duck, transport)
    server.connection_lost(duck, None)  # no call in flight: gone at once
    assert server._connections == {}


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_transport_takes_a_new_protocol(loop_kind: str) -> None:
    """The lean connection hands its transport to aiohttp's connection (`set_protocol`) mid-connection.

    On both loops: the tests run on asyncio's, `serve` on uvloop's.
    """
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(_hand_over_once()) == b"onetwo"
    finally:
        loop.close()


async def _hand_over_once() -> bytes:
    got: list[bytes] = []

    class First(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            second = Second()
            self.transport.set_protocol(second)  # type: ignore[attr-defined]
            second.data_received(data)

    class Second(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.append(data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(First, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"one")
        await writer.drain()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        writer.write(b"two")
        await writer.drain()
        for _ in range(100):
            if len(got) > 1 or b"".join(got) == b"onetwo":
                break
            await asyncio.sleep(0.01)
        writer.close()
        return b"".join(got)
    finally:
        server.close()
        await server.wait_closed()
