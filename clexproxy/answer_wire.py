"""Answers to proxied calls, written to the client's socket from a head built once per answer.

aiohttp's `Response` costs, per answer, a case-insensitive header dict built from ours, a
`prepare` coroutine, a payload writer and its header serializer; the proxied calls' answers are
always one of two shapes, a whole JSON body or a chunked SSE stream, so their heads are built
here directly from the handler's header dict. The bytes are aiohttp's: the same status line, the
handler's headers in their order, then what `StreamResponse.prepare` adds in the order it adds
it (`Content-Type`, `Content-Length` or `Transfer-Encoding: chunked`, `Date`, `Server`, and
`Connection` as HTTP/1.0 and 1.1 want it), refusing the control characters it refuses. A test
holds both renderings equal for every version and keep-alive.

An error answer (a `web.Response` from an `ErrorRenderer`) is rare on the admitted path and
varied in shape; it is serialized by aiohttp's own `prepare` (`response_bytes`), so its bytes
are what aiohttp wrote before.

`SSEAnswer` is the stream: its head leaves with its first bytes (one write, not two, for a short
answer), each write is one chunk, writes wait while the socket's buffer is over its high-water
mark, and a write to a closed connection raises `ConnectionResetError` as aiohttp's writer does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol, cast

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict

# aiohttp's own test (http_writer's): control characters but a tab may not appear in a header's name or value.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_JSON_TYPE = b"Content-Type: application/json\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_TERMINATOR = b"0\r\n\r\n"


class _Date:
    """The Date header's value as aiohttp writes it, encoded once a second."""

    second = -1
    value = b""


def http_date() -> bytes:
    """The Date header's value now, as aiohttp writes it (formatted once a second)."""
    second = int(time.time())
    if second != _Date.second:
        _Date.second, _Date.value = second, rfc822_formatted_time().encode()
    return _Date.value


def header_lines(headers: Mapping[str, str]) -> bytes:
    """`name: value` lines, each ending in CRLF; ValueError for a control character, as aiohttp raises."""
    text = "".join(headers) + "".join(headers.values())
    # `isprintable` passes the usual all-printable head at C speed; the regex decides the rest (a tab passes).
    if not text.isprintable() and _FORBIDDEN.search(text) is not None:
        raise ValueError("Forbidden control character detected in headers. Potential header injection attack.")
    return ("\r\n".join(map(": ".join, headers.items())) + "\r\n").encode("utf-8") if headers else b""


def _connection(version: HttpVersion, keep_alive: bool) -> bytes:
    """The Connection header aiohttp adds: keep-alive for HTTP/1.0 kept alive, close for HTTP/1.1 not."""
    if keep_alive:
        return b"Connection: keep-alive\r\n" if version == HttpVersion10 else b""
    return b"Connection: close\r\n" if version == HttpVersion11 else b""


def json_answer(version: HttpVersion, keep_alive: bool, headers: Mapping[str, str], body: bytes) -> bytes:
    """A 200 with `body` (JSON) after `headers`: what `web.Response(body=, content_type=, headers=)` writes."""
    return b"HTTP/%d.%d 200 OK\r\n%b%bContent-Length: %d\r\nDate: %b\r\n%b%b\r\n%b" % (
        version.major, version.minor, header_lines(headers), _JSON_TYPE, len(body), http_date(), _SERVER,
        _connection(version, keep_alive), body,
    )


class _Writer:
    """The request and payload writer `StreamResponse.prepare` talks to, keeping the head it serializes."""

    def __init__(self, version: HttpVersion, keep_alive: bool, late: Mapping[str, str]) -> None:
        self._late = late
        self.version = version
        self.keep_alive = keep_alive
        self.method = hdrs.METH_POST
        self.length: int | None = None
        self.head = b""
        self.chunked = False

    @property
    def _payload_writer(self) -> _Writer:
        return self

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        return None

    def enable_chunking(self) -> None:
        self.chunked = True

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        late = self._late
        if late:  # values aiohttp adds itself, replaced in place under aiohttp's own names
            headers = CIMultiDict((k, late.get(k, v)) for k, v in headers.items())
        self.head = _serialize_headers(status_line, headers)

    def send_headers(self) -> None:
        return None


def response_bytes(response: web.Response, version: HttpVersion, keep_alive: bool,
                   late: Mapping[str, str] | None = None) -> tuple[bytes, bool]:
    """`response` (unprepared, with a body) as aiohttp writes it, and whether the connection may carry another.

    aiohttp's own `prepare` and serializer, so every header it adds is added as before. `late`
    replaces values it adds while preparing (`hdrs.DATE`, `hdrs.CONTENT_LENGTH`): the screen's
    templates put their slots there. Nothing in `prepare` waits for I/O here, so its coroutine
    finishes at its first step.
    """
    writer = _Writer(version, keep_alive, late or {})
    step = response.prepare(cast(web.BaseRequest, writer))
    try:
        step.send(None)
    except StopIteration:
        pass
    else:
        step.close()
        raise RuntimeError("StreamResponse.prepare waited for I/O while rendering an answer")
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError("an error answer's body is bytes")
    return writer.head + body, bool(response.keep_alive)


class StreamAnswer(Protocol):
    """What a stream is written to: `SSEAnswer` on the gateway, aiohttp's `StreamResponse` on a bare app."""

    @property
    def prepared(self) -> bool: ...

    @property
    def headers(self) -> MutableMapping[str, str]: ...

    async def prepare(self, request: Any) -> Any: ...

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


class Client(Protocol):
    """The connection a stream goes to (the call's `ProxiedRequest`)."""

    output_size: int

    @property
    def version(self) -> HttpVersion: ...

    @property
    def keep_alive(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...


class SSEAnswer:
    """A 200 `text/event-stream` answer written chunk by chunk; `headers` may change until `prepare`.

    The relay and the keep-alive comments use it as they would a `web.StreamResponse`: `prepared`,
    `prepare`, `write`, `write_eof`.
    """

    __slots__ = ("_chunked", "_eof", "_head", "_request", "headers", "keep_alive", "prepared")

    def __init__(self, request: Client, headers: dict[str, str]) -> None:
        self._request = request
        self.headers = headers
        self.prepared = False
        self._eof = False
        self._head = b""
        version = request.version
        # HTTP/1.0 has no chunked coding: the stream ends with the connection (aiohttp's rule).
        self._chunked = version >= HttpVersion11
        self.keep_alive = request.keep_alive and self._chunked

    @property
    def eof_sent(self) -> bool:
        return self._eof

    async def prepare(self, request: Any = None) -> None:
        """Fix the head; it leaves with the first bytes written."""
        if self.prepared:
            return
        self.prepared = True
        version = self._request.version
        self._head = b"HTTP/%d.%d 200 OK\r\n%b%bDate: %b\r\n%b%b\r\n" % (
            version.major, version.minor, header_lines(self.headers), _CHUNKED if self._chunked else b"",
            http_date(), _SERVER, _connection(version, self.keep_alive),
        )

    async def write(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if not self.prepared:
            await self.prepare()
        await self._send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof:
            return
        if not self.prepared:
            await self.prepare()
        self._eof = True
        if self._chunked:
            out = b"%x\r\n%b\r\n%b" % (len(data), data, _TERMINATOR) if data else _TERMINATOR
        else:
            out = data
        await self._send(out)

    async def _send(self, data: bytes) -> None:
        head, self._head = self._head, b""
        if head:
            data = head + data
        request = self._request
        request.output_size += len(data)
        await request.send(data)
