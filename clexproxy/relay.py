"""Relay an upstream answer to the client: SSE byte for byte as it arrives, or one JSON body.

Streamed chunks are never parsed as JSON except the one that carries `usage`; events go out
as the exact bytes the upstream sent (`SSEEvent.raw`). While the first token is slow, a
`: keep-alive` comment keeps proxies and clients from timing out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from clexproxy.errors import ApiError, InternalError, ServiceUnavailable
from clexproxy.fastpath import SSEEvent, SSEParser, has_usage
from clexproxy.outcome import CallOutcome
from clexproxy.upstream import UpstreamReply

KEEPALIVE = b": keep-alive\n\n"
DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.to_bytes() + b"\n\n" + DONE_EVENT


def _read_usage(usage: Any, outcome: CallOutcome) -> None:
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        outcome.prompt_tokens = p if isinstance(p, int) else 0
        outcome.completion_tokens = c if isinstance(c, int) else 0


class SSEResponse(web.StreamResponse):
    """A stream whose headers leave with its first bytes: one write, not two, per short answer.

    aiohttp's StreamResponse sends its headers the moment it is prepared; a whole answer that
    arrives in one upstream read then costs three writes to the client (headers, events, the
    chunked terminator). Held headers make it one.
    """

    _send_headers_immediately = False


async def stream(
    request: web.Request,
    send: Awaitable[UpstreamReply],
    headers: dict[str, str],
    wants_usage: bool,
    keepalives: KeepAlives,
    outcome: CallOutcome,
    on_error: Any,
) -> web.StreamResponse:
    """Relay an SSE answer. `on_error(error)` settles a failure and returns the headers to send with it."""
    response = SSEResponse(status=200, headers={**headers, **SSE_HEADERS})
    try:
        return await _relay_stream(request, response, send, wants_usage, keepalives, outcome, on_error)
    except ConnectionResetError:
        # The client left while we wrote to it (before its disconnect cancelled us): nothing more to send.
        outcome.disconnected = True
        return response


async def _relay_stream(
    request: web.Request,
    response: web.StreamResponse,
    send: Awaitable[UpstreamReply],
    wants_usage: bool,
    keepalives: KeepAlives,
    outcome: CallOutcome,
    on_error: Any,
) -> web.StreamResponse:
    started = time.monotonic()
    keep = keepalives.watch(request, response)
    try:
        try:
            reply = await send
        except ApiError as error:
            await keep.stop()
            error_headers = on_error(error)
            if response.prepared:
                await response.write_eof(error_event(error))
                return response
            return error.to_response(error_headers)
        outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
        upstream = reply.response
        content = upstream.content
        frames = _Frames(wants_usage, outcome)
        failure: ApiError | None = None
        try:
            while failure is None:
                try:
                    chunk = await content.readany()
                except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    chunk = _salvage(content)
                    kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
                    outcome.upstream_failures.append((outcome.provider, kind))
                    failure = ServiceUnavailable("The upstream connection was lost mid-stream.",
                                                 error_type="upstream_error")
                if keep.running:
                    await keep.stop()  # the upstream has spoken: from here on, only its bytes go out
                if not response.prepared:
                    await response.prepare(request)
                if not chunk:
                    break
                try:
                    out = frames.feed(chunk)
                except orjson.JSONDecodeError:
                    failure = InternalError("The upstream sent a malformed usage chunk.", error_type="upstream_error")
                    break
                if frames.finished:
                    # `[DONE]`: the answer is whole. Its last bytes and the end of the response go out
                    # in one write; the upstream's own end is awaited after the client has it.
                    await response.write_eof(out)
                    if outcome.first_token_at is None and outcome.answer_started:
                        outcome.first_token_at = time.monotonic()
                    await _drain(content)
                    return response
                if out:
                    await response.write(out)
                    if outcome.first_token_at is None and outcome.answer_started:
                        outcome.first_token_at = time.monotonic()
            if failure is None:
                outcome.upstream_failures.append((outcome.provider, "midstream_drop"))
                failure = ServiceUnavailable("The upstream ended the stream before it was complete.",
                                             error_type="upstream_error")
        finally:
            outcome.upstream_seconds = time.monotonic() - started
            if frames.finished and content.is_eof():
                upstream.release()
            else:
                upstream.close()
    finally:
        keep.cancel()
    assert failure is not None
    on_error(failure)
    await response.write_eof(error_event(failure))
    return response


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what the upstream sends after `[DONE]` (normally just the end of its chunked body).

    The connection can carry another call only once the upstream's answer has ended; bytes
    after `[DONE]` carry nothing for a client and are not relayed.
    """
    try:
        while not content.is_eof() and await content.readany():
            pass
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        pass


