"""Keep-alive comments on streams that wait for a slow upstream: one timer for all the streams of a process.

The relay (`relay.stream`) hands each stream to `KeepAlives.watch` before it waits for the
upstream's first answer event and stops the watch (`_KeepAlive.stop`) before it writes anything
itself, so a comment and the answer never interleave. The gateway owns one `KeepAlives` per
process and closes it at stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clexproxy.answer_wire import StreamAnswer

KEEPALIVE = b": keep-alive\n\n"


class KeepAlives:
    """`: keep-alive` comments for streams whose upstream is slow to start, from one shared timer.

    A stream costs one dict entry while it waits for its first answer event, not a timer of
    its own (a per-stream `call_later` and its cancel were ~3% of a streamed call's CPU). One
    tick every quarter interval starts a writer for each stream that has waited a whole
    interval, so the first comment goes out between 1 and 1.25 intervals after the request.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._tick = interval / 4
        self._waiting: dict[_KeepAlive, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, request: Any, response: StreamAnswer) -> _KeepAlive:
        keep = _KeepAlive(self, request, response)
        loop = asyncio.get_running_loop()
        self._waiting[keep] = loop.time() + self.interval
        if self._handle is None:
            self._handle = loop.call_later(self._tick, self._on_tick)
        return keep

    def forget(self, keep: _KeepAlive) -> None:
        self._waiting.pop(keep, None)

    def _on_tick(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [keep for keep, at in self._waiting.items() if at <= now]
        for keep in due:
            del self._waiting[keep]
            keep.start()
        if self._waiting:
            self._handle = loop.call_later(self._tick, self._on_tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting.clear()


class _KeepAlive:
    """One stream's keep-alive comments: a writer task that runs only once the stream has waited an interval.

    The relay stops it before writing anything itself, so the two never interleave.
    """

    __slots__ = ("_owner", "_request", "_response", "_task", "_waiting")

    def __init__(self, owner: KeepAlives, request: Any, response: StreamAnswer) -> None:
        self._owner = owner
        self._request = request
        self._response = response
        self._task: asyncio.Task[None] | None = None
        self._waiting = True

    @property
    def running(self) -> bool:
        return self._waiting or self._task is not None

    def start(self) -> None:
        self._waiting = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            if not self._response.prepared:
                await self._response.prepare(self._request)
            await self._response.write(KEEPALIVE)
            await asyncio.sleep(self._owner.interval)

    def cancel(self) -> None:
        if self._waiting:
            self._waiting = False
            self._owner.forget(self)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        """Cancel and wait, so no comment is half-written when the relay writes."""
        task = self._task
        self.cancel()
        if task is not None:
            await asyncio.wait((task,))  # unlike `await task`, never swallows our own cancellation
            if not task.cancelled():
                task.exception()  # retrieved: a client that left shows up again on the relay's next write
