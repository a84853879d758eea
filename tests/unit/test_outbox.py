"""Writes queued in one turn of the loop leave together, in order, and never to a closing transport."""

from __future__ import annotations

import asyncio

from clexproxy.outbox import Outbox


class Transport:
    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self.log, self.name, self.closing = log, name, False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


async def test_writes_leave_at_the_end_of_the_turn_in_order() -> None:
    log: list[tuple[str, bytes]] = []
    outbox = Outbox(asyncio.get_running_loop())
    a, b = Transport(log, "a"), Transport(log, "b")
    outbox.write(a, b"1")
    outbox.write(b, b"2")
    outbox.write(a, b"3")
    assert log == []  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")]
    outbox.write(b, b"4")  # a later turn schedules its own flush
    await asyncio.sleep(0)
    assert log[-1] == ("b", b"4")


async def test_a_transport_closed_before_the_flush_gets_nothing() -> None:
    log: list[tuple[str, bytes]] = []
    outbox = Outbox(asyncio.get_running_loop())
    gone = Transport(log, "gone")
    outbox.write(gone, b"x")
    gone.closing = True
    await asyncio.sleep(0)
    assert log == []
