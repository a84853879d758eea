"""Writing the demo upstream's answers: whole JSON bodies, the optional waits, and the cut the drop knob asks for.

Each writer records the outcome in the `DemoRecorder` once the bytes went out (``completed``), the client
went away (``disconnected``) or the connection was cut on purpose (``dropped``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from clexproxy.demo.knobs import Knobs
from clexproxy.demo.recorder import DemoRecorder, DemoState, RecordedRequest

_JSON_HEADERS: Final[Mapping[str, str]] = {"Content-Type": "application/json"}


async def sleep(seconds: float) -> None:
    """Sleep only when asked to: a zero-delay request should not pay for a timer."""
    if seconds > 0:
        await asyncio.sleep(seconds)


async def send_json(
    request: web.Request,
    recorder: DemoRecorder,
    recorded: RecordedRequest,
    status: int,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Write a complete JSON response inside the handler, so ``completed`` means the bytes really went out."""
    merged = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
    response = web.Response(body=payload, status=status, headers=merged)
    recorded.status = status
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        recorder.finish(recorded, disconnected=True)
        return response
    recorder.finish(recorded, completed=True)
    return response


def drop_connection(
    request: web.Request, response: web.StreamResponse, recorder: DemoRecorder, recorded: RecordedRequest
) -> web.StreamResponse:
    """Cut the connection mid-response (``x-demo-drop-after``).

    ``transport.close()`` still flushes what was already written, so the client gets the first chunks and then an
    unterminated body. aiohttp's own ``write_eof`` afterwards fails with a ConnectionError it swallows quietly.
    """
    recorder.finish(recorded, dropped=True)
    response.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
    return response


async def _send_headers_then_drop(
    request: web.Request, recorder: DemoRecorder, recorded: RecordedRequest, content_length: int
) -> web.StreamResponse:
    """Non-streaming drop: promise ``content_length`` bytes, send only the headers, then close."""
    response = web.StreamResponse(status=200, headers=_JSON_HEADERS)
    response.content_length = content_length
    recorded.status = 200
    try:
        await response.prepare(request)
    except ConnectionError:
        recorder.finish(recorded, disconnected=True)
        return response
    return drop_connection(request, response, recorder, recorded)


async def send_body(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, payload: bytes
) -> web.StreamResponse:
    """Finish a successful non-streaming request: ttft wait, then the body (or the drop knob)."""
    await sleep(knobs.ttft_s)
    if knobs.drop_after is not None:
        return await _send_headers_then_drop(request, state.recorder, recorded, len(payload))
    return await send_json(request, state.recorder, recorded, 200, payload)
