"""The demo upstream's streamed chat answer: ``chat.completion.chunk`` frames over SSE, one awaited write each.

Frames are built from prebuilt byte pieces (`ChunkFrames`), so a chunk costs one concatenation and the
demo upstream stays out of the way of benchmarks. The ttft, delay and drop knobs act between writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import orjson
from aiohttp import web

from clexproxy.demo.answers import TOKEN_JSON, ChatPlan
from clexproxy.demo.knobs import Knobs
from clexproxy.demo.recorder import DemoState, RecordedRequest
from clexproxy.demo.responses import drop_connection, sleep

_SSE_HEADERS: Final[Mapping[str, str]] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE: Final = b"data: [DONE]\n\n"


class ChunkFrames:
    """Prebuilt byte pieces of one stream's ``chat.completion.chunk`` frames, so each chunk is one concatenation."""

    __slots__ = ("_head", "_prefix", "_tail_final", "_tail_open", "_usage")

    def __init__(self, plan: ChatPlan) -> None:
        self._prefix = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s' % (
            plan.completion_id.encode(),
            plan.created,
            orjson.dumps(plan.model),
        )
        self._head = self._prefix + b',"choices":[{"index":0,"delta":'
        usage_null = b',"usage":null' if plan.include_usage else b""
        self._tail_open = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        self._tail_final = b',"logprobs":null,"finish_reason":"%s"}]%s}\n\n' % (
            plan.finish_reason.encode(),
            usage_null,
        )
        self._usage = plan.usage()

    def role(self) -> bytes:
        return self._head + b'{"role":"assistant","content":""}' + self._tail_open

    def content(self, token: int, final: bool) -> bytes:
        tail = self._tail_final if final else self._tail_open
        return b"".join((self._head, b'{"content":', TOKEN_JSON[token], b"}", tail))

    def finish_only(self) -> bytes:
        """The finish_reason carrier when there were no content chunks at all."""
        return self._head + b"{}" + self._tail_final

    def usage(self) -> bytes:
        return self._prefix + b',"choices":[],"usage":' + orjson.dumps(self._usage) + b"}\n\n"


async def _stream_chunks(
    request: web.Request,
    response: web.StreamResponse,
    state: DemoState,
    recorded: RecordedRequest,
    knobs: Knobs,
    plan: ChatPlan,
) -> bool:
    """Write the stream after its headers; False when the drop knob cut it. Each chunk is its own awaited write."""
    frames = ChunkFrames(plan)
    await sleep(knobs.ttft_s)
    await response.write(frames.role())
    last = len(plan.tokens) - 1
    drop_after = knobs.drop_after
    for position, token in enumerate(plan.tokens):
        if position:
            await sleep(knobs.delay_s)
        if drop_after is not None and position >= drop_after:
            drop_connection(request, response, state.recorder, recorded)
            return False
        await response.write(frames.content(token, position == last))
    if drop_after is not None:
        drop_connection(request, response, state.recorder, recorded)
        return False
    if last < 0:
        await response.write(frames.finish_only())
    if plan.include_usage:
        await response.write(frames.usage())
    await response.write_eof(_DONE)
    return True


async def stream_chat(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, plan: ChatPlan
) -> web.StreamResponse:
    """The OpenAI chat stream (`serve_sse` around its chunks)."""
    return await serve_sse(request, state, recorded,
                           lambda response: _stream_chunks(request, response, state, recorded, knobs, plan))


async def serve_sse(
    request: web.Request, state: DemoState, recorded: RecordedRequest,
    events: Callable[[web.StreamResponse], Awaitable[bool]],
) -> web.StreamResponse:
    """Any wire format's SSE answer: headers at once, then `events` (True once it ended the stream
    itself); the outcome recorded in every case, a client that left included."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    recorded.status = 200
    try:
        await response.prepare(request)
        finished = await events(response)
    except ConnectionError:
        state.recorder.finish(recorded, disconnected=True)
        return response
    if finished:
        state.recorder.finish(recorded, completed=True)
    return response
