"""Relay an upstream answer to the client: SSE byte for byte as it arrives, or one JSON body.

Streamed chunks are never parsed as JSON except the few events that carry `usage` or an
`"error"` key (one C-level scan of a chunk says whether there is any); events go out as the
exact bytes the upstream sent (`SSEEvent.raw`). The exceptions, all rare: the usage the client
did not ask for is stripped; an error event inside the answer becomes SPEC's error event and
ends the stream (the provider's own bytes could carry its URL or credential); when a
deployment's upstream model name is not the catalog id, each event's `model` is rewritten to
the catalog id (never when the names agree, so the usual answer costs nothing more). While the
first token is slow, a `: keep-alive` comment keeps proxies and clients from timing out.

`[DONE]` completes a stream: whatever the upstream sends after it is not relayed, and its end
is awaited off the client's response (`UpstreamResponse.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from clexproxy.errors import ApiError, InternalError, ServiceUnavailable
from clexproxy.fastpath.sse import SSEEvent, SSEParser, has_usage
from clexproxy.outcome import CallOutcome
from clexproxy.server.shutdown import SHUTDOWN, cut_by_shutdown, shutdown_error
from clexproxy.upstream.pool import ERROR_KEY, UpstreamReply

KEEPALIVE = b": keep-alive\n\n"
DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A usage object as upstreams spell it (OpenAI's `"usage":null` on every chunk is not one); `has_usage` also
# knows rarer whitespace, and a chunk where it finds usage under neither spelling is looked at event by event.
_USAGE_COMPACT = b'"usage":{'
_USAGE_SPACED = b'"usage": {'
# A `"model": "..."` member (JSON whitespace allowed); in a chunk only the top-level one exists.
_MODEL_FIELD = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*"(?:[^"\\]|\\.)*"')


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.to_bytes() + b"\n\n" + DONE_EVENT


def _read_usage(usage: Any, outcome: CallOutcome) -> None:
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        outcome.prompt_tokens = p if isinstance(p, int) else 0
        outcome.completion_tokens = c if isinstance(c, int) else 0


def _carries_nothing(choices: Any) -> bool:
    """Whether a chunk's `choices` say nothing once its usage is gone (LiteLLM's `[{"index": 0, "delta": {}}]`)."""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        for name, value in choice.items():
            if name == "index" or not value:
                continue
            if name == "delta" and isinstance(value, dict) and not any(value.values()):
                continue
            return False
    return True


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
    *,
    answer_headers: Callable[[], Mapping[str, str]] | None = None,
) -> web.StreamResponse:
    """Relay an SSE answer. `on_error(error)` settles a failure and returns the headers to send with it.

    `answer_headers()`, when given, is called once the upstream has answered (after any retry or
    fallback) and before the response goes out; what it returns joins the response headers. It is
    called even when a keep-alive comment already sent the headers, though it can then no longer
    change them.
    """
    response = SSEResponse(status=200, headers={**headers, **SSE_HEADERS})
    try:
        return await _relay_stream(request, response, send, wants_usage, keepalives, outcome, on_error, answer_headers)
    except ConnectionResetError:
        # The client left while we wrote to it (before its disconnect cancelled us): nothing more to send.
        outcome.disconnected = True
        return response
    except asyncio.CancelledError:
        if not cut_by_shutdown(request):
            raise  # the client left: aiohttp cancelled the handler
        return await _cut(response, outcome, on_error)


async def _cut(response: web.StreamResponse, outcome: CallOutcome, on_error: Any) -> web.StreamResponse:
    """The gateway is shutting down and the stream outlived the grace (server.shutdown): SPEC's 503, as an event
    once the stream has started, then `[DONE]` and the end of the response."""
    error = shutdown_error()
    error_headers = on_error(error)
    outcome.error_code = SHUTDOWN  # the access line: cut by the gateway, not left by the client
    if not response.prepared:
        return error.to_response(error_headers)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof(error_event(error))
    return response


async def _relay_stream(
    request: web.Request,
    response: web.StreamResponse,
    send: Awaitable[UpstreamReply],
    wants_usage: bool,
    keepalives: KeepAlives,
    outcome: CallOutcome,
    on_error: Any,
    answer_headers: Callable[[], Mapping[str, str]] | None,
) -> web.StreamResponse:
    started = time.monotonic()
    keep = keepalives.watch(request, response)
    try:
        try:
            reply = await send  # returns once the upstream's first answer event is in
        except ApiError as error:
            await keep.stop()
            error_headers = on_error(error)
            if response.prepared:
                await response.write_eof(error_event(error))
                return response
            return error.to_response(error_headers)
        await keep.stop()  # the upstream has spoken: from here on, only its bytes go out
        outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
        upstream = reply.response
        content = upstream.content
        frames = _Frames(reply, wants_usage, outcome)
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
                    chunk = await content.readany()
                except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    chunk = _salvage(content)
                    kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
                    outcome.upstream_failures.append((outcome.provider, kind))
                    failure = ServiceUnavailable("The upstream connection was lost mid-stream.",
                                                 error_type="upstream_error")
                if not chunk:
                    if failure is None:
                        outcome.upstream_failures.append((outcome.provider, "midstream_drop"))
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
    finally:
        keep.cancel()
    on_error(failure)
    await response.write_eof(error_event(failure))
    return response


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
    """Decides, event by event, what of an upstream chunk goes to the client.

    `finished` once `[DONE]` is in; `failure` once the answer must end in an error event (an
    upstream error event, a usage chunk that is not JSON): the bytes returned with it are the
    events before it, which the client still gets.
    """

    __slots__ = ("failure", "finished", "outcome", "parser", "rename", "reply", "wants_usage")

    def __init__(self, reply: UpstreamReply, wants_usage: bool, outcome: CallOutcome) -> None:
        self.parser = reply.parser or SSEParser()
        self.reply = reply
        self.wants_usage = wants_usage
        self.outcome = outcome
        self.finished = False
        self.failure: ApiError | None = None
        self.rename: bytes | None = None  # the replacement `"model":"<catalog id>"`, when the upstream's name differs
        if reply.deployment.model != reply.model.id:
            self.rename = (b'"model":' + orjson.dumps(reply.model.id)).replace(b"\\", b"\\\\")

    def first(self, received: bytes, events: list[SSEEvent]) -> bytes:
        """The bytes to relay for what `send` read (`events` parsed from `received`, from the stream's start)."""
        if self.parser.pending == 0:
            return self._whole(received, events)
        out: list[bytes] = []
        self._each(events, out)
        return b"".join(out)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay for `chunk`: the chunk itself when it holds whole events only and none is dropped."""
        parser = self.parser
        aligned = parser.pending == 0
        events = parser.feed(chunk)
        if aligned and parser.pending == 0:
            return self._whole(chunk, events)
        out: list[bytes] = []
        self._each(events, out)
        return out[0] if len(out) == 1 else b"".join(out)

    def _each(self, events: list[SSEEvent], out: list[bytes]) -> None:
        """Append to `out` what goes out of `events`, one by one; stops at `[DONE]` or at a failure."""
        rename = self.rename
        for event in events:
            raw = event.raw
            data = event.data
            if data is not None:
                if data == DONE:
                    self.finished = True
                    out.append(raw)
                    return
                usage = has_usage(data)
                if usage or data.find(ERROR_KEY) >= 0:
                    kept = self._marked(raw, data, usage)
                    if self.failure is not None:
                        return
                    if kept is None:
                        continue  # the usage the client did not ask for, and nothing else
                    raw = kept
                elif rename is not None:
                    raw = _MODEL_FIELD.sub(rename, raw)
                self.outcome.answer_started = True
            out.append(raw)

    def _marked(self, raw: bytes, data: bytes, usage: bool) -> bytes | None:
        """An event holding `"error"` or usage: what goes out of it (None: nothing); sets `failure` to end here."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            if usage:
                self.failure = InternalError("The upstream sent a malformed usage chunk.", error_type="upstream_error")
                return None
            doc = None  # text that merely mentions "error"
        if not isinstance(doc, dict):
            return raw if self.rename is None else _MODEL_FIELD.sub(self.rename, raw)
        error = doc.get("error")
        if error is not None:
            self.failure = self.reply.midstream_error(error)
            return None
        if usage:
            _read_usage(doc.get("usage"), self.outcome)
            if not self.wants_usage:
                choices = doc.get("choices")
                if not choices or _carries_nothing(choices):
                    return None
                del doc["usage"]
                if self.rename is not None and "model" in doc:
                    doc["model"] = self.reply.model.id
                return b"data: " + orjson.dumps(doc) + b"\n\n"
        return raw if self.rename is None else _MODEL_FIELD.sub(self.rename, raw)

    def _whole(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """A chunk of whole events: visit only the few that matter instead of all of them.

        Most chunks hold neither `[DONE]`, usage nor an error, and C-level scans of the chunk say so
        (a chunk of one event, the usual read, is `[DONE]` only as its last event): it goes out as it
        came. `find`, not `in`: bytes' `in` first tries its operand as an int (an error raised and
        cleared, costlier than the scan).
        """
        if not events:
            return chunk
        if (events[-1].data == DONE or has_usage(chunk) or chunk.find(ERROR_KEY) >= 0
                or (len(events) > 1 and chunk.find(DONE) >= 0)):
            return self._marked_chunk(chunk, events)
        if not self.outcome.answer_started:
            for event in events:
                if event.data is not None:
                    self.outcome.answer_started = True
                    break
        return chunk if self.rename is None else _MODEL_FIELD.sub(self.rename, chunk)

    def _marked_chunk(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """A chunk of whole events with `[DONE]`, usage or an error among them (a whole answer in one read, say).

        The usage event and `[DONE]` sit at its end: the events before the first that needs a look
        go out as they came; that one and those after it are looked at one by one. What follows
        `[DONE]` carries nothing for the client and is cut.
        """
        n = len(events)
        k = n
        while k:
            k -= 1
            if events[k].data == DONE:
                if k + 1 < n:
                    chunk = chunk[: len(chunk) - _size(events, k + 1, n)]
                    n = k + 1
                break
        i = n  # events[i:n] need a look, one by one
        usage = has_usage(chunk)
        error_at = chunk.find(ERROR_KEY)
        if usage or error_at >= 0:
            first = _first_mark(chunk, usage, error_at)
            start = len(chunk)  # where events[i] starts
            while i and start > first:
                i -= 1
                start -= len(events[i].raw)
        if i == n:  # `[DONE]` is the only mark: it comes last, after the rest
            i -= 1
        head = chunk[: len(chunk) - _size(events, i, n)]
        if i:
            if not self.outcome.answer_started:
                for k in range(i):
                    if events[k].data is not None:
                        self.outcome.answer_started = True
                        break
            if self.rename is not None:
                head = _MODEL_FIELD.sub(self.rename, head)
        out = [head] if head else []
        self._each(events[i:n], out)
        return out[0] if len(out) == 1 else b"".join(out)


def _first_mark(chunk: bytes, usage: bool, error_at: int) -> int:
    """The offset of the first usage object or `"error"` key (at `error_at`, -1: none) in `chunk`.

    0 when `has_usage` found usage in neither common spelling: then every event gets a look.
    """
    if usage:
        first = chunk.find(_USAGE_COMPACT)  # an upstream spells every chunk alike: one spelling per chunk
        if first < 0:
            first = chunk.find(_USAGE_SPACED)
            if first < 0:
                return 0
        return error_at if 0 <= error_at < first else first
    return error_at


def _size(events: list[SSEEvent], start: int, stop: int) -> int:
    size = 0
    for k in range(start, stop):
        size += len(events[k].raw)
    return size


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
    """A whole JSON answer (read and parsed by `send`); returns its bytes. Raises ApiError when there is none."""
    started = time.monotonic()
    reply = await send
    outcome.upstream_seconds = time.monotonic() - started
    outcome.provider, outcome.served_model = reply.provider.name, reply.model.id
    doc = reply.doc
    _read_usage(doc.get("usage"), outcome)
    if reply.deployment.model != reply.model.id and "model" in doc:
        doc["model"] = reply.model.id  # the catalog id, as every answer names it
        return orjson.dumps(doc)
    return reply.received
