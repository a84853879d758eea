"""A bundled, deterministic, OpenAI-compatible upstream for ``--demo`` mode, tests and benchmarks: the server.

Why it exists: the gateway has to be exercised against a real HTTP upstream (real sockets, real SSE framing,
real disconnects) without network access or a GPU. This server answers like OpenAI, always gives the same
answer to the same request (`plan_chat`, `embeddings_payload`), records what it saw so tests can assert on it
(`DemoRecorder`), and stays out of the way of benchmarks (orjson, prebuilt byte templates for stream chunks
in `ChunkFrames`, no per-request logging). Request headers make it slow, failing or short (`Knobs`).

Endpoints
    ``POST /v1/chat/completions``  chat completions, streaming (SSE) and not; any model name is accepted and echoed.
    ``POST /v1/completions``       OpenAI's legacy completions, same answers and knobs (`serve_completions`).
    ``POST /v1/embeddings``        deterministic unit vectors; ``dimensions`` and ``encoding_format`` honoured.
    ``GET  /v1/models``            a short OpenAI model list (``DEMO_MODELS``).
    ``POST /v1/messages``          Anthropic's Messages API, same answers and knobs (`serve_messages`).
    any other ``/v1/*``            404 ``unknown_url``.
    ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent``  Gemini's API (`serve_gemini`).
Every ``/v1/*`` request is recorded in the app's ``DemoRecorder`` before anything is answered.

Runners must pass ``handler_cancellation=True`` (``web.AppRunner(app, handler_cancellation=True)``): that is
how a client that goes away during a wait (ttft, slow headers, token delay) reaches the handler, as
``asyncio.CancelledError``, and gets recorded as ``disconnected``. ``start_demo_upstream`` does this for you.

Run standalone: ``python -m clexproxy.demo.upstream --host 127.0.0.1 --port 9000`` (prints the base URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from aiohttp import web

from clexproxy.demo.answers import MODELS_PAYLOAD, completion_payload, plan_chat
from clexproxy.demo.anthropic import serve_messages
from clexproxy.demo.completions import serve_completions
from clexproxy.demo.embeddings import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MAX_DIMENSIONS,
    embedding_inputs,
    embeddings_payload,
    encoding_is_base64,
)
from clexproxy.demo.errors import DemoError, positive_int, read_json_object, require_model, require_object
from clexproxy.demo.gemini import serve_gemini
from clexproxy.demo.knobs import Knobs, parse_knobs, preflight
from clexproxy.demo.recorder import DEMO_RECORDER_KEY, DemoRecorder, DemoState, RecordedRequest
from clexproxy.demo.responses import send_body, send_json, sleep
from clexproxy.demo.sse import stream_chat
from clexproxy.demo.tool_calls import serve_tool_call, wants_tool_call
from clexproxy.signals import wait_for_stop_signal

__all__ = ["DemoServer", "build_demo_app", "main", "start_demo_upstream"]

_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
_SHUTDOWN_TIMEOUT_S: Final = 1.0
_BACKLOG: Final = 16384  # the kernel caps it at net.core.somaxconn; slow-stream floods open thousands at once
_CLI_MAX_RECORDED: Final = 1000
_STATE_KEY: Final = web.AppKey("clexproxy_demo_state", DemoState)


# --------------------------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------------------------


async def _serve_chat(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    checked = require_object(body)
    model = require_model(checked)
    plan = plan_chat(state, knobs, checked, model)
    preflight(state, knobs, model)
    if wants_tool_call(checked):
        return await serve_tool_call(request, state, recorded, knobs, plan, checked)
    if plan.stream:
        return await stream_chat(request, state, recorded, knobs, plan)
    return await send_body(request, state, recorded, knobs, completion_payload(plan))


async def _serve_embeddings(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/embeddings``."""
    checked = require_object(body)
    model = require_model(checked)
    inputs = embedding_inputs(checked.get("input"))
    dimensions = positive_int(checked, "dimensions", MAX_DIMENSIONS) or DEFAULT_EMBEDDING_DIMENSIONS
    as_base64 = encoding_is_base64(checked)
    preflight(state, knobs, model)
    return await send_body(request, state, recorded, knobs, embeddings_payload(model, inputs, dimensions, as_base64))


