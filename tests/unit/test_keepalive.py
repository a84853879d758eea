"""Keep-alive comments for streams waiting on a slow upstream (`KeepAlives`): one shared timer, no task per stream.

A stream that waits costs an entry in one dict; a comment is a short write, in a task only while it
is being written. These tests hold what thousands of waiting streams rely on: the comments repeat,
a client that does not read is not written to twice at once, one that left is not written to again,
and `stop` leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clexproxy.keepalive import KEEPALIVE, KeepAlives

INTERVAL = 0.02


class FakeAnswer:
    """A stream's answer: records what was written; `hold` makes writes wait (a client that does not read)."""

    def __init__(self) -> None:
        self.prepared = False
        self.written: list[bytes] = []
        self.hold: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.writing = 0  # writes in progress at once, at most

    async def prepare(self, request: Any = None) -> None:
        self.prepared = True

    async def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append(data)
        if self.hold is not None:
            self.writing += 1
            try:
                await self.hold.wait()
            finally:
                self.writing -= 1


async def wait_until(predicate: Any, limit: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail after `limit` seconds (a bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(INTERVAL / 4)


async def test_comments_repeat_while_the_stream_waits_and_no_task_is_held_between_them() -> None:
    keepalives = KeepAlives(INTERVAL)
    answer = FakeAnswer()
    keep = keepalives.watch(None, answer)
    try:
        await wait_until(lambda: len(answer.written) >= 3)
        assert answer.prepared and set(answer.written) == {KEEPALIVE}
        await wait_until(lambda: keep._task is None)  # a comment written: nothing of its own runs until the next
    finally:
        await keep.stop()
    count = len(answer.written)
    await asyncio.sleep(INTERVAL * 3)
    assert len(answer.written) == count  # stopped: no comment after
    keepalives.close()


async def test_a_client_that_does_not_read_has_one_comment_in_flight_at_most() -> None:
    keepalives = KeepAlives(INTERVAL)
    answer = FakeAnswer()
    answer.hold = asyncio.Event()
    keep = keepalives.watch(None, answer)
    await wait_until(lambda: answer.writing == 1)
    await asyncio.sleep(INTERVAL * 5)  # ticks come and go while the write waits
    assert answer.writing == 1 and len(answer.written) == 1
    await keep.stop()  # cancels the waiting write and waits for it: nothing half-written when the relay writes
    assert answer.writing == 0
    keepalives.close()


async def test_a_client_that_left_is_not_written_to_again() -> None:
    keepalives = KeepAlives(INTERVAL)
    answer = FakeAnswer()
    answer.fail = ConnectionResetError("gone")
    keep = keepalives.watch(None, answer)
    await wait_until(lambda: not keepalives._waiting)  # the failed comment took the stream off the watch
    assert keep._task is None and answer.written == []
    await keep.stop()
    keepalives.close()


async def test_streams_stopped_before_an_interval_get_no_comment() -> None:
    keepalives = KeepAlives(0.5)
    answers = [FakeAnswer() for _ in range(100)]
    keeps = [keepalives.watch(None, answer) for answer in answers]
    for keep in keeps:
        await keep.stop()
    assert not keepalives._waiting
    await asyncio.sleep(0.2)  # a tick (every 0.125 s) finds nothing due and nothing waiting
    assert all(not answer.written and not answer.prepared for answer in answers)
    keepalives.close()
