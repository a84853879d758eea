"""A lean call's request body, as the path reads it: the bytes that came with the head, and the rest as it comes.

aiohttp's `StreamReader` is a general stream (a deque, buffered-size accounting, flow control,
eof callbacks); its empty deque alone holds 760 bytes for as long as a call lasts. A body framed
by `Content-Length` needs less: a list of the reads that carried it, a future while the handler
waits for the next, and the failure that ended it (the client left, or it stalled: a 408). The
handler reads it as it reads aiohttp's (`readany` until `b""`), so both connections share one path.
"""

from __future__ import annotations

import asyncio


class LeanBody:
    """A `Content-Length` body fed by its connection (`feed`) and read by its handler (`readany`)."""

    __slots__ = ("_chunks", "_eof", "_exception", "_first", "_waiter", "total_bytes")

    def __init__(self, first: bytes, eof: bool) -> None:
        self._first = first  # what came with the head: all of a body, usually (no list for it)
        self._chunks: list[bytes] | None = None  # what came after it
        self._eof = eof
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = len(first)  # bytes of the body received so far (the time limits watch it)

    def feed(self, data: bytes, eof: bool) -> None:
        """More of the body came (`eof`: the last of it)."""
        if data:
            if self._chunks is None:
                self._chunks = [data]
            else:
                self._chunks.append(data)
            self.total_bytes += len(data)
        if eof:
            self._eof = True
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def is_eof(self) -> bool:
        """Whether the whole body came (or reading it ended), and all of it was read."""
        return self._eof and not self._first and not self._chunks

    def exception(self) -> BaseException | None:
        return self._exception

    def set_exception(self, exc: BaseException) -> None:
        """The body will not come whole: the next read raises `exc`."""
        self._exception = exc
        self._wake()

    async def readany(self) -> bytes:
        """The next bytes of the body, `b""` once it is all read; raises what ended it early."""
        first = self._first
        if first:
            self._first = b""
            return first
        while not self._chunks:
            if self._exception is not None:
                raise self._exception
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks.pop()
        data = b"".join(chunks)
        chunks.clear()
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
