"""aiohttp's client connection, for what the lean one hands over: proxied calls served from the parsed message too.

A connection starts lean (`LeanConnection`); one whose request the lean scan does not take (an
endpoint aiohttp serves, a framing, coding or protocol switch, a malformed head) becomes a
`ProxyConnection` for the rest of its life. aiohttp's connection protocol runs one loop per
connection (`RequestHandler.start`): it takes each message its C parser produced, builds a
`web.Request`, runs the app in a new task (the router, the handler, the response's `prepare`),
then keeps the connection alive or closes it. `ProxyConnection` keeps that loop, aiohttp's parser
and its framing rules, and branches once per message: a POST to a proxied endpoint (the router's
own match: the path as `path_safe` reads it) is served in the loop itself, from a
`ProxiedRequest`, by the endpoint's handler, and its answer is written from a head built directly
(`answer_wire`); no task, no router, no `Response`. Every other request (the console, the admin
API, models, health, a 404 or 405, a request the parser refused) takes aiohttp's path as before.

What aiohttp does around a handler the branch does too: the 501 or 400 for a transfer coding other
than chunked alone, `Expect: 100-continue` (and 417 for any other expectation), the body's rest read
off after the answer (lingering), keep-alive, and the bookkeeping the time limits and the shutdown
read (`_current_request`, `_request_in_progress`, `_answered`, `_handler_waiter`). A client that
leaves cancels the connection's loop, and with it the call (`handler_cancellation`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.helpers import ceil_timeout
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _PAYLOAD_ACCESS_ERROR, ERROR, RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from clexproxy.errors import InvalidRequest
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY, PROXIED_HANDLERS
from clexproxy.handlers.ingress import SCREENED_PATHS
from clexproxy.outbox import Outbox
from clexproxy.proxied_request import ProxiedHandler, ProxiedRequest, write_answer
from clexproxy.server.connections import ClientConnection, ClientServer, transfer_coding_refusal
from clexproxy.server.fdlimit import open_file_limit
from clexproxy.server.lean_connection import LeanConnection, LeanRoute
from clexproxy.server.screen import Screen
from clexproxy.server.time_limits import ConnectionLimits

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ProxyConnection(ClientConnection):
    """aiohttp's request loop with the proxied endpoints served in it; see the module's docstring."""

    def __init__(self, manager: ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._proxied = manager.lean_routes
        self._app = manager.app
        self._outbox = manager.outbox

    def _proxied_route(self, message: RawRequestMessage) -> LeanRoute | None:
        """The endpoint's route (its path and handler) when the router would send this message to a proxied handler."""
        if message.method != hdrs.METH_POST:
            return None
        route = self._proxied.get(message.path)  # the usual request target: the path alone
        if route is None:
            url = message.url
            route = self._proxied.get((url.relative() if url.absolute else url).path_safe)
        return route

    async def start(self) -> None:
        """aiohttp 3.14's `RequestHandler.start`, with the proxied endpoints' branch (`_serve`)."""
        loop = self._loop
        manager = self._manager
        assert manager is not None
        keepalive_timeout = self._keepalive_timeout
        resp = None
        assert self._request_factory is not None
        assert self._request_handler is not None

        while not self._force_close:
            if not self._messages:
                try:
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = self._messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            manager.requests_count += 1
            route = None if isinstance(message, _ErrInfo) else self._proxied_route(message)
            request: BaseRequest | None = None
            try:
                if route is not None:
                    parsed = cast(RawRequestMessage, message)
                    call = ProxiedRequest(parsed.headers, parsed.version, not parsed.should_close, parsed.chunked,
                                          payload, self, self._app, route[0], self._outbox, parsed)
                    del parsed
                    del message  # the call holds the parsed head, and lets it go once its upstream has answered
                    keep_alive = await self._serve(call, payload, route[1])
                else:
                    # aiohttp's path writes to the socket itself (at once, with an eager task): the answers
                    # still in the outbox, this connection's included, leave first.
                    self._outbox.flush()
                    start = loop.time() if self._logging_enabled else None
                    writer = StreamWriter(self, loop)
                    if isinstance(message, _ErrInfo):
                        request_handler = self._make_error_handler(message)
                        message = ERROR
                    else:
                        request_handler = self._request_handler
                    request = self._request_factory(
                        message, payload, self, writer, self._task_handler or asyncio.current_task(loop),  # type: ignore[arg-type]
                    )
                    coro = self._handle_request(request, start, request_handler)
                    if sys.version_info >= (3, 12):
                        task = asyncio.Task(coro, loop=loop, eager_start=True)
                    else:
                        task = loop.create_task(coro)
                    try:
                        resp, reset = await task
                    except ConnectionError:
                        self.log_debug("Ignored premature client disconnection")
                        break
                    del task
                    if reset:
                        self.log_debug("Ignored premature client disconnection 2")
                        break
                    keep_alive = bool(resp.keep_alive)
                self._keepalive = keep_alive

                if not payload.is_eof():  # the answer left before the body was read: read its rest off
                    lingering_time = self._lingering_time
                    if not self._force_close and lingering_time:
                        now = loop.time()
                        end_t = now + lingering_time
                        try:
                            while not payload.is_eof() and now < end_t:
                                async with ceil_timeout(end_t - now):
                                    await payload.readany()
                                now = loop.time()
                        except (TimeoutError, asyncio.CancelledError):
                            if (t := asyncio.current_task()) and t.cancelling():
                                raise
                    if not payload.is_eof() and not self._force_close:
                        self.close()

                payload.set_exception(_PAYLOAD_ACCESS_ERROR)

            except asyncio.CancelledError:
                self.log_debug("Ignored premature client disconnection")
                self.force_close()
                raise
            except Exception as exc:
                self.log_exception("Unhandled exception", exc_info=exc)
                self.force_close()
            except BaseException:
                self.force_close()
                raise
            finally:
                if request is not None:
                    request._task = None  # type: ignore[assignment]  # the reference cycle aiohttp breaks too

            if self._keepalive and not self._close and not self._force_close:
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self._outbox.flush()  # the last answer may wait in it: it leaves before the close
                self.transport.close()

    async def _serve(self, request: ProxiedRequest, payload: StreamReader, handler: ProxiedHandler) -> bool:
        """Serve one proxied call and write its answer; whether the connection may carry another request."""
        self._request_in_progress = True
        try:
            self._current_request = request  # type: ignore[assignment]  # the time limits read its body
            try:
                coding = transfer_coding_refusal(request.headers) if request.chunked else None
                refusal = None if coding is None else self._refusal_answer(cast(BaseRequest, request), coding)
                if refusal is None and request.version == HttpVersion11 and hdrs.EXPECT in request.headers:
                    refusal = await self._expect(request)
                if refusal is None:
                    try:
                        answer = await handler(request)
                    except Exception:  # a bug, not a refusal: SPEC's 500, never a trace
                        answer = handler.failed(request)
                else:
                    answer = refusal
            finally:
                self._current_request = None
            return await write_answer(request, answer)
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
            self._answered += 1
            if self._at_boundary is False:
                self._at_boundary = None  # what came during the call was its body, not a head
            if not payload.is_eof():
                if payload.exception() is not None:
                    self.force_close()  # the body failed (stalled, undecodable): nothing more can follow it
                else:
                    self._lingered = True

    async def _expect(self, request: ProxiedRequest) -> web.StreamResponse | None:
        """aiohttp's default expectation handler: a 100 for `100-continue`, a 417 for anything else."""
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.send(_CONTINUE)
            return None
        error = InvalidRequest("Expectation Failed.")
        error.status = 417  # type: ignore[misc]
        return self._refusal_answer(cast(BaseRequest, request), error, close=False)


