"""The gateway's client connection: plain proxied calls read and answered here, everything else handed to aiohttp.

Every connection starts lean. It scans each request head itself (`request_head`: one pass over
the bytes in C, no parser object kept between requests) and, for a plain `POST` to a proxied
endpoint with a `Content-Length` body, runs the endpoint's handler in a task of its own with a
`ProxiedRequest` and a `LeanBody`, and writes its answer. What an SDK sends is that case. An
idle connection holds this object and its transport, and a call in flight its task: no aiohttp
`RequestHandler` with its parser, message queue, request loop task and keep-alive timer.

Anything else is aiohttp's: a head the scan does not take (another method or path, a framing,
coding or protocol switch, a malformed or oversized head, a console session's cookie) hands the
connection, with the bytes it holds, to a `ProxyConnection` at that message boundary for the rest
of its life (`transport.set_protocol`). aiohttp's parser then answers it exactly as it would have
answered it first (its framing rules and SPEC's JSON errors), and serves the console, the admin API,
models and health. A connection over the cap is handed over at once, for its 503.

The screen is the lean path's early exit: while some call was refused a moment ago, a call whose
body came with its head is first looked at by `Screen`, which answers a refused key or a spent
per-minute limit without starting a task.

Requests are answered in order: the next head is read only once the call before it has written
its answer (bytes that come meanwhile wait in the buffer, which pauses reading past a limit). The
time limits are the server's one timer (`_look`): a head or the rest of an answered call's body
that has not come whole within the header timeout gets a 408, a body silent for the body
timeout fails its call's read with a 408, and a connection idle for the keep-alive timeout is
closed. Shutdown finds a lean connection in aiohttp's table of connections, like any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.tcp_helpers import tcp_keepalive, tcp_nodelay
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from clexproxy.fastpath.scan import INCOMPLETE, request_head
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import request_id
from clexproxy.handlers.ingress import Ingress
from clexproxy.outbox import Outbox
from clexproxy.proxied_request import ProxiedHandler, ProxiedRequest, write_answer
from clexproxy.server.lean_body import LeanBody
from clexproxy.server.screen import Screen
from clexproxy.server.time_limits import BodyMark, ConnectionLimits, mark_body, time_out_head

log = logging.getLogger("clexproxy.server.connections")

PIPELINE_LIMIT = 1 << 16  # bytes of later requests held while a call is answered, before reading pauses
# Reads a head may take to come whole before aiohttp's incremental parser takes it: each read rescans the
# head so far, and a client sending a byte at a time must not make that quadratic.
HEAD_READS = 8
_CONSOLE_CHAT = "/api/chat"  # without a key: the console's API Explorer, signed in by cookie (aiohttp reads it)

# A plain head as `request_head` reads it (see there).
LeanHead = tuple[int, str, list[tuple[str, str]], int, bool, str | None, str | None, bool]
# A proxied endpoint as the lean connection serves it: its path, its handler, and its ingress when screened.
LeanRoute = tuple[str, ProxiedHandler, Ingress | None]


class LeanServer(Protocol):
    """What a lean connection reads of its server (`ProxyServer`: aiohttp's, with the gateway's parts)."""

    _loop: asyncio.AbstractEventLoop
    _connections: dict[RequestHandler, asyncio.Transport]
    limits: ConnectionLimits
    app: web.Application
    gateway: Gateway
    screen: Screen
    outbox: Outbox
    lean_routes: dict[str, LeanRoute]
    max_body_bytes: int
    requests_count: int

    def full(self) -> bool: ...
    def watch(self) -> None: ...
    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None: ...
    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None: ...
    def aiohttp_connection(self) -> asyncio.Protocol:
        """A connection of aiohttp's to take this one over."""
        ...


