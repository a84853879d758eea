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


async def stream(
    request: web.Request,
    send: Awaitable[UpstreamReply],
    headers: dict[str, str],
    wants_usage: bool,
    keepalive: float,
    outcome: CallOutcome,
    on_error: Any,
) -> web.StreamResponse:
    """Relay an SSE answer. `on_error(error)` settles a failure and returns the headers to send with it."""
    response = web.StreamResponse(status=200, headers={**headers, **SSE_HEADERS})
    try:
        return await _relay_stream(request, response, send, wants_usage, keepalive, outcome, on_error)
    except ConnectionResetError:
        # The client left while we wrote to it (before its disconnect cancelled us): nothing more to send.
        outcome.disconnected = True
        return response


async def _relay_stream(
    request: web.Request,
    response: web.StreamResponse,
    send: Awaitable[UpstreamReply],
    wants_usage: bool,
    keepalive: float,
    outcome: CallOutcome,
    on_error: Any,
) -> web.StreamResponse:
    started = time.monotonic()
    keep = _KeepAlive(request, response, keepalive)
    try:
        try:
            reply = await send
        except ApiError as error:
            await keep.stop()
            error_headers = on_error(error)
            if response.prepared:
                await response.write(error_event(error))
                await response.write_eof()
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
                if out:
                    await response.write(out)
                    if outcome.first_token_at is None and outcome.answer_started:
                        outcome.first_token_at = time.monotonic()
            if failure is None and not frames.finished:
                outcome.upstream_failures.append((outcome.provider, "midstream_drop"))
                failure = ServiceUnavailable("The upstream ended the stream before it was complete.",
                                             error_type="upstream_error")
        finally:
            outcome.upstream_seconds = time.monotonic() - started
            if frames.finished:
                upstream.release()
            else:
                upstream.close()
    finally:
        keep.cancel()
    if failure is not None:
        on_error(failure)
        await response.write(error_event(failure))
    await response.write_eof()
    return response


class _KeepAlive:
    """`: keep-alive` comments while the upstream is slow to start, at no cost when it is not.

    Nothing runs unless `interval` passes before the upstream's first bytes: a timer then starts
    a task that prepares the response and writes a comment every `interval`. The relay stops it
    before writing anything itself, so the two never interleave.
    """

    __slots__ = ("_handle", "_interval", "_request", "_response", "_task")

    def __init__(self, request: web.Request, response: web.StreamResponse, interval: float) -> None:
        self._request = request
        self._response = response
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(interval, self._fire)

    @property
    def running(self) -> bool:
        return self._handle is not None or self._task is not None

    def _fire(self) -> None:
        self._handle = None
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            if not self._response.prepared:
                await self._response.prepare(self._request)
            await self._response.write(KEEPALIVE)
            await asyncio.sleep(self._interval)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
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
