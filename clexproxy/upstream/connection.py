"""One kept-alive HTTP/1.1 connection to a provider: its socket, its answer parser and the one call reading it.

Why not aiohttp's client protocol: on every answer it made a message tuple, a `CIMultiDict` of
the headers, a `StreamReader` (a deque, a wake-up future per read) and a `DataQueue` (another
deque), and it cancelled and remade a timer on every read from the socket: together a quarter
of an admitted call's time, and two deques of every open stream's memory. `UpstreamConnection` feeds the
socket's bytes to `ResponseParser` (strict HTTP/1.1 framing, compiled) and keeps only what a call
reads: the status, the body bytes not yet read, and the failure to raise once those are read.

The read timeout is the longest silence allowed while an answer is due: one deadline per
connection, moved forward by each read; its one timer, when it fires early, sleeps again until
it. It does not run while reading is paused (a slow client is not a silent upstream).
"""

from __future__ import annotations

import asyncio

from aiohttp.client_exceptions import ClientOSError, ClientPayloadError, ServerDisconnectedError, ServerTimeoutError
from aiohttp.http_exceptions import HttpProcessingError

from clexproxy.fastpath.h1 import ResponseError, ResponseParser

# Body bytes held unread before the socket is paused (a client reading slower than its provider writes).
HIGH_WATER = 2**17


class UpstreamConnection(asyncio.Protocol):
    """A provider connection that answers one call at a time: `begin()`, then `head()`, then `readany()`.

    A call's failure is raised by the read that finds nothing left to read: the body bytes that
    came before a connection broke are still read first (they belong to the client). The
    connection is reusable (`reusable`) only after an answer read to its end that did not ask to
    close and sent nothing past its end.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self._parser = ResponseParser()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._answering = False  # an answer is due: bytes may come, silence is timed
        self._got_bytes = False  # of this answer
        self._paused = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    # the socket's side --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._answering:  # bytes no call asked for: this upstream cannot be trusted with another
            self.close()
            return
        self._got_bytes = True
        parser = self._parser
        try:
            body = parser.feed(data)
        except ResponseError as exc:
            if exc.body:  # what came before the break is still the client's
                self._chunks.append(exc.body)
            failure: BaseException
            if parser.status:
                failure = ClientPayloadError(f"the provider's answer broke HTTP/1.1's framing: {exc}")
            else:
                failure = HttpProcessingError(message=f"the provider's answer is not HTTP/1.1: {exc}")
            self._fail(failure)
            return
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        if parser.done:
            self._answering = False
            if parser.extra or not parser.keep_alive:
                self._closing = True
        elif self._read_timeout:
            self._deadline = self._loop.time() + self._read_timeout
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (body or parser.done or parser.status):
            waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # the transport closes, and `connection_lost` says what that means for the answer

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._closing = True
        self._stop_timer()
        if not self._answering:
            self._wake()
            return
        parser = self._parser
        try:
            parser.feed_eof()
        except ResponseError:
            failure: BaseException
            if not self._got_bytes:  # the call may go again: the server never answered it
                failure = ServerDisconnectedError() if exc is None else ClientOSError(*_os_args(exc))
            elif not parser.status:
                failure = HttpProcessingError(message="the provider closed the connection mid-head")
            else:
                failure = ClientPayloadError("the provider closed the connection before the answer's end")
            self._fail(failure)
            return
        self._answering = False  # a body that ran to the close
        self._wake()

    # the call's side ----------------------------------------------------------------------------

    def begin(self) -> None:
        """A request is about to be written: its answer is due from now on."""
        self._parser.begin()
        self._chunks.clear()
        self._buffered = 0
        self._failure = None
        self._got_bytes = False
        self._answering = True
        if self._read_timeout:
            self._deadline = self._loop.time() + self._read_timeout
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._on_deadline)

    async def head(self) -> int:
        """Wait for the answer's status (interim 1xx answers skipped)."""
        parser = self._parser
        while not parser.status:
            if self._failure is not None:
                raise self._failure
            waiter = self._waiter = self._loop.create_future()  # inline, not a helper: a frame less per waiting call
            try:
                await waiter
            finally:
                self._waiter = None
        return parser.status

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers by lower-case name (built on demand: only an error's path reads them)."""
        return self._parser.headers

    async def readany(self) -> bytes:
        """The body bytes that came since the last read; b"" at the body's end. Raises the answer's failure."""
        while not self._chunks:
            if self._failure is not None:
                raise self._failure
            if not self._answering:
                return b""
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()
                if self._read_timeout:
                    self._deadline = self._loop.time() + self._read_timeout
        return data

    async def read(self, limit: int = -1) -> bytes:
        """The whole body, or its first `limit` bytes when `limit` is not negative (the rest is dropped)."""
        parts = []
        size = 0
        while limit < 0 or size < limit:
            data = await self.readany()
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if limit < 0 else body[:limit]

    def at_eof(self) -> bool:
        """Whether the body has been read to its end (nothing more will come, nothing is left unread)."""
        return not self._answering and not self._chunks and self._failure is None

    @property
    def reusable(self) -> bool:
        return (self.transport is not None and not self._closing and not self._answering and not self._chunks
                and self._failure is None and self._parser.done)

    def close(self) -> None:
        self._closing = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self._answering:
            self._fail(ServerDisconnectedError())

    # ---------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: BaseException) -> None:
        """The answer cannot go on: raise `failure` to the call once it has read what came, and drop the socket."""
        self._failure = failure
        self._answering = False
        self._closing = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        if not self._answering:
            return  # the timer outlived its answer; the next `begin` sets a new one
        now = self._loop.time()
        if self._paused:
            self._deadline = now + self._read_timeout  # the client is slow, not the provider
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_deadline)
            return
        self._fail(ServerTimeoutError("Timeout on reading data from socket"))


def _os_args(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, OSError):
        return exc.errno or 0, exc.strerror or str(exc)
    return 0, str(exc)