async def _serve_models(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``GET /v1/models``: a fixed list; only the status knobs apply."""
    preflight(state, knobs, None)
    return await send_json(request, state.recorder, recorded, 200, MODELS_PAYLOAD)


async def _serve_unknown(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """Any other ``/v1/*`` path or method: OpenAI's 404, recorded so a gateway routing bug is visible in tests."""
    raise DemoError(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error", "unknown_url")


# --------------------------------------------------------------------------------------------------------------
# App wiring
# --------------------------------------------------------------------------------------------------------------

_Serve = Callable[
    [web.Request, DemoState, RecordedRequest, Knobs, dict[str, Any] | None], Awaitable[web.StreamResponse]
]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _dispatch(
    serve: _Serve, request: web.Request, state: DemoState, recorded: RecordedRequest, body: dict[str, Any] | None
) -> web.StreamResponse:
    """Knobs, headers delay, then the endpoint; errors decided before the response started are rendered here."""
    try:
        knobs = parse_knobs(request.headers)
        await sleep(knobs.headers_delay_s)
        return await serve(request, state, recorded, knobs, body)
    except DemoError as error:
        return await send_json(request, state.recorder, recorded, error.status, error.payload(), error.headers)


def _recorded_endpoint(serve: _Serve) -> _Handler:
    """Wrap an endpoint so the request is recorded first and its outcome always lands in the recorder.

    Cancellation (the client went away, with ``handler_cancellation=True``) marks it disconnected and re-raises.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[_STATE_KEY]
        body = await read_json_object(request)
        recorded = state.recorder.record(request, {} if body is None else body)
        try:
            return await _dispatch(serve, request, state, recorded, body)
        except asyncio.CancelledError:
            state.recorder.finish(recorded, disconnected=True)
            raise
        except Exception:
            state.recorder.finish(recorded)
            raise

    return handler


def build_demo_app(recorder: DemoRecorder | None = None) -> web.Application:
    """The demo upstream as an aiohttp app; the recorder (created if None) is stored under ``DEMO_RECORDER_KEY``.

    Run it with ``web.AppRunner(app, handler_cancellation=True)``: without that, a client disconnect during a
    wait is only noticed at the next write, and ``disconnected`` may never be recorded.
    """
    if recorder is None:
        recorder = DemoRecorder()
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[DEMO_RECORDER_KEY] = recorder
    app[_STATE_KEY] = DemoState(recorder)
    app.router.add_post("/v1/chat/completions", _recorded_endpoint(_serve_chat))
    app.router.add_post("/v1/completions", _recorded_endpoint(serve_completions))
    app.router.add_post("/v1/embeddings", _recorded_endpoint(_serve_embeddings))
    app.router.add_post("/v1/messages", _recorded_endpoint(serve_messages))
    app.router.add_get("/v1/models", _recorded_endpoint(_serve_models))
    app.router.add_route("*", "/v1/{tail:.*}", _recorded_endpoint(_serve_unknown))
    app.router.add_route("*", "/v1beta/{tail:.*}", _recorded_endpoint(serve_gemini))
    return app


class DemoServer:
    """A running demo upstream: ``url`` is the OpenAI base URL (ending in ``/v1``)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, recorder: DemoRecorder) -> None:
        self._runner = runner
        self._closed = False
        self.host = host
        self.port = port
        self.recorder = recorder
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}/v1"

    async def close(self) -> None:
        """Stop listening and cut in-flight requests after a short grace period; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()


async def start_demo_upstream(
    host: str = "127.0.0.1", port: int = 0, recorder: DemoRecorder | None = None
) -> DemoServer:
    """Start the demo upstream on ``host:port`` (0 = a free port) with handler cancellation and keep-alive on."""
    app = build_demo_app(recorder)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=_BACKLOG)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return DemoServer(runner, host, bound_port, app[DEMO_RECORDER_KEY])


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


async def _serve_forever(host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then close cleanly."""
    server = await start_demo_upstream(host, port, DemoRecorder(_CLI_MAX_RECORDED))
    print(server.url, flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        await server.close()


def _run(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it is on every supported non-Windows platform)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)
        return
    uvloop.run(main_coroutine)


def main(argv: list[str] | None = None) -> None:
    """``python -m clexproxy.demo.upstream --host 127.0.0.1 --port 9000``: serve forever, print the base URL."""
    parser = argparse.ArgumentParser(
        prog="python -m clexproxy.demo.upstream",
        description="Deterministic OpenAI-compatible demo upstream (its x-demo-* request headers: "
        "python -m pydoc clexproxy.demo.knobs).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind; 0 picks a free one (default 9000)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
