"""What the demo upstream remembers: every request it saw and how its answer ended, for tests to assert on.

`DemoRecorder` keeps the requests in arrival order and wakes `wait_for` callers when one arrives or
finishes; `DemoState` is the rest of an app's memory across requests (fail-key counters for the
`x-demo-fail-times` knob, the completion id counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

# Bounded so a long-running demo gateway or benchmark does not grow memory without limit; tests see far fewer.
DEFAULT_MAX_RECORDED: Final = 10_000


@dataclass(slots=True, eq=False)
class RecordedRequest:
    """One request as the upstream saw it, plus how its response ended.

    ``headers`` has lower-cased names (``authorization`` is what the gateway sent, so tests can check that the
    provider credential went upstream rather than the client's key). ``finished`` is set once the outcome is
    known: ``completed`` (last byte written), ``disconnected`` (client went away: handler cancelled or a write
    failed) or ``dropped`` (the ``x-demo-drop-after`` knob cut the connection on purpose). ``status`` is the HTTP
    status the upstream answered with, once decided.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    request_id: str | None = None
    method: str = "POST"
    status: int | None = None
    disconnected: bool = False
    completed: bool = False
    dropped: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def authorization(self) -> str | None:
        """The ``authorization`` header the upstream received, if any."""
        return self.headers.get("authorization")


class DemoRecorder:
    """What the upstream saw, in arrival order, with a way to wait for a request to reach some state.

    Only the most recent ``max_requests`` entries are guaranteed to be kept (older ones are trimmed in batches so
    appending stays O(1) amortised); pass ``None`` to keep everything.
    """

    def __init__(self, max_requests: int | None = DEFAULT_MAX_RECORDED) -> None:
        if max_requests is not None and max_requests < 1:
            raise ValueError("max_requests must be a positive integer or None")
        self.requests: list[RecordedRequest] = []
        self.max_requests = max_requests
        self._waiters: list[asyncio.Future[None]] = []

    def clear(self) -> None:
        """Forget every recorded request (waiters keep waiting for new ones)."""
        self.requests.clear()

    async def wait_for(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0) -> RecordedRequest:
        """Return the first recorded request satisfying ``predicate``, waiting for arrivals and outcome changes.

        The predicate is re-evaluated whenever a request is recorded or finishes, so predicates such as
        ``lambda r: r.disconnected`` work. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for recorded in self.requests:
                if predicate(recorded):
                    return recorded
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no recorded request matched within {timeout}s ({len(self.requests)} recorded)")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def record(self, request: web.BaseRequest, body: dict[str, Any]) -> RecordedRequest:
        """Append a new entry for ``request``; called before the handler answers."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        recorded = RecordedRequest(
            path=request.path,
            headers=headers,
            body=body,
            request_id=headers.get("x-request-id"),
            method=request.method,
        )
        requests = self.requests
        requests.append(recorded)
        limit = self.max_requests
        if limit is not None and len(requests) > limit + (limit >> 3):
            del requests[: len(requests) - limit]
        self._notify()
        return recorded

    def finish(
        self, recorded: RecordedRequest, *, completed: bool = False, disconnected: bool = False, dropped: bool = False
    ) -> None:
        """Record the outcome once; later outcomes (e.g. a cancellation after a drop) are ignored."""
        if recorded.finished.is_set():
            return
        recorded.completed = completed
        recorded.disconnected = disconnected
        recorded.dropped = dropped
        recorded.finished.set()
        self._notify()

    def _notify(self) -> None:
        """Wake every ``wait_for`` so it re-checks its predicate; free when nobody waits (the benchmark case)."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


DEMO_RECORDER_KEY: Final = web.AppKey("clexproxy_demo_recorder", DemoRecorder)


class DemoState:
    """Per-app mutable state: the recorder, fail-key counters and the completion id counter."""

    __slots__ = ("completion_ids", "fail_counts", "recorder")

    def __init__(self, recorder: DemoRecorder) -> None:
        self.recorder = recorder
        self.fail_counts: dict[str, int] = {}
        self.completion_ids = itertools.count(1)
