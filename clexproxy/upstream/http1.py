"""Keep-alive HTTP/1.1 connections to one provider origin (`Origin`) and the answers read from them.

Why not `aiohttp.ClientSession`: per call it builds a ClientRequest and a ClientResponse,
runs tracing hooks, the cookie jar, timeout contexts and header defaults, and looks the
connection up through the connector — about half of a bare pass-through's CPU per request on
the benchmark machine (the benchmarks' results). clexproxy needs none of it: it POSTs JSON to a
handful of fixed URLs. The request head is prebuilt per URL, a connection is taken from and
returned to a LIFO list of idle ones, and its answers are read by `UpstreamConnection`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp.client_exceptions import ClientConnectionError, ClientOSError, ClientPayloadError, ServerDisconnectedError
from yarl import URL

from clexproxy.outbox import Outbox
from clexproxy.upstream.connection import UpstreamConnection

DNS_TTL = 300.0
# Connects to one origin in progress at once; more callers wait for one to end (or for a connection to
# come back idle, which they take instead). A burst of calls then opens connections at the rate the
# upstream accepts them rather than all at once (its listen queue overflows, and each waiting connect
# holds ~2 KB here: 10,000 held 20 MB), and a connection freed meanwhile serves a waiting call.
CONNECTS_AT_ONCE = 128
# How long a connection whose answer is complete for the client may take to end its body before it is
# dropped instead of pooled (an upstream that sends bytes after `[DONE]`, or never ends its chunked body).
FINISH_TIMEOUT = 5.0
_Idle = tuple[UpstreamConnection, float]


class UpstreamResponse:
    """The status of one answer and its body as it arrives; `release()` or `close()` ends it."""

    __slots__ = ("_conn", "_origin", "status")

    def __init__(self, origin: Origin, conn: UpstreamConnection, status: int) -> None:
        self._origin = origin
        self._conn: UpstreamConnection | None = conn
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers by lower-case name (built when asked for)."""
        return self._conn.headers if self._conn is not None else {}

    def readany(self) -> Coroutine[Any, Any, bytes]:
        """The body bytes that came since the last read; b"" at the body's end (the connection's own
        coroutine, not one wrapping it: a stream holds one frame less while it waits).

        Raises `ClientPayloadError` (the body broke off or broke HTTP's framing), `ServerTimeoutError`
        (a `TimeoutError`: the provider fell silent), once the bytes that came before it are read.
        """
        if self._conn is None:
            raise ClientConnectionError("the answer was already released")
        return self._conn.readany()

    async def read(self, limit: int = -1) -> bytes:
        """The whole body (or its first `limit` bytes); the connection is released by the caller."""
        if self._conn is None:
            raise ClientConnectionError("the answer was already released")
        return await self._conn.read(limit)

    def at_eof(self) -> bool:
        return self._conn is None or self._conn.at_eof()

    def release(self) -> None:
        """Done reading: a fully read answer on a keep-alive connection returns it to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._origin.release(conn)

    def close(self) -> None:
        """Done early (an error, a client that left): the connection is dropped, never reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._origin.discard(conn)

    def finish(self) -> None:
        """The answer is complete for the caller, whatever the upstream still sends: end it without waiting.

        A body already at its end releases the connection at once (the usual case). Otherwise the rest
        is read and thrown away in the background, for at most `FINISH_TIMEOUT`, so the connection can
        be pooled again; the caller's response never waits for it and never fails because of it.
        """
        if self.at_eof():
            self.release()
        else:
            self._origin.finish_later(self)


