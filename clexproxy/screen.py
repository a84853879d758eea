"""Refused calls answered from the raw request, before aiohttp builds a Request for them.

A flood of calls with a bad key or a spent per-minute limit must cost the gateway little: it
is what a misbehaving client or an attack looks like. Through aiohttp's full path each such
call still gets a Request, a handler task, a router lookup and a Response (~180 µs of CPU on
the benchmark machine, as much as half an admitted call). Here the connection's parsed request
is looked at as it leaves aiohttp's C parser: when the key or the limit refuses it, the 429 or
401 is written to the socket at once, with the same headers, body, metrics and access line as
the full path would give; every other request continues unchanged.

Only a request that is alone on its connection with nothing ahead of it is screened (so answers
never overtake one another), whose body has fully arrived, and that keeps the connection open.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_protocol import RequestHandler

from clexproxy.errors import ApiError
from clexproxy.gateway import Gateway
from clexproxy.handlers.proxy import screen

# The proxied paths, as clients send them, and the endpoint each serves (see app.py's routes).
SCREENED_PATHS = {
    "/v1/chat/completions": "/chat/completions",
    "/api/chat": "/chat/completions",
    "/v1/embeddings": "/embeddings",
}

class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, email.utils.formatdate(second, usegmt=True)
        return cls.value


_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus}


def raw_response(error: ApiError, request_id: str) -> bytes:
    """The whole HTTP/1.1 response the full path sends for `error` (`error.to_response`), as bytes."""
    body = error.to_bytes()
    fields = "".join([f"{name}: {value}\r\n" for name, value in error.headers.items()])
    return (
        f"{_STATUS_LINES[error.status]}{fields}X-Request-Id: {request_id}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nDate: {_Date.now()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
    ).encode() + body


class _ScreeningParser:
    """Stands in front of a connection's aiohttp request parser and takes refused calls out of its output."""

    __slots__ = ("_gateway", "_gateway_server", "_handler", "_parser", "_refusals")

    def __init__(self, parser: Any, handler: ScreeningRequestHandler, server: ScreeningServer) -> None:
        self._parser = parser
        self._handler = handler
        self._gateway_server = server
        self._gateway = server.gateway
        self._refusals = server.gateway.refusals

    def feed_data(self, data: bytes) -> tuple[Any, bool, bytes]:
        messages, upgraded, tail = self._parser.feed_data(data)
        if len(messages) == 1 and self._refusals and self._handler.idle:  # no refusal lately: nothing to screen
            message, payload = messages[0]
            endpoint = SCREENED_PATHS.get(message.path)
            if (endpoint is not None and message.method == "POST" and message.version == HttpVersion11
                    and not message.should_close and payload.is_eof()):
                refused = screen(self._gateway, endpoint, message.headers)
                if refused is not None:
                    self._handler.answer(raw_response(*refused))
                    self._gateway_server.screened += 1
                    self._parser.message_consumed()
                    return (), upgraded, tail
        self._handler.in_flight += len(messages)
        return messages, upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class ScreeningRequestHandler(RequestHandler):
    """aiohttp's connection protocol with `_ScreeningParser` in front of its parser."""

    def __init__(self, manager: ScreeningServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._parser = _ScreeningParser(self._parser, self, manager)  # type: ignore[assignment]  # duck-typed stand-in
        self.in_flight = 0  # requests handed to aiohttp whose answer is not yet written

    @property
    def idle(self) -> bool:
        """Every earlier request on this connection is answered: an answer written now is in order."""
        return self.in_flight <= 0 and not self._force_close and not self._close

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self.in_flight -= 1  # the answer is written (or the request failed): later ones may be screened

    def answer(self, raw: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(raw)
            # The connection was just used: its keep-alive clock starts again, as after any answer.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout


class ScreeningServer(web.Server):
    """aiohttp's low-level server, making `ScreeningRequestHandler`s."""

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.screened = 0  # calls answered from the raw request
    def __call__(self) -> RequestHandler:
        return ScreeningRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """The AppRunner `serve` (and the tests) use: the app's server, with refused calls screened."""

    async def _make_server(self) -> web.Server:
        from clexproxy.handlers.common import GATEWAY

        server = await super()._make_server()
        return ScreeningServer(
            server.request_handler, request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation, loop=server._loop, gateway=self.app[GATEWAY],
            **server._kwargs,
        )