class ProxyServer(ClientServer):
    """aiohttp's low-level server making `LeanConnection`s, which hand what they do not serve to `ProxyConnection`s.

    `proxied` maps each endpoint path to its handler; both connections route by `lean_routes`, made
    from it once. The server holds what its connections share: the gateway, the screen, and the
    outbox their answers leave through.
    """

    def __init__(self, *args: Any, gateway: Gateway, app: web.Application, proxied: Mapping[str, ProxiedHandler],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.screen = Screen(gateway)
        self.outbox = Outbox(self._loop)  # answers leave at the end of the loop's turn
        self.app = app
        self.lean_routes: dict[str, LeanRoute] = {
            path: (path, handler, SCREENED_PATHS.get(path)) for path, handler in proxied.items()
        }
        self.max_body_bytes = gateway.settings.server.max_body_bytes

    @property
    def screened(self) -> int:
        """Calls the screen answered, since start."""
        return self.screen.screened

    def __call__(self) -> RequestHandler:
        return cast(RequestHandler, LeanConnection(self))

    def aiohttp_connection(self) -> ProxyConnection:
        """The connection that takes over from a lean one (aiohttp's parser and request loop)."""
        return ProxyConnection(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """The AppRunner `serve` (and the tests) use: the app's server, with proxied calls served by the connection.

    Its connections' limits come from the gateway's settings (the app has started by now), so a
    runner made with aiohttp's arguments alone gets them; the keep-alive timeout is one of them.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        app = self.app
        gateway = app[GATEWAY]
        limits = ConnectionLimits.from_settings(gateway.settings, open_file_limit())
        kwargs = {**server._kwargs, "keepalive_timeout": limits.keepalive_timeout}
        return ProxyServer(
            server.request_handler, request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation, loop=server._loop, gateway=gateway, limits=limits,
            app=app, proxied=app[PROXIED_HANDLERS], **kwargs,
        )
