"""A proxied call's request as the connection parsed it: no `web.Request`, no router, no response object.

The proxied endpoints are the gateway's traffic, and aiohttp's web framework cost about half of an
admitted call's CPU: a `Request` built per call, a task per call, the router's walk, a `Response`
with its own case-insensitive header dict, its `prepare` and payload writer. `ProxiedRequest` holds
what the one path (`handlers.proxy.handle`) reads of a request, from whichever connection parsed it:
the lean connection's (`LeanConnection`: its own scan of a plain head and a `LeanBody`) or aiohttp's
(the parser's `CIMultiDictProxy` and `StreamReader`, so every framing aiohttp accepts, chunked or
compressed, arrives as before). With them: the app, the peer, and per-call marks (the request id,
the shutdown's `CUT`). Answers leave through `send`: the server's `Outbox`, and the
socket's flow control for a stream; `write_answer` sends the handler's answer. Once a stream's
upstream has answered, the head is let go (`forget_head`): a stream may be open for minutes.

The console's signed-in API Explorer (`/api/chat` without a key) reads cookies and the origin the
way the console's pages do: for that one branch `web_request` builds aiohttp's `Request`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http import HttpVersion
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from clexproxy.answer_wire import SSEAnswer, json_answer, response_bytes
from clexproxy.outbox import Outbox

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Body(Protocol):
    """A request body as the path reads it: aiohttp's `StreamReader`, or the lean connection's `LeanBody`."""

    total_bytes: int

    async def readany(self) -> bytes: ...
    def is_eof(self) -> bool: ...
    def exception(self) -> BaseException | None: ...
    def set_exception(self, exc: BaseException) -> None: ...
    def feed_eof(self) -> None: ...


class ClientSide(Protocol):
    """What a call reads of its client connection (aiohttp's `RequestHandler` or a `LeanConnection`)."""

    transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop
    _paused: bool

    async def _drain_helper(self) -> None: ...


class ProxiedRequest:
    """One call to a proxied endpoint, read by its connection; see the module's docstring."""

    __slots__ = ("_mark", "_mark_value", "_marks", "_message", "_outbox", "_protocol", "app", "chunked", "content",
                 "headers", "keep_alive", "method", "output_size", "path", "version")

    def __init__(self, headers: CIMultiDictProxy[str], version: HttpVersion, keep_alive: bool, chunked: bool,
                 content: Body, protocol: ClientSide, app: web.Application, path: str, outbox: Outbox,
                 message: RawRequestMessage | None = None) -> None:
        self._message = message  # aiohttp's parse, for `web_request`
        self.headers = headers
        self.method = "POST"
        self.version = version
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content = content
        self.app = app
        self.path = path  # the endpoint's path, as the routes name it (no query)
        self.output_size = 0  # bytes of the answer written: once any left, no other answer can follow
        self._protocol = protocol
        self._outbox = outbox
        # The first mark set (the request id, on every call) in two slots; a dict only for more (a shutdown's cut).
        self._mark: Any = None
        self._mark_value: Any = None
        self._marks: dict[Any, Any] | None = None

    # what the path reads -------------------------------------------------------------------------

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)  # the parser let through digits only

    @property
    def remote(self) -> str | None:
        transport = self._protocol.transport
        peer = None if transport is None else transport.get_extra_info("peername")
        if peer is None:
            return None
        return str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer)

    def get(self, key: Any, default: Any = None) -> Any:
        if key is self._mark:
            return self._mark_value
        marks = self._marks
        return default if marks is None else marks.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        if key is self._mark:
            return self._mark_value
        if self._marks is None:
            raise KeyError(key)
        return self._marks[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._mark is None or key is self._mark:
            self._mark, self._mark_value = key, value
            return
        if self._marks is None:
            self._marks = {}
        self._marks[key] = value

    def forget_head(self) -> None:
        """The call will not read its request's head again (its upstream has answered): let the parse of it go.

        A stream can last minutes; the message aiohttp's parser made of the head (its headers twice
        over, as a `CIMultiDict` and as raw pairs) is some 3.7 KB of the 25 KB an open stream holds.
        """
        self._message = None
        self.headers = _NO_HEADERS

    def _cancel(self, exc: BaseException) -> None:
        """The connection was lost: a read of the body fails with `exc` (as aiohttp's `Request._cancel`)."""
        self.content.set_exception(exc)

    async def web_request(self) -> web.Request:
        """aiohttp's `Request` for this call, routed as the app would (its `app` is read through the route).

        For code that reads a request the way the console's pages do.
        """
        protocol = cast(Any, self._protocol)  # only aiohttp's connection parses a head into a message
        writer = StreamWriter(protocol, protocol._loop)
        task = asyncio.current_task()
        assert task is not None
        if self._message is None:
            raise RuntimeError("the request's head was not parsed by aiohttp, or was already let go")
        request = self.app._make_request(self._message, cast(Any, self.content), protocol, writer, task)
        match_info = await self.app.router.resolve(request)
        match_info.add_app(self.app)
        match_info.freeze()
        request._match_info = match_info
        return request

    # answers -------------------------------------------------------------------------------------

    def json_answer(self, body: bytes, headers: dict[str, str]) -> bytes:
        """A whole 200 JSON answer with `headers`, as bytes for the connection to send."""
        return json_answer(self.version, self.keep_alive, headers, body)

    def sse_answer(self, headers: dict[str, str]) -> SSEAnswer:
        """A 200 event stream with `headers` (which may still change until its first write)."""
        return SSEAnswer(self, headers)

    async def send(self, data: bytes) -> None:
        """Queue `data` for the client; wait while its socket's buffer is full. ConnectionResetError once it left."""
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        self._outbox.write(transport, data)
        if protocol._paused:
            await protocol._drain_helper()


async def write_answer(request: ProxiedRequest, answer: Answer) -> bool:
    """Send the handler's answer (a stream has written itself); whether the connection may carry another request."""
    if isinstance(answer, bytes):
        keep_alive = request.keep_alive
        data = answer
    elif isinstance(answer, SSEAnswer):
        if not answer.eof_sent:  # the client left mid-stream: the relay stopped writing
            return False
        keep_alive = answer.keep_alive
        data = b""
    else:
        if answer.prepared:
            raise RuntimeError("a proxied handler's error answer was prepared elsewhere")
        data, keep_alive = response_bytes(cast(web.Response, answer), request.version, request.keep_alive)
    if data:
        try:
            await request.send(data)
        except ConnectionResetError:
            return False
    if not keep_alive:
        request._outbox.flush()  # before the connection closes the socket
    return keep_alive


# A proxied endpoint's answer: a whole one as bytes, a stream it wrote, or an error for the connection to write.
Answer = bytes | SSEAnswer | web.StreamResponse


class ProxiedHandler(Protocol):
    """An endpoint's calls as the connection serves them: the call's coroutine, and the 500 for what escaped it."""

    def __call__(self, request: ProxiedRequest) -> Awaitable[Answer]: ...

    def failed(self, request: ProxiedRequest) -> Answer:
        """The answer when the call raised (a bug): called while the exception is being handled."""
        ...