class LeanConnection:
    """One client connection serving plain proxied calls itself; see the module's docstring."""

    __slots__ = ("_body", "_body_left", "_body_mark", "_buffer", "_close", "_current_request", "_drain_waiter",
                 "_force_close", "_head_reads", "_head_since", "_idle_since", "_loop", "_paused", "_queued",
                 "_queued_bytes", "_reading_paused", "_request_in_progress", "_server", "_task_handler", "transport")

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._loop = server._loop
        self.transport: asyncio.Transport | None = None
        self._paused = False  # writing: the client's socket buffer is full
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._buffer = b""  # bytes not yet served: a head to come, or requests behind the call in flight
        self._queued: list[bytes] | None = None  # reads that came after `_buffer` while a call was in flight
        self._queued_bytes = 0
        self._head_reads = 0  # scans of the head now coming
        self._body: LeanBody | None = None  # the call's body while some of it is still to come
        self._body_left = 0  # bytes of the current body still to come (fed to `_body`, or dropped once answered)
        self._body_mark: BodyMark | None = None
        self._task_handler: asyncio.Task[None] | None = None
        self._current_request: ProxiedRequest | None = None
        self._request_in_progress = False
        self._close = False  # close once the call in flight is answered
        self._force_close = False
        self._idle_since = 0.0
        self._head_since: float | None = None  # the look that first saw the head (or body rest) now coming

    @property
    def keepalive_timeout(self) -> float:
        return self._server.limits.keepalive_timeout

    # asyncio's protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        server = self._server
        if server.full():
            self._hand_over(tcp, b"")  # aiohttp's connection answers it 503 and closes it
            return
        tcp_nodelay(tcp, True)
        tcp_keepalive(tcp)
        self.transport = tcp
        server.connection_made(cast(RequestHandler, self), tcp)  # aiohttp's table: the cap and the drain see it
        self._idle_since = self._loop.time()
        server.watch()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._force_close = True
        self._server.connection_lost(cast(RequestHandler, self), exc)
        lost = ConnectionResetError("Connection lost") if exc is None else exc
        if self._current_request is not None:
            self._current_request._cancel(lost)  # a read of its body fails
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        if self._task_handler is not None:
            self._task_handler.cancel()  # the client left: its call with it (the relay tells a shutdown's cut)

    def eof_received(self) -> None:
        """The client closed its side: the transport closes, as aiohttp's connection lets it (a call in flight ends)."""

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _drain_helper(self) -> None:
        """Wait until the client's socket takes writes again (`ProxiedRequest.send`)."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def data_received(self, data: bytes) -> None:
        if self._force_close:
            return
        left = self._body_left
        if left:
            size = len(data)
            body = self._body
            if size <= left:
                self._body_left = left - size
                if body is not None:
                    body.feed(data, size == left)
                if size < left:
                    return
                self._body = None
                data = b""
            else:
                if body is not None:
                    body.feed(data[:left], True)
                self._body, self._body_left = None, 0
                data = data[left:]
        if self._request_in_progress:
            if data:
                if self._queued is None:
                    self._queued = [data]
                else:
                    self._queued.append(data)
                self._queued_bytes += len(data)
                if self._queued_bytes > PIPELINE_LIMIT and not self._reading_paused:
                    self._pause_reading()
            return
        if data:
            self._buffer = self._buffer + data if self._buffer else data
        if self._buffer and not self._body_left:
            self._next()

    # serving -----------------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the request at the start of the buffer (and, while the screen answers, the ones after it)."""
        server = self._server
        while True:
            buffer = self._buffer
            head = request_head(buffer)
            if head == INCOMPLETE:
                self._head_reads += 1
                if self._head_reads < HEAD_READS:
                    return  # the look's header timeout watches the rest
                head = None  # a head in many pieces: aiohttp's parser reads it incrementally
            route = None
            if head is not None:
                size, target, pairs, length, keep_alive, authorization, sent_id, origin = cast(LeanHead, head)
                route = server.lean_routes.get(target)
            if route is None or length > server.max_body_bytes or (target == _CONSOLE_CHAT and authorization is None):
                self._hand_over(cast(asyncio.Transport, self.transport), buffer)
                return
            end = size + length
            first = buffer[size:end]
            self._buffer = buffer[end:]
            self._head_since = None
            self._head_reads = 0
            whole = len(first) == length
            ingress = route[2]
            if whole and ingress is not None and keep_alive and not origin and server.gateway.refusals.active():
                # (a browser's refusal, with an Origin, needs the CORS headers `handle` adds)
                raw = server.screen.refusal(ingress, authorization, sent_id)
                if raw is not None:
                    server.outbox.write(cast(asyncio.Transport, self.transport), raw)
                    self._idle_since = self._loop.time()
                    if self._buffer:
                        continue
                    return
            body = LeanBody(first, whole)
            if not whole:
                self._body, self._body_left = body, length - len(first)
            headers = CIMultiDictProxy(CIMultiDict(pairs))
            request = ProxiedRequest(headers, HttpVersion11, keep_alive, False, body, self, server.app, route[0],
                                     server.outbox)
            self._request_in_progress = True
            self._current_request = request
            server.requests_count += 1
            self._task_handler = self._loop.create_task(self._serve(request, route[1]))
            return

    async def _serve(self, request: ProxiedRequest, handler: ProxiedHandler) -> None:
        """Run one call and write its answer; then the connection serves the next request, or closes."""
        try:
            try:
                answer = await handler(request)
            except Exception:  # a bug, not a refusal: SPEC's 500, never a trace
                answer = handler.failed(request)
            finally:
                self._current_request = None
            try:
                keep_alive = await write_answer(request, answer)
            except Exception:  # a bug: the connection cannot say more, and must not wait for a next request
                log.exception("failed to write an answer, request_id=%s", request_id(cast(Any, request)))
                keep_alive = False
        finally:
            self._request_in_progress = False
            self._task_handler = None
        self._answered(keep_alive and request.content.exception() is None)

    def _answered(self, keep_alive: bool) -> None:
        """The call's answer is written: close, or wait for the next request (and serve one already here)."""
        self._body = None  # the rest of a body its call did not read is dropped as it comes
        self._body_mark = None
        if not keep_alive or self._close or self._force_close:
            self._server.outbox.flush()  # the answer may wait in it: it leaves before the close
            self.force_close()
            return
        self._idle_since = self._loop.time()
        if self._queued is not None:
            self._buffer += b"".join(self._queued)
            self._queued, self._queued_bytes = None, 0
        if self._reading_paused:
            self._resume_reading()
        if self._buffer and not self._body_left:
            self._next()

    def _hand_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """aiohttp's connection takes this one over from here, starting with `data` (the bytes of a request's start)."""
        server = self._server
        server._connections.pop(cast(RequestHandler, self), None)
        self._force_close = True
        self.transport = None
        self._buffer = b""
        self._queued = None
        conn = server.aiohttp_connection()
        transport.set_protocol(conn)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        conn.connection_made(transport)
        if self._paused:
            conn.pause_writing()  # the transport will tell the new protocol when writes may go on
        if data:
            conn.data_received(data)

    def _pause_reading(self) -> None:
        self._reading_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    # the server's hooks: shutdown and the time limits ----------------------------------------------

    def close(self) -> None:
        """Close once the call in flight is answered (at once when there is none): the shutdown's first step."""
        self._close = True
        if not self._request_in_progress:
            self._server.outbox.flush()
            self.force_close()

    def force_close(self) -> None:
        self._force_close = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """aiohttp's last step of a shutdown: the call in flight gets `timeout`, then is cancelled; then the close."""
        self._close = True
        task = self._task_handler
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                task.cancel()
        self.force_close()

    def _look(self) -> None:
        """Every `look_every` seconds (the server's one timer): the time limits; see the module's docstring."""
        if self._force_close or self.transport is None:
            return
        now = self._loop.time()
        limits = self._server.limits
        if self._request_in_progress:
            self._look_at_body(now)
        elif self._buffer or self._body_left:  # part of a head, or the rest of an answered call's body
            since = self._head_since
            if since is None:
                self._head_since = now
            elif now - since >= limits.header_timeout - 0.001:
                time_out_head(self.transport, limits, self._peer())
                self.force_close()
        elif now - self._idle_since >= limits.keepalive_timeout - 0.001:
            self.force_close()

    def _look_at_body(self, now: float) -> None:
        """Fail the body's read with a 408 when no byte of it came for a body timeout."""
        body = self._body
        if body is None or body.exception() is not None:
            self._body_mark = None
            return
        self._body_mark = mark_body(body, self._body_mark, now, self._server.limits)
        if self._body_mark is None:
            request = self._current_request
            rid = "-" if request is None else request_id(cast(Any, request))
            log.info("request body timed out from %s: 408 (request_id=%s)", self._peer(), rid)

    def _peer(self) -> str:
        transport = self.transport
        peer: Any = None if transport is None else transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, (tuple, list)) else str(peer)
