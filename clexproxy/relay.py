"""Relay an upstream answer to the client: SSE byte for byte as it arrives (`stream`), or one JSON body (`unary`).

`stream` waits for the upstream's first answer event (while it is slow, `KeepAlives` sends
`: keep-alive` comments that keep proxies and clients from timing out), then writes what
`Frames` lets through of each chunk: the upstream's own bytes, but for the rare usage to strip,
model to rename or error to replace. A failure once the answer has started ends it with SPEC's
error event and `[DONE]`; before that, it is an ordinary JSON error.

`[DONE]` completes a stream: whatever the upstream sends after it is not relayed, and its end
is awaited off the client's response (`UpstreamResponse.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from clexproxy.answer_wire import StreamAnswer
from clexproxy.errors import SHUTDOWN, ApiError, Marked, ServiceUnavailable, cut_by_shutdown, shutdown_error
from clexproxy.keepalive import KeepAlives
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.chunks import ChatEncoder, Chunk, OpenAIDecoder, StreamEncoder
from clexproxy.protocols.wire import WIRES
from clexproxy.sse_frames import Frames, read_usage
from clexproxy.translating_frames import TranslatingFrames
from clexproxy.upstream.pool import UpstreamReply

DONE_EVENT = b"data: [DONE]\n\n"
# Renders an error as the client's protocol answers it before any stream: SPEC's JSON (`ApiError.to_response`)
# or, on `/v1/messages`, Anthropic's.
ErrorRenderer = Callable[[ApiError, Mapping[str, str]], web.Response]
S = TypeVar("S", bound=StreamAnswer)  # the stream the caller gave, handed back
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.to_bytes() + b"\n\n" + DONE_EVENT


async def stream(
    request: Marked,
    response: S,
    send: Awaitable[UpstreamReply],
    wants_usage: bool,
    keepalives: KeepAlives,
    outcome: CallOutcome,
    on_error: Any,
    *,
    answer_headers: Callable[[], Mapping[str, str]] | None = None,
    encoder: StreamEncoder | None = None,
    render: ErrorRenderer = ApiError.to_response,
) -> S | web.Response:
    """Relay an SSE answer to `response`. `on_error(error)` settles a failure and returns the headers to send with it.

    `answer_headers()`, when given, is called once the upstream has answered (after any retry or
    fallback) and before the response goes out; what it returns joins the response headers. It is
    called even when a keep-alive comment already sent the headers, though it can then no longer
    change them.

    `encoder`, for a client that does not speak chat completions, writes its protocol's events (and
    its error event); `render` its JSON error before the stream starts. Without one, a chat client's
    stream from an OpenAI provider is relayed as bytes (`Frames`), any other through chat chunks
    (`TranslatingFrames`).
    """
    # How a failure is told: the client protocol's JSON error before the stream, its error event after.
    event: Callable[[ApiError], bytes] = error_event if encoder is None else encoder.error
    try:
        started = time.monotonic()
        keep = keepalives.watch(request, response)
        try:
            try:
                reply = await send  # returns once the upstream's first answer event is in
                del send  # the finished call's frame is not held for the rest of the stream
            except ApiError as error:
                await keep.stop()
                error_headers = on_error(error)
                if response.prepared:
                    await response.write_eof(event(error))
                    return response
                return render(error, error_headers)
            await keep.stop()  # the upstream has spoken: from here on, only its bytes go out
            outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
            upstream = reply.response
            frames = _frames(reply, wants_usage, outcome, encoder)
            failure: ApiError | None = None
            complete = False
            try:
                if answer_headers is not None:
                    extra = answer_headers()
                    if not response.prepared:
                        response.headers.update(extra)
                out = frames.first(reply.received, reply.events or [])
                reply.received, reply.events = b"", None  # a long stream need not hold its first chunk twice
                if not response.prepared:
                    await response.prepare(request)
                while True:
                    if frames.finished:
                        # `[DONE]`: the answer is whole. Its last bytes and the end of the response go out
                        # in one write; the upstream's own end is not waited for.
                        await response.write_eof(out)
                        complete = True
                        if outcome.first_token_at is None and outcome.answer_started:
                            outcome.first_token_at = time.monotonic()
                        return response
                    if out:
                        await response.write(out)
                        if outcome.first_token_at is None and outcome.answer_started:
                            outcome.first_token_at = time.monotonic()
                    failure = frames.failure or failure
                    if failure is not None:
                        break
                    try:
                        chunk = await upstream.readany()  # what came before a failure is read before it is raised
                    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                        chunk = b""
                        kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
                        outcome.upstream_failed(outcome.provider, kind)
                        failure = ServiceUnavailable("The upstream connection was lost mid-stream.",
                                                     error_type="upstream_error")
                    if not chunk:
                        out = frames.closed()  # a stream whose end of body is its end (Gemini's) is whole here
                        if frames.finished or frames.failure is not None:
                            continue
                        if failure is None:
                            outcome.upstream_failed(outcome.provider, "midstream_drop")
                            failure = ServiceUnavailable("The upstream ended the stream before it was complete.",
                                                         error_type="upstream_error")
                        break
                    out = frames.feed(chunk)
            finally:
                outcome.upstream_seconds = time.monotonic() - started
                if complete:
                    upstream.finish()
                else:
                    upstream.close()
                    frames.cut()
        finally:
            keep.cancel()
        on_error(failure)
        await response.write_eof(event(failure))
        return response
    except ConnectionResetError:
        # The client left while we wrote to it (before its disconnect cancelled us): nothing more to send.
        outcome.disconnected = True
        return response
    except asyncio.CancelledError:
        if not cut_by_shutdown(request):
            raise  # the client left: its connection's loop was cancelled, and the call with it
        return await _cut(response, outcome, on_error, render, event)


async def _cut(response: S, outcome: CallOutcome, on_error: Any, render: ErrorRenderer,
               event: Callable[[ApiError], bytes]) -> S | web.Response:
    """The gateway is shutting down and the stream outlived the grace (`cut_by_shutdown`): SPEC's 503, as an event
    once the stream has started, then `[DONE]` and the end of the response."""
    error = shutdown_error()
    error_headers = on_error(error)
    outcome.error_code = SHUTDOWN  # the access line: cut by the gateway, not left by the client
    if not response.prepared:
        return render(error, error_headers)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof(event(error))
    return response


def _frames(reply: UpstreamReply, wants_usage: bool, outcome: CallOutcome,
            encoder: StreamEncoder | None) -> Frames | TranslatingFrames:
    """Bytes relayed as they came for a chat client of an OpenAI provider; any other pair through chat chunks."""
    wire = WIRES.get(reply.provider.format)
    if wire is None and encoder is None:
        return Frames(reply, wants_usage, outcome)
    decoder = OpenAIDecoder() if wire is None else wire.decoder(reply.model.id)
    return TranslatingFrames(reply, decoder, encoder or ChatEncoder(wants_usage), outcome)


async def unary(send: Awaitable[UpstreamReply], outcome: CallOutcome,
                answer: Callable[[Chunk], bytes] | None = None) -> bytes:
    """A whole JSON answer (read and parsed by `send`); returns its bytes. Raises ApiError when there is none.

    `answer`, for a client that does not speak chat completions, turns the chat completion into its
    protocol's answer.
    """
    started = time.monotonic()
    reply = await send
    outcome.upstream_seconds = time.monotonic() - started
    outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
    doc = reply.doc
    read_usage(doc.get("usage"), outcome)
    if answer is not None:
        doc["model"] = reply.model.id
        return answer(doc)
    if reply.deployment.model != reply.model.id and "model" in doc:
        doc["model"] = reply.model.id  # the catalog id, as every answer names it
        return orjson.dumps(doc)
    return reply.received
