"""The provider connection pool against a real loopback HTTP server that counts its connections."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.client_exceptions import ClientConnectionError, ClientOSError, ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from clexproxy.upstream import http1
from clexproxy.upstream.http1 import Origin, UpstreamResponse

BODY = b'{"ok":true}'


@dataclass
class Server:
    """A minimal HTTP/1.1 server: answers each request by `mode`, keeps count of connections and requests."""

    mode: str = "keepalive"
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    script: list[bytes] = field(default_factory=list)  # mode "script": each piece written apart, then a close

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                if self.mode == "hold":
                    await self.hold.wait()
                if self.mode == "partial":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY)
                    await writer.drain()
                    await asyncio.Event().wait()  # the rest never comes
                if self.mode == "trickle":  # the body a byte at a time, 0.1 s apart
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
                    for byte in BODY:
                        await writer.drain()
                        await asyncio.sleep(0.1)
                        writer.write(bytes([byte]))
                    await writer.drain()
                    continue
                if self.mode == "script":
                    for piece in self.script:
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(0.01)  # each piece its own read on the other side
                    break
                if self.mode == "garbage":
                    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                elif self.mode == "truncated":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY)
                else:
                    close = self.mode == "close"
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                                 % (len(BODY), b"Connection: close\r\n" if close else b"", BODY))
                await writer.drain()
                if self.mode in ("close", "truncated", "garbage"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.hold.set()
        srv.server.close()
        await srv.server.wait_closed()


def origin_for(url: URL, **kw: float) -> Origin:
    opts = {"limit": 100, "keepalive_timeout": 15.0, "connect_timeout": 2.0, "read_timeout": 5.0, **kw}
    return Origin(url, limit=int(opts["limit"]), keepalive_timeout=opts["keepalive_timeout"],
                  connect_timeout=opts["connect_timeout"], read_timeout=opts["read_timeout"])


async def call(origin: Origin, body: bytes = b"{}") -> bytes:
    head = origin.request_head("/v1/chat/completions", {"Content-Type": "application/json"})
    response = await origin.post(head, b"X-Request-Id: r1\r\n", body)
    try:
        assert response.status == 200
        return await response.read()
    finally:
        response.release()


async def test_sequential_calls_share_one_keepalive_connection(server: Server) -> None:
    origin = origin_for(server.url)
    for _ in range(5):
        assert await call(origin) == BODY
    assert server.connections == 1
    assert origin.open_connections == 1 and origin.idle_connections == 1
    await origin.close()
    assert origin.open_connections == 0


async def test_request_bytes_carry_head_tail_length_and_body(server: Server) -> None:
    origin = origin_for(server.url)
    await call(origin, b'{"model":"m"}')
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-Request-Id: r1\r\n" in sent and b"\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}" in sent
    await origin.close()


async def test_large_body_is_sent_whole(server: Server) -> None:
    origin = origin_for(server.url)
    body = b'{"x":"' + b"a" * 200_000 + b'"}'
    await call(origin, body)
    assert server.requests[0].endswith(body)
    await origin.close()


async def test_connection_close_answers_are_not_reused(server: Server) -> None:
    server.mode = "close"
    origin = origin_for(server.url)
    for _ in range(3):
        assert await call(origin) == BODY
    assert server.connections == 3
    assert origin.open_connections == 0
    await origin.close()


async def test_limit_caps_open_connections_and_queues_the_rest(server: Server) -> None:
    server.mode = "hold"
    origin = origin_for(server.url, limit=2)
    calls = [asyncio.ensure_future(call(origin)) for _ in range(6)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(server.requests) >= 2:
            break
    assert server.open_now == 2 and len(server.requests) == 2
    server.hold.set()
    assert await asyncio.gather(*calls) == [BODY] * 6
    assert server.most_open == 2
    await origin.close()


async def test_cancelled_waiter_does_not_leak_a_slot(server: Server) -> None:
    server.mode = "hold"
    origin = origin_for(server.url, limit=1)
    first = asyncio.ensure_future(call(origin))
    waiting = asyncio.ensure_future(call(origin))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    server.hold.set()
    assert await first == BODY
    assert await call(origin) == BODY
    assert origin.open_connections == 1
    await origin.close()


async def test_stale_idle_connection_is_retried_once_on_a_new_one(server: Server) -> None:
    origin = origin_for(server.url)
    assert await call(origin) == BODY
    # The server drops the idle connection; the pool does not know yet when the next call takes it.
    conn = origin._idle[-1][0]
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    sock.shutdown(2)  # like a server-side close racing the reuse
    assert await call(origin) == BODY
    assert server.connections == 2
    await origin.close()


async def test_idle_connections_past_keepalive_are_closed_not_reused(server: Server) -> None:
    origin = origin_for(server.url, keepalive_timeout=0.05)
    assert await call(origin) == BODY
    await asyncio.sleep(0.1)
    assert await call(origin) == BODY
    assert server.connections == 2
    assert origin.open_connections == 1
    await origin.close()


async def test_truncated_body_raises_payload_error_and_drops_the_connection(server: Server) -> None:
    server.mode = "truncated"
    origin = origin_for(server.url)
    head = origin.request_head("/x", {})
    response = await origin.post(head, b"", b"{}")
    with pytest.raises(ClientPayloadError):
        await response.read()
    response.close()
    assert origin.open_connections == 0
    await origin.close()


async def test_partly_read_answer_is_not_returned_to_the_pool(server: Server) -> None:
    server.mode = "partial"
    origin = origin_for(server.url)
    head = origin.request_head("/x", {})
    response = await origin.post(head, b"", b"{}")
    response.release()  # body never read: the connection cannot carry another request
    assert origin.open_connections == 0 and origin.idle_connections == 0
    await origin.close()


async def test_not_http_raises_processing_error(server: Server) -> None:
    server.mode = "garbage"
    origin = origin_for(server.url)
    with pytest.raises(HttpProcessingError):
        await origin.post(origin.request_head("/x", {}), b"", b"{}")
    assert origin.open_connections == 0
    await origin.close()


async def test_read_timeout_raises_timeout_error(server: Server) -> None:
    server.mode = "hold"
    origin = origin_for(server.url, read_timeout=0.1)
    with pytest.raises(TimeoutError):
        await origin.post(origin.request_head("/x", {}), b"", b"{}")
    assert origin.open_connections == 0
    await origin.close()


async def test_a_body_that_stops_arriving_times_out(server: Server) -> None:
    server.mode = "partial"
    origin = origin_for(server.url, read_timeout=0.2)
    response = await origin.post(origin.request_head("/x", {}), b"", b"{}")
    with pytest.raises(TimeoutError):
        await response.read()
    response.close()
    assert origin.open_connections == 0
    await origin.close()


async def test_a_body_that_keeps_arriving_never_times_out(server: Server) -> None:
    """The read timeout is the longest silence, not the whole answer's time: each read moves the deadline."""
    server.mode = "trickle"
    origin = origin_for(server.url, read_timeout=0.35)
    for _ in range(2):  # and again on the same connection: the deadline of the first answer is gone
        response = await origin.post(origin.request_head("/x", {}), b"", b"{}")
        assert await response.read() == BODY  # 1.1 s in all, never 0.35 s without a byte
        response.release()
    assert server.connections == 1
    await origin.close()


