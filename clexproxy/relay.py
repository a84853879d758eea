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
from clexproxy.fastpath import SSEParser, has_usage
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


async def _with_keepalive(task: asyncio.Future[Any], response: web.StreamResponse, request: web.Request,
                          interval: float) -> Any:
    """Await `task`, sending a keep-alive comment every `interval` seconds meanwhile (preparing the response)."""
    while True:
        done, _ = await asyncio.wait((task,), timeout=interval)
        if done:
            return task.result()
        if not response.prepared:
            await response.prepare(request)
        await response.write(KEEPALIVE)


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
    send_task = asyncio.ensure_future(send)
    try:
        reply: UpstreamReply = await _with_keepalive(send_task, response, request, keepalive)
    except ApiError as error:
        error_headers = on_error(error)
        if response.prepared:
            await response.write(error_event(error))
            await response.write_eof()
            return response
        return error.to_response(error_headers)
    finally:
        if not send_task.done():
            send_task.cancel()
            send_task.add_done_callback(_close_orphan)
    outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
    upstream = reply.response
    content = upstream.content
    frames = _Frames(wants_usage, outcome)
    failure: ApiError | None = None
    try:
        if not response.prepared:
            await response.prepare(request)
        while failure is None:
            try:
                if outcome.answer_started:
                    chunk = await content.readany()
                else:
                    chunk = await _first_read(content, response, request, keepalive)
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                chunk = _salvage(content)
                kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
                outcome.upstream_failures.append((outcome.provider, kind))
                failure = ServiceUnavailable("The upstream connection was lost mid-stream.",
                                             error_type="upstream_error")
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
    if failure is not None:
        on_error(failure)
        await response.write(error_event(failure))
    await response.write_eof()
    return response


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
        out: list[bytes] = []
        dropped = False
        for event in parser.feed(chunk):
            data = event.data
            if data is not None:
                if data == DONE:
                    self.finished = True
                elif has_usage(data):
                    doc = orjson.loads(data)
                    _read_usage(doc.get("usage"), self.outcome)
                    if not self.wants_usage and not doc.get("choices"):
                        dropped = True  # the usage-only chunk the client did not ask for
                        continue
                self.outcome.answer_started = True
            out.append(event.raw)
        if aligned and not dropped and parser.pending == 0:
            return chunk
        return out[0] if len(out) == 1 else b"".join(out)


async def _first_read(
    content: aiohttp.StreamReader, response: web.StreamResponse, request: web.Request, keepalive: float
) -> bytes:
    """Read while the first token is slow, keeping the client's connection alive meanwhile."""
    read = asyncio.ensure_future(content.readany())
    try:
        chunk: bytes = await _with_keepalive(read, response, request, keepalive)
        return chunk
    finally:
        if not read.done():
            read.cancel()


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp had buffered when the upstream connection broke.

    `readany` raises as soon as the payload error is set, even with data still buffered; the
    events the upstream did send before the drop belong to the client.
    """
    try:
        return content._read_nowait(-1)  # no public way to drain past a set exception
    except Exception:
        return b""


def _close_orphan(task: asyncio.Future[UpstreamReply]) -> None:
    """An upstream reply that arrived after the client left: close it so the connection is not leaked."""
    if not task.cancelled() and task.exception() is None:
        task.result().response.close()


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