class Origin:
    """Connections to one `scheme://host:port`, at most `limit` open and `CONNECTS_AT_ONCE` connecting at once.

    A connection idle longer than `keepalive_timeout` is closed rather than reused (servers
    drop idle keep-alive connections, and a request written into one that is closing is lost).
    A request whose reused connection turns out to be closed before any answer is sent again,
    once, on a new connection: the server never read it.
    """

    def __init__(self, url: URL, *, limit: int, keepalive_timeout: float, connect_timeout: float,
                 read_timeout: float) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {url}")
        self.url = url
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self._limit = limit
        self._keepalive = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: collections.deque[_Idle] = collections.deque()
        self._open = 0
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._addresses: list[tuple[Any, ...]] = []
        self._resolved_at = -DNS_TTL
        self._closed = False
        self._outbox: Outbox | None = None  # requests leave at the end of the loop's turn (`Outbox`)
        self._finishing: dict[asyncio.Task[None], UpstreamResponse] = {}  # answers whose upstream body still ends
        self.host_header = url.host_port_subcomponent or self._host  # brackets an IPv6 literal; no default port

    def request_head(self, path: str, headers: dict[str, str]) -> bytes:
        """The fixed part of a POST to `path`: request line, Host and `headers` (prebuilt once per URL)."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def post(self, head: bytes, tail: bytes, body: bytes) -> UpstreamResponse:
        """Send `head` + `tail` (the per-call headers, each ending in CRLF) + Content-Length + `body`.

        Raises aiohttp's client errors (ClientConnectionError, ClientOSError, ServerDisconnectedError),
        TimeoutError, or `HttpProcessingError` for an answer that is not HTTP/1.1.
        """
        request = b"%s%sContent-Length: %d\r\n\r\n" % (head, tail, len(body))
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            try:
                transport = conn.transport
                if transport is None:
                    raise ServerDisconnectedError()
                outbox = self._outbox
                if outbox is None:
                    outbox = self._outbox = Outbox(asyncio.get_running_loop())
                conn.begin()
                outbox.write(transport, request + body)
                status = await conn.head()
            except (ServerDisconnectedError, ClientOSError):
                self.discard(conn)
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                self.discard(conn)
                raise
            return UpstreamResponse(self, conn, status)
        raise AssertionError("unreachable")

    def release(self, conn: UpstreamConnection) -> None:
        if self._closed or not conn.reusable:
            self.discard(conn)
            return
        now = time.monotonic()
        self._expire(now)
        self._idle.append((conn, now))
        self._wake()

    def discard(self, conn: UpstreamConnection) -> None:
        conn.close()
        self._open -= 1
        self._wake()

    def finish_later(self, response: UpstreamResponse) -> None:
        if self._closed:
            response.close()
            return
        task = asyncio.ensure_future(self._finish(response))
        self._finishing[task] = response
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._finishing.pop(task, None)

    async def _finish(self, response: UpstreamResponse) -> None:
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                while not response.at_eof() and await response.readany():
                    pass
        except (TimeoutError, ClientPayloadError, ClientConnectionError):
            pass
        finally:
            if response.at_eof():
                response.release()
            else:
                response.close()

    async def close(self) -> None:
        self._closed = True
        finishing = dict(self._finishing)
        for task in finishing:
            task.cancel()
        if finishing:
            await asyncio.wait(finishing)
        for response in finishing.values():
            response.close()  # a task cancelled before its first step never ran its `finally`
        while self._idle:
            self.discard(self._idle.pop()[0])

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # connections ---------------------------------------------------------------------------------

    async def _acquire(self) -> tuple[UpstreamConnection, bool]:
        idle = self._idle
        if idle:
            now = time.monotonic()
            self._expire(now)
            while idle:
                conn, _ = idle.pop()
                if conn.reusable:
                    return conn, True
                self.discard(conn)
        while self._open >= self._limit or self._connecting >= CONNECTS_AT_ONCE:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on: this caller no longer needs it
                raise
            if idle:
                conn, _ = idle.pop()
                if conn.reusable:
                    return conn, True
                self.discard(conn)
        self._open += 1
        self._connecting += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._open -= 1
            raise
        finally:
            self._connecting -= 1
            self._wake()  # a caller waiting for a connect may start one now
        return conn, False

    def _expire(self, now: float) -> None:
        idle = self._idle
        while idle and now - idle[0][1] > self._keepalive:
            self.discard(idle.popleft()[0])

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                last: OSError | None = None
                for family, _, proto, _, address in await self._resolve(loop):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: UpstreamConnection(loop, self._read_timeout), address[0], address[1],
                            family=family, proto=proto, ssl=self._ssl,
                            server_hostname=self._host if self._ssl else None,
                        )
                        return conn
                    except OSError as exc:
                        last = exc
                raise last or OSError(f"no address for {self._host}")
        except TimeoutError:
            raise
        except ssl.SSLError as exc:
            raise ClientConnectionError(f"TLS handshake failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise ClientOSError(exc.errno, exc.strerror or str(exc)) from exc

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[Any, ...]]:
        """Addresses for the host, cached for DNS_TTL (a connect storm resolves once, not once per connect)."""
        now = time.monotonic()
        if self._addresses and now - self._resolved_at < DNS_TTL:
            return self._addresses
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"no address for {self._host}")
        self._addresses, self._resolved_at = infos, now
        return infos
