"""A TCP relay in front of a real server that can cut connections as replies come back.

It recreates, on demand and on time, the fault behind a lost reply: the server ran the command,
then the connection died before its answer reached the client (a Redis restart between the two).
Killing Redis does that only by chance; this does it every time, with Redis itself untouched.
"""

from __future__ import annotations

import asyncio
import contextlib


class ReplyCutter:
    """While `cutting` is set, a request holding those bytes reaches the server, and its reply closes the connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cutting: bytes | None = None
        self.cut = 0  # replies dropped so far
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> ReplyCutter:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        marked = asyncio.Event()  # a request on this connection holds the marker: its reply is cut
        pumps = [asyncio.create_task(self._requests(client_reader, server_writer, marked)),
                 asyncio.create_task(self._replies(server_reader, client_writer, marked))]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        marked: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.cutting is not None and self.cutting in data:
                    marked.set()
                writer.write(data)
                await writer.drain()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       marked: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if marked.is_set():
                    self.cut += 1
                    return  # the relay closes both sides: the command ran, its answer is gone
                writer.write(data)
                await writer.drain()