async def test_refused_connection_raises_client_os_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    origin = origin_for(URL(f"http://127.0.0.1:{port}"))
    with pytest.raises(ClientOSError):
        await origin.post(origin.request_head("/x", {}), b"", b"{}")
    assert origin.open_connections == 0
    await origin.close()


async def test_host_header_omits_default_port() -> None:
    assert Origin(URL("https://api.example.com/v1"), limit=1, keepalive_timeout=1, connect_timeout=1,
                  read_timeout=1).host_header == "api.example.com"
    assert Origin(URL("http://h:8080"), limit=1, keepalive_timeout=1, connect_timeout=1,
                  read_timeout=1).host_header == "h:8080"
    assert Origin(URL("http://[::1]:8080/v1"), limit=1, keepalive_timeout=1, connect_timeout=1,
                  read_timeout=1).host_header == "[::1]:8080"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_tls_certificate_is_verified(tmp_path: Path) -> None:
    """A provider with a certificate the system does not trust is refused: credentials never go out unverified."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    origin = origin_for(URL(f"https://127.0.0.1:{port}"))
    try:
        with pytest.raises(ClientConnectionError, match="TLS"):
            await origin.post(origin.request_head("/x", {}), b"", b"{}")
        assert origin.open_connections == 0
    finally:
        await origin.close()
        server.close()
        await server.wait_closed()


# --- answers as upstreams frame them ------------------------------------------------------------


async def post(origin: Origin) -> UpstreamResponse:
    return await origin.post(origin.request_head("/x", {}), b"", b"{}")


async def test_a_chunked_answer_with_extensions_and_trailers_is_read_and_pooled(server: Server) -> None:
    server.mode = "keepalive"
    origin = origin_for(server.url)
    assert await call(origin) == BODY
    server.mode = "script"
    server.script = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhel",
                     b"lo\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: 1\r\n\r\n"]
    response = await post(origin)
    assert await response.read() == b"hello, world!!!"
    response.release()
    assert origin.idle_connections == 1  # the answer ended where its framing said: the connection is reusable
    await origin.close()


async def test_a_body_that_runs_to_the_close_is_read_and_never_pooled(server: Server) -> None:
    server.mode = "script"
    server.script = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":", b"1}"]
    origin = origin_for(server.url)
    response = await post(origin)
    assert await response.read() == b'{"a":1}'
    response.release()
    assert origin.open_connections == 0
    await origin.close()


async def test_bytes_past_the_answer_keep_the_connection_out_of_the_pool(server: Server) -> None:
    server.mode = "script"
    server.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"]
    origin = origin_for(server.url)
    response = await post(origin)
    assert await response.read() == b"ok"
    response.release()
    assert origin.open_connections == 0
    await origin.close()


async def test_an_interim_answer_is_skipped_and_headers_are_read_by_lower_case_name(server: Server) -> None:
    server.mode = "script"
    server.script = [b"HTTP/1.1 100 Continue\r\n\r\n",
                     b"HTTP/1.1 503 Busy\r\nRetry-After:  7 \r\nContent-Length: 2\r\n\r\n{}"]
    origin = origin_for(server.url)
    response = await post(origin)
    assert response.status == 503 and response.headers["retry-after"] == "7"
    assert await response.read() == b"{}"
    response.release()
    await origin.close()


async def test_what_came_before_a_broken_chunk_is_read_before_the_error(server: Server) -> None:
    server.mode = "script"
    server.script = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                     b"f\r\ndata: {\"a\":1}\n\n\r\nZZ\r\n"]  # the events, then a chunk size that is not one
    origin = origin_for(server.url)
    response = await post(origin)
    assert await response.readany() == b'data: {"a":1}\n\n'
    with pytest.raises(ClientPayloadError):
        await response.readany()
    response.close()
    assert origin.open_connections == 0
    await origin.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare LF: never a head, cut by the close
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\nok",  # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",  # CL and TE
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",  # two lengths
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",  # an upgrade nobody asked for
])
async def test_a_head_that_breaks_http_framing_is_a_processing_error(server: Server, head: bytes) -> None:
    server.mode = "script"
    server.script = [head]
    origin = origin_for(server.url)
    with pytest.raises(HttpProcessingError):
        await post(origin)
    assert origin.open_connections == 0
    await origin.close()


async def test_a_slow_reader_pauses_the_socket_and_the_silence_it_causes_is_not_a_timeout(server: Server) -> None:
    """A client that reads slower than its provider writes pauses the upstream socket; while it is paused, the
    provider is not silent, so the read timeout does not run."""
    big = bytes(range(256)) * 4096  # 1 MiB
    server.mode = "script"
    server.script = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big]
    origin = origin_for(server.url, read_timeout=0.2)
    response = await post(origin)
    got = [await response.readany()]
    for _ in range(200):  # bounded: until the body's bytes held unread have paused the socket
        if response._conn is not None and response._conn._paused:
            break
        await asyncio.sleep(0.01)
    assert response._conn is not None and response._conn._paused
    await asyncio.sleep(0.5)  # longer than the read timeout, while paused
    while chunk := await response.readany():
        got.append(chunk)
    assert b"".join(got) == big
    response.close()
    await origin.close()


async def test_connects_at_once_are_capped_and_a_freed_connection_serves_a_waiting_call(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "CONNECTS_AT_ONCE", 2)
    origin = origin_for(server.url, limit=100)
    connecting, most = 0, 0
    connect = origin._connect

    async def slow_connect() -> Any:
        nonlocal connecting, most
        connecting += 1
        most = max(most, connecting)
        try:
            await asyncio.sleep(0.05)
            return await connect()
        finally:
            connecting -= 1

    monkeypatch.setattr(origin, "_connect", slow_connect)
    assert await asyncio.gather(*(call(origin) for _ in range(10))) == [BODY] * 10
    assert most == 2
    # The calls that waited took the connections the first ones gave back: fewer than one each.
    assert server.connections < 10 and origin.open_connections == server.connections
    await origin.close()
