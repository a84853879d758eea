"""Time sources, injectable so tests can cross 00:00 UTC without waiting for it."""

from __future__ import annotations

import time
from typing import Protocol

SECONDS_PER_DAY = 86_400


class Clock(Protocol):
    """Wall time decides the UTC day; monotonic time drives buckets and durations."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; both readings advance together."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, wall: float, mono: float = 1_000.0) -> None:
        self._wall = wall
        self._mono = mono

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds


def utc_day(wall: float) -> int:
    """Days since the epoch in UTC: the daily budget's key, so the reset needs no timer."""
    return int(wall // SECONDS_PER_DAY)


def seconds_to_utc_midnight(wall: float) -> int:
    """Whole seconds until the next 00:00 UTC, never 0 (a reset 'now' would invite a retry storm)."""
    left = SECONDS_PER_DAY - (wall % SECONDS_PER_DAY)
    return max(1, int(left + 0.999))
