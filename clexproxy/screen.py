"""Refused calls answered from the raw request, before aiohttp builds a Request for them.

A flood of calls with a bad key or a spent per-minute limit must cost the gateway little: it
is what a misbehaving client or an attack looks like. Through aiohttp's full path each such
call still gets parsed, a Request, a handler task, a router lookup and a Response (~180 µs of
CPU on the benchmark machine, as much as two thirds of an admitted call). Here the bytes of a
request are looked at as they arrive: when the key or the limit refuses it, the 429 or 401 is
written to the socket at once, with the same headers, body, metrics and access line as the
full path would give; every other request goes to aiohttp's parser unchanged.

Only a request that arrived whole, alone in one read, on a connection with nothing ahead of it
is screened (so answers never overtake one another), and only while some call was refused a
moment ago (clexproxy/refusals.py): otherwise the bytes go to aiohttp untouched.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from clexproxy.errors import ApiError
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY
from clexproxy.handlers.proxy import PROXIED_PATHS, screen
from clexproxy.outbox import Outbox


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


def whole_request(data: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
    """`data`'s request line and headers (lower-cased names) when it is exactly one whole, plain request.

    None for anything else: part of a request, more than one, a chunked body, a repeated
    framing header or a folded line. Those go to aiohttp's parser, which knows every case.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1] in b" \t" or name[0] in b" \t":
            return None
        name = name.lower()
        if name in headers and name in _FRAMING:
            return None
        headers[name] = value.strip(b" \t")
    if b"transfer-encoding" in headers:
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or len(data) != end + 4 + int(length):
        return None
    return lines[0], headers


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host", b"authorization"})
_SCREENED_LINES = {f"POST {path} HTTP/1.1".encode(): endpoint for path, endpoint in PROXIED_PATHS.items()}


class ScreeningRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering refused calls before its parser sees them.

    A request is screened only when aiohttp's parser holds nothing (the connection's previous
    bytes were whole requests too), every request aiohttp was handed on this connection is
    answered (so answers stay in order), and the request arrived whole in one read.
    """

    def __init__(self, manager: ScreeningServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._screening = manager
        self._refusals = manager.gateway.refusals
        self._answered = 0  # requests handed to aiohttp whose answer is written
        self._at_boundary = True  # aiohttp's parser holds no part of a request

    @property
    def idle(self) -> bool:
        """Every request aiohttp was handed is answered: an answer written now is in order."""
        return self._request_count == self._answered and not self._force_close and not self._close

    def data_received(self, data: bytes) -> None:
        if not data:  # aiohttp re-running its parser on what it holds: nothing new arrived
            super().data_received(data)
            return
        if not self._refusals.active():  # no refusal lately: nothing to screen, nor framing to follow
            self._at_boundary = False
            super().data_received(data)
            return
        request = whole_request(data)
        if request is not None and self._at_boundary and self.idle:
            raw = self._screen(*request)
            if raw is not None:
                self.answer(raw)
                return
        self._at_boundary = request is not None
        super().data_received(data)

    def _screen(self, line: bytes, headers: dict[bytes, bytes]) -> bytes | None:
        endpoint = _SCREENED_LINES.get(line)
        if endpoint is None or b"expect" in headers or b"close" in headers.get(b"connection", b"").lower():
            return None
        wanted = {}
        authorization = headers.get(b"authorization")
        if authorization is not None:
            wanted["Authorization"] = authorization.decode("utf-8", "surrogateescape")
        request_id = headers.get(b"x-request-id")
        if request_id is not None:
            wanted["X-Request-Id"] = request_id.decode("utf-8", "surrogateescape")
        refused = screen(self._screening.gateway, endpoint, wanted)
        if refused is None:
            return None
        self._screening.screened += 1
        return raw_response(*refused)

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._answered += 1  # the answer is written (or the request failed): later ones may be screened

    def answer(self, raw: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._screening.outbox.write(transport, raw)
            # The connection was just used: its keep-alive clock starts again, as after any answer.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout


class ScreeningServer(web.Server):
    """aiohttp's low-level server, making `ScreeningRequestHandler`s."""

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.screened = 0  # calls answered from the raw request
        self.outbox = Outbox(self._loop)  # answers leave at the end of the loop's turn (clexproxy/outbox.py)

    def __call__(self) -> RequestHandler:
        return ScreeningRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """The AppRunner `serve` (and the tests) use: the app's server, with refused calls screened."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ScreeningServer(
            server.request_handler, request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation, loop=server._loop, gateway=self.app[GATEWAY],
            **server._kwargs,
        )