class KeepAlives:
    """`: keep-alive` comments for streams whose upstream is slow to start, from one shared timer.

    A stream costs one dict entry while it waits for its first upstream bytes, not a timer of
    its own (a per-stream `call_later` and its cancel were ~3% of a streamed call's CPU). One
    tick every quarter interval starts a writer for each stream that has waited a whole
    interval, so the first comment goes out between 1 and 1.25 intervals after the request.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._tick = interval / 4
        self._waiting: dict[_KeepAlive, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, request: web.Request, response: web.StreamResponse) -> _KeepAlive:
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

    def __init__(self, owner: KeepAlives, request: web.Request, response: web.StreamResponse) -> None:
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


class _Frames:
    """Decides, event by event, what of an upstream chunk goes to the client."""

    __slots__ = ("finished", "outcome", "parser", "wants_usage")

    def __init__(self, wants_usage: bool, outcome: CallOutcome) -> None:
        self.parser = SSEParser()
        self.wants_usage = wants_usage
        self.outcome = outcome
        self.finished = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay for `chunk`: the chunk itself when it holds whole events only and none is dropped."""
        parser = self.parser
        aligned = parser.pending == 0
        events = parser.feed(chunk)
        if aligned and parser.pending == 0:
            return self._whole(chunk, events)
        out: list[bytes] = []
        for event in events:
            data = event.data
            if data is not None:
                if data == DONE:
                    self.finished = True
                elif has_usage(data):
                    doc = orjson.loads(data)
                    _read_usage(doc.get("usage"), self.outcome)
                    if not self.wants_usage and not doc.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
                self.outcome.answer_started = True
            out.append(event.raw)
        return out[0] if len(out) == 1 else b"".join(out)

    def _whole(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """A chunk of whole events: visit only the few that matter instead of all of them.

        A whole answer can arrive in one read (dozens of events); the usage event and `[DONE]`
        sit at its end, and one C-level scan of the chunk says whether usage is there at all.
        """
        if not events:
            return chunk
        strip: SSEEvent | None = None
        if has_usage(chunk):
            for event in reversed(events):
                data = event.data
                if data is not None and data != DONE and has_usage(data):
                    doc = orjson.loads(data)
                    _read_usage(doc.get("usage"), self.outcome)
                    if not self.wants_usage and not doc.get("choices"):
                        strip = event  # the usage-only chunk the client did not ask for
                    break
        if not self.outcome.answer_started:
            for event in events:
                if event.data is not None and event is not strip:
                    self.outcome.answer_started = True
                    break
        if not self.finished and DONE in chunk:
            for event in reversed(events):
                if event.data == DONE:
                    self.finished = True
                    break
        return chunk if strip is None else chunk.replace(strip.raw, b"", 1)


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp had buffered when the upstream connection broke.

    `readany` raises as soon as the payload error is set, even with data still buffered; the
    events the upstream did send before the drop belong to the client.
    """
    try:
        return content._read_nowait(-1)  # no public way to drain past a set exception
    except Exception:
        return b""


async def unary(send: Awaitable[UpstreamReply], outcome: CallOutcome) -> bytes:
    """Fetch a whole JSON answer; returns its exact bytes. Raises ApiError when there is no good answer."""
    started = time.monotonic()
    reply = await send
    outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
    upstream = reply.response
    try:
        raw = await upstream.read()
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        upstream.close()
        kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
        outcome.upstream_failures.append((outcome.provider, kind))
        raise ServiceUnavailable("The upstream connection was lost before the answer was complete.",
                                 error_type="upstream_error") from None
    finally:
        outcome.upstream_seconds = time.monotonic() - started
    upstream.release()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InternalError("The upstream sent a malformed answer.", error_type="upstream_error") from None
    if isinstance(doc, dict):
        _read_usage(doc.get("usage"), outcome)
    return raw
