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

    A waiting stream costs one dict entry, not a timer or a task of its own (a per-stream
    `call_later` and its cancel were ~3% of a streamed call's CPU, and a sleeping writer task
    per stream some 1.2 KB while thousands wait). One tick every quarter interval writes a
    comment to each stream that has waited a whole interval since its request or its last
    comment, so a comment goes out every 1 to 1.25 intervals.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._tick = interval / 4
        self._waiting: dict[_KeepAlive, float] = {}  # each stream's next comment is due at
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
        waiting = self._waiting
        due = [keep for keep, at in waiting.items() if at <= now]
        then = now + self.interval
        for keep in due:
            waiting[keep] = then
            keep.beat()
        if waiting:
            self._handle = loop.call_later(self._tick, self._on_tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting.clear()


class _KeepAlive:
    """One stream's keep-alive comments: each a short write, in a task only while it is being written.

    The relay stops it before writing anything itself (`stop` waits for a comment being written),
    so the two never interleave.
    """

    __slots__ = ("_owner", "_request", "_response", "_task", "_waiting")

    def __init__(self, owner: KeepAlives, request: Any, response: StreamAnswer) -> None:
        self._owner = owner
        self._request = request
        self._response = response
        self._task: asyncio.Task[None] | None = None  # the comment being written, while its client is slow to read
        self._waiting = True

    def beat(self) -> None:
        """Write one comment; none while the last one is still being written (its client is not reading)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        try:
            if not self._response.prepared:
                await self._response.prepare(self._request)
            await self._response.write(KEEPALIVE)
        except Exception:
            self._task = None  # this task: not cancelled by the cancel below, it ends here
            self.cancel()  # the client left: the relay's next write finds it out
        finally:
            self._task = None

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
