"""A bundled, deterministic, OpenAI-compatible upstream for ``--demo`` mode, tests and benchmarks.

Why it exists: the gateway has to be exercised against a real HTTP upstream (real sockets, real SSE framing,
real disconnects) without network access or a GPU. This server answers like OpenAI, always gives the same
answer to the same request, records what it saw so tests can assert on it, and stays out of the way of
benchmarks (orjson, prebuilt byte templates for stream chunks, no per-request logging).

Endpoints
    ``POST /v1/chat/completions``  chat completions, streaming (SSE) and not; any model name is accepted and echoed.
    ``POST /v1/embeddings``        deterministic unit vectors; ``dimensions`` and ``encoding_format`` honoured.
    ``GET  /v1/models``            a short OpenAI model list (``DEMO_MODELS``).
    any other ``/v1/*``            404 ``unknown_url``.
Every ``/v1/*`` request is recorded in the app's ``DemoRecorder`` before anything is answered.

Knobs (request headers, all optional; a malformed value gets a 400 ``invalid_demo_header`` so a typo can't
silently test the wrong thing)
    ``x-demo-tokens: N``            completion tokens to produce (default 8). ``max_completion_tokens`` /
                                    ``max_tokens`` in the body cap it, and then ``finish_reason`` is ``"length"``.
    ``x-demo-delay-ms: F``          delay between streamed content chunks (streaming only).
    ``x-demo-ttft-ms: F``           delay before the first data chunk of a stream (its headers are already out)
                                    or before a non-streaming chat/embeddings body.
    ``x-demo-headers-delay-ms: F``  delay before any response headers at all, error responses included.
    ``x-demo-status: CODE``         answer with this 4xx/5xx status and an OpenAI-style error body
                                    (429 ``rate_limit_error``, 404 ``model_not_found``, 5xx ``server_error`` ...).
    ``x-demo-fail-times: K``        with ``x-demo-fail-key: STR``: only the first K requests carrying that key fail
                                    (with ``x-demo-status``, default 500); later ones succeed. Requests without a
                                    fail-key share the key ``""``. Counters live as long as the app.
    ``x-demo-retry-after: S``       adds ``Retry-After: S`` to an injected error response.
    ``x-demo-drop-after: N``        streaming: close the connection after N content chunks, before usage and
                                    ``[DONE]``; non-streaming: send the headers (with Content-Length), then close the
                                    connection before the body. Either way the client sees a truncated payload.
    ``x-demo-model-missing: 1``     404 ``model_not_found`` for the requested model.
Order of evaluation: knob parsing, headers delay, body validation (400), model-missing (404), injected status.

Runners must pass ``handler_cancellation=True`` (``web.AppRunner(app, handler_cancellation=True)``): that is
how a client that goes away during a wait (ttft, slow headers, token delay) reaches the handler, as
``asyncio.CancelledError``, and gets recorded as ``disconnected``. ``start_demo_upstream`` does this for you.

Run standalone: ``python -m clexproxy.demo.upstream --host 127.0.0.1 --port 9000`` (prints the base URL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http
import itertools
import math
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import orjson
from aiohttp import web

from clexproxy.signals import wait_for_stop_signal

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "DEFAULT_MAX_RECORDED",
    "DEMO_MODELS",
    "DEMO_RECORDER_KEY",
    "DemoRecorder",
    "DemoServer",
    "RecordedRequest",
    "build_demo_app",
    "main",
    "start_demo_upstream",
]

DEMO_MODELS: tuple[str, ...] = (
    "meta/llama-3.1-8b-instruct",
    "meta/llama-3.3-70b-instruct",
    "mistralai/mixtral-8x7b-instruct-v0.1",
    "nvidia/nv-embedqa-e5-v5",
)
DEFAULT_COMPLETION_TOKENS: Final = 8
DEFAULT_EMBEDDING_DIMENSIONS: Final = 16
# Bounded so a long-running demo gateway or benchmark does not grow memory without limit; tests see far fewer.
DEFAULT_MAX_RECORDED: Final = 10_000

_MAX_TOKENS_KNOB: Final = 1_000_000
_MAX_DIMENSIONS: Final = 8192
_CACHED_TOKENS_MAX: Final = 2048  # answer-cache bounds keep worst-case cache memory to a few MB
_CACHED_DIMENSIONS_MAX: Final = 256
_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
_SHUTDOWN_TIMEOUT_S: Final = 1.0
_BACKLOG: Final = 16384  # the kernel caps it at net.core.somaxconn; slow-stream floods open thousands at once
_CLI_MAX_RECORDED: Final = 1000
_MODELS_CREATED: Final = 1_700_000_000

_JSON_HEADERS: Final[Mapping[str, str]] = {"Content-Type": "application/json"}
_SSE_HEADERS: Final[Mapping[str, str]] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE: Final = b"data: [DONE]\n\n"

# The answer vocabulary. Every token is one word plus a space, so a completion of N tokens has N words.
_WORDS: Final = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basalt", "cobalt", "dune", "ember", "fjord",
    "granite", "harbor", "islet", "jade", "kelp", "lagoon", "meadow", "nebula",
    "onyx", "prairie", "quartz", "ridge", "summit", "tundra", "umber", "valley",
    "willow", "xenon", "yarrow", "zephyr", "anchor", "beacon", "canyon", "drift",
    "estuary", "forest", "glacier", "horizon", "iris", "jasper", "karst", "lumen",
)  # fmt: skip
_TOKEN_TEXT: Final = tuple(word + " " for word in _WORDS)
_TOKEN_JSON: Final = tuple(orjson.dumps(text) for text in _TOKEN_TEXT)
_TOKEN_INDEX_SHIFT: Final = 31 - (len(_WORDS).bit_length() - 1)  # top bits of a 31-bit LCG state → word index


# --------------------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------------------


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

    def _record(self, request: web.BaseRequest, body: dict[str, Any]) -> RecordedRequest:
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

    def _finish(
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


class _DemoState:
    """Per-app mutable state: the recorder, fail-key counters and the completion id counter."""

    __slots__ = ("completion_ids", "fail_counts", "recorder")

    def __init__(self, recorder: DemoRecorder) -> None:
        self.recorder = recorder
        self.fail_counts: dict[str, int] = {}
        self.completion_ids = itertools.count(1)


_STATE_KEY: Final = web.AppKey("clexproxy_demo_state", _DemoState)


# --------------------------------------------------------------------------------------------------------------
# Errors and knobs
# --------------------------------------------------------------------------------------------------------------


class _UpstreamError(Exception):
    """An OpenAI-style error decided before any response byte was sent; the dispatcher renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        code: str | None,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers

    def payload(self) -> bytes:
        """The JSON body, in OpenAI's shape."""
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def _bad_request(message: str, code: str, param: str | None = None) -> _UpstreamError:
    return _UpstreamError(400, message, "invalid_request_error", code, param=param)


def _model_not_found(model: str) -> _UpstreamError:
    return _UpstreamError(
        404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found", param="model"
    )


# status → (type, code, message) for the statuses clients treat specially; others are derived from the reason.
_ERROR_KINDS: Final[Mapping[int, tuple[str, str, str]]] = {
    400: ("invalid_request_error", "bad_request", "Bad request"),
    401: ("authentication_error", "invalid_api_key", "Incorrect API key provided"),
    403: ("permission_error", "permission_denied", "You are not allowed to use this resource"),
    404: ("invalid_request_error", "not_found", "Not found"),
    409: ("invalid_request_error", "conflict", "Conflict"),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity"),
    429: ("rate_limit_error", "rate_limit_exceeded", "rate limited"),
    500: ("server_error", "internal_error", "The server had an error while processing your request"),
    502: ("server_error", "bad_gateway", "Bad gateway"),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later"),
    504: ("server_error", "gateway_timeout", "Gateway timeout"),
}


def _injected_error(status: int, model: str | None, retry_after: str | None) -> _UpstreamError:
    """The error body a real provider would send for ``status`` (404 is model_not_found when there is a model)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if status == 404 and model is not None:
        error = _model_not_found(model)
        error.headers = headers
        return error
    kind = _ERROR_KINDS.get(status)
    if kind is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        kind = (error_type, reason.lower().replace(" ", "_").replace("-", "_"), reason)
    error_type, code, message = kind
    return _UpstreamError(status, message, error_type, code, headers=headers)


@dataclass(slots=True)
class _Knobs:
    """Parsed ``x-demo-*`` headers (delays already in seconds)."""

    tokens: int = DEFAULT_COMPLETION_TOKENS
    delay_s: float = 0.0
    ttft_s: float = 0.0
    headers_delay_s: float = 0.0
    status: int | None = None
    fail_times: int | None = None
    fail_key: str = ""
    retry_after: str | None = None
    drop_after: int | None = None
    model_missing: bool = False


def _knob_error(name: str, expected: str, value: str) -> _UpstreamError:
    return _bad_request(f"{name} must be {expected}, got {value!r}", "invalid_demo_header")


def _int_knob(headers: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise _knob_error(name, f"an integer in [{low}, {high}]", value) from None
    if not low <= number <= high:
        raise _knob_error(name, f"an integer in [{low}, {high}]", value)
    return number


def _ms_knob(headers: Mapping[str, str], name: str) -> float:
    """A delay in (float) milliseconds, returned in seconds."""
    value = headers.get(name)
    if value is None:
        return 0.0
    try:
        millis = float(value.strip())
    except ValueError:
        raise _knob_error(name, "a non-negative number of milliseconds", value) from None
    if not math.isfinite(millis) or millis < 0:
        raise _knob_error(name, "a non-negative number of milliseconds", value)
    return millis / 1000.0


def _flag_knob(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise _knob_error(name, "a boolean such as 1 or 0", value)


def _parse_knobs(headers: Mapping[str, str]) -> _Knobs:
    """Read every knob; raises a 400 ``_UpstreamError`` on a malformed value."""
    tokens = _int_knob(headers, "x-demo-tokens", 0, _MAX_TOKENS_KNOB)
    return _Knobs(
        tokens=DEFAULT_COMPLETION_TOKENS if tokens is None else tokens,
        delay_s=_ms_knob(headers, "x-demo-delay-ms"),
        ttft_s=_ms_knob(headers, "x-demo-ttft-ms"),
        headers_delay_s=_ms_knob(headers, "x-demo-headers-delay-ms"),
        status=_int_knob(headers, "x-demo-status", 400, 599),
        fail_times=_int_knob(headers, "x-demo-fail-times", 0, 2**31),
        fail_key=headers.get("x-demo-fail-key", ""),
        retry_after=headers.get("x-demo-retry-after"),
        drop_after=_int_knob(headers, "x-demo-drop-after", 0, _MAX_TOKENS_KNOB),
        model_missing=_flag_knob(headers, "x-demo-model-missing"),
    )


def _injected_status(state: _DemoState, knobs: _Knobs) -> int | None:
    """The status to fail with, counting fail-key attempts so only the first K fail."""
    if knobs.fail_times is None:
        return knobs.status
    seen = state.fail_counts.get(knobs.fail_key, 0) + 1
    state.fail_counts[knobs.fail_key] = seen
    if seen > knobs.fail_times:
        return None
    return knobs.status if knobs.status is not None else 500


def _preflight(state: _DemoState, knobs: _Knobs, model: str | None) -> None:
    """Apply model-missing and the injected status, after body validation and before any work."""
    if knobs.model_missing and model is not None:
        raise _model_not_found(model)
    status = _injected_status(state, knobs)
    if status is not None:
        raise _injected_error(status, model, knobs.retry_after)


# --------------------------------------------------------------------------------------------------------------
# Response writing
# --------------------------------------------------------------------------------------------------------------


async def _sleep(seconds: float) -> None:
    """Sleep only when asked to: a zero-delay request should not pay for a timer."""
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _send_json(
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
        recorder._finish(recorded, disconnected=True)
        return response
    recorder._finish(recorded, completed=True)
    return response


def _drop_connection(
    request: web.Request, response: web.StreamResponse, recorder: DemoRecorder, recorded: RecordedRequest
) -> web.StreamResponse:
    """Cut the connection mid-response (``x-demo-drop-after``).

    ``transport.close()`` still flushes what was already written, so the client gets the first chunks and then an
    unterminated body. aiohttp's own ``write_eof`` afterwards fails with a ConnectionError it swallows quietly.
    """
    recorder._finish(recorded, dropped=True)
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
        recorder._finish(recorded, disconnected=True)
        return response
    return _drop_connection(request, response, recorder, recorded)


async def _send_body(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, payload: bytes
) -> web.StreamResponse:
    """Finish a successful non-streaming request: ttft wait, then the body (or the drop knob)."""
    await _sleep(knobs.ttft_s)
    if knobs.drop_after is not None:
        return await _send_headers_then_drop(request, state.recorder, recorded, len(payload))
    return await _send_json(request, state.recorder, recorded, 200, payload)


# --------------------------------------------------------------------------------------------------------------
# Body validation helpers
# --------------------------------------------------------------------------------------------------------------


async def _read_json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None when absent, unparsable or not an object."""
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw:
        return None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _require_object(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is None:
        raise _bad_request("The request body must be a JSON object", "invalid_json")
    return body


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad_request("you must provide a model parameter", "missing_required_parameter", "model")
    return model


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad_request(f"'{name}' must be a boolean", "invalid_type", name)
    return value


def _positive_int(body: dict[str, Any], name: str, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise _bad_request(f"'{name}' must be an integer in [1, {high}]", "invalid_value", name)
    return value


# --------------------------------------------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------------------------------------------


def _message_texts(messages: list[Any]) -> list[str]:
    """Text of every message: string contents and the ``text`` parts of list contents; anything else is ignored."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _token_indices(seed: int, count: int) -> tuple[int, ...]:
    """Word indices of the answer; benchmark-typical lengths are cached, huge ones are not (bounded memory)."""
    if count <= _CACHED_TOKENS_MAX:
        return _cached_token_indices(seed, count)
    return _compute_token_indices(seed, count)


def _compute_token_indices(seed: int, count: int) -> tuple[int, ...]:
    """A 31-bit LCG seeded by the prompt, so equal prompts give equal answers."""
    state = seed & 0x7FFFFFFF
    indices: list[int] = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        indices.append(state >> _TOKEN_INDEX_SHIFT)
    return tuple(indices)


_cached_token_indices: Final = lru_cache(maxsize=512)(_compute_token_indices)


@dataclass(slots=True)
class _ChatPlan:
    """Everything needed to render one chat answer, streaming or not."""

    completion_id: str
    created: int
    model: str
    tokens: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def _plan_chat(state: _DemoState, knobs: _Knobs, body: dict[str, Any], model: str) -> _ChatPlan:
    """Validate the chat-specific fields and decide the answer."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("'messages' must be a non-empty array", "missing_required_parameter", "messages")
    stream = _optional_bool(body, "stream")
    cap = _positive_int(body, "max_completion_tokens", 2**31)
    if cap is None:
        cap = _positive_int(body, "max_tokens", 2**31)
    stream_options = body.get("stream_options")
    include_usage = stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    texts = _message_texts(messages)
    prompt_tokens = max(1, sum(len(text.split()) for text in texts))
    count, finish_reason = knobs.tokens, "stop"
    if cap is not None and cap < count:
        count, finish_reason = cap, "length"
    seed = zlib.crc32("\n".join(texts).encode("utf-8", "surrogatepass"))
    return _ChatPlan(
        completion_id=f"chatcmpl-demo-{next(state.completion_ids)}",
        created=int(time.time()),
        model=model,
        tokens=_token_indices(seed, count),
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        stream=stream,
        include_usage=include_usage,
    )


def _completion_payload(plan: _ChatPlan) -> bytes:
    content = "".join([_TOKEN_TEXT[index] for index in plan.tokens])
    return orjson.dumps(
        {
            "id": plan.completion_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": plan.usage(),
        }
    )


class _ChunkFrames:
    """Prebuilt byte pieces of one stream's ``chat.completion.chunk`` frames, so each chunk is one concatenation."""

    __slots__ = ("_head", "_prefix", "_tail_final", "_tail_open", "_usage")

    def __init__(self, plan: _ChatPlan) -> None:
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
        return b"".join((self._head, b'{"content":', _TOKEN_JSON[token], b"}", tail))

    def finish_only(self) -> bytes:
        """The finish_reason carrier when there were no content chunks at all."""
        return self._head + b"{}" + self._tail_final

    def usage(self) -> bytes:
        return self._prefix + b',"choices":[],"usage":' + orjson.dumps(self._usage) + b"}\n\n"


async def _stream_chunks(
    request: web.Request,
    response: web.StreamResponse,
    state: _DemoState,
    recorded: RecordedRequest,
    knobs: _Knobs,
    plan: _ChatPlan,
) -> bool:
    """Write the stream after its headers; False when the drop knob cut it. Each chunk is its own awaited write."""
    frames = _ChunkFrames(plan)
    await _sleep(knobs.ttft_s)
    await response.write(frames.role())
    last = len(plan.tokens) - 1
    drop_after = knobs.drop_after
    for position, token in enumerate(plan.tokens):
        if position:
            await _sleep(knobs.delay_s)
        if drop_after is not None and position >= drop_after:
            _drop_connection(request, response, state.recorder, recorded)
            return False
        await response.write(frames.content(token, position == last))
    if drop_after is not None:
        _drop_connection(request, response, state.recorder, recorded)
        return False
    if last < 0:
        await response.write(frames.finish_only())
    if plan.include_usage:
        await response.write(frames.usage())
    await response.write_eof(_DONE)
    return True


async def _stream_chat(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, plan: _ChatPlan
) -> web.StreamResponse:
    """SSE answer: headers go out at once, data after the ttft knob; outcome recorded in every case."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    recorded.status = 200
    try:
        await response.prepare(request)
        finished = await _stream_chunks(request, response, state, recorded, knobs, plan)
    except ConnectionError:
        state.recorder._finish(recorded, disconnected=True)
        return response
    if finished:
        state.recorder._finish(recorded, completed=True)
    return response


async def _serve_chat(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    checked = _require_object(body)
    model = _require_model(checked)
    plan = _plan_chat(state, knobs, checked, model)
    _preflight(state, knobs, model)
    if plan.stream:
        return await _stream_chat(request, state, recorded, knobs, plan)
    return await _send_body(request, state, recorded, knobs, _completion_payload(plan))


# --------------------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------------------

_EmbeddingInput = str | tuple[int, ...]


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_array(value: list[Any]) -> tuple[int, ...]:
    if not value or not all(_is_token(item) for item in value):
        raise _bad_request("token arrays in 'input' must be non-empty arrays of integers", "invalid_value", "input")
    return tuple(value)


def _embedding_inputs(value: object) -> list[_EmbeddingInput]:
    """OpenAI's accepted ``input`` shapes: a string, strings, one token array, or token arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise _bad_request(
            "'input' must be a string, an array of strings or an array of token arrays", "invalid_value", "input"
        )
    if all(_is_token(item) for item in value):
        return [tuple(value)]
    if all(isinstance(item, str) for item in value):
        return list(value)
    if all(isinstance(item, list) for item in value):
        return [_token_array(item) for item in value]
    raise _bad_request("'input' must not mix strings, integers and arrays", "invalid_value", "input")


def _embedding(item: _EmbeddingInput, dimensions: int) -> tuple[tuple[float, ...], str]:
    """The vector for ``item``; small dimensions are cached (repeated benchmark inputs), large ones are not."""
    if dimensions <= _CACHED_DIMENSIONS_MAX:
        return _cached_embedding(item, dimensions)
    return _compute_embedding(item, dimensions)


def _compute_embedding(item: _EmbeddingInput, dimensions: int) -> tuple[tuple[float, ...], str]:
    """A deterministic unit vector for ``item`` as float32 values, and the same bytes base64-encoded.

    Values are rounded through float32 so the ``float`` and ``base64`` encodings carry exactly the same numbers.
    """
    raw = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else orjson.dumps(item)
    state = (zlib.crc32(raw) ^ (dimensions * 0x9E3779B1)) & 0x7FFFFFFF
    values: list[float] = []
    for _ in range(dimensions):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        values.append((state >> 7) / float(1 << 23) - 1.0)
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in values))
    return struct.unpack(f"<{dimensions}f", packed), base64.b64encode(packed).decode("ascii")


_cached_embedding: Final = lru_cache(maxsize=1024)(_compute_embedding)


def _input_tokens(item: _EmbeddingInput) -> int:
    return max(1, len(item.split()) if isinstance(item, str) else len(item))


def _embeddings_payload(model: str, inputs: list[_EmbeddingInput], dimensions: int, as_base64: bool) -> bytes:
    data = []
    for index, item in enumerate(inputs):
        floats, encoded = _embedding(item, dimensions)
        data.append({"object": "embedding", "index": index, "embedding": encoded if as_base64 else floats})
    prompt_tokens = sum(_input_tokens(item) for item in inputs)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def _encoding_is_base64(body: dict[str, Any]) -> bool:
    encoding = body.get("encoding_format")
    if encoding is None or encoding == "float":
        return False
    if encoding == "base64":
        return True
    raise _bad_request("'encoding_format' must be 'float' or 'base64'", "invalid_value", "encoding_format")


async def _serve_embeddings(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/embeddings``."""
    checked = _require_object(body)
    model = _require_model(checked)
    inputs = _embedding_inputs(checked.get("input"))
    dimensions = _positive_int(checked, "dimensions", _MAX_DIMENSIONS) or DEFAULT_EMBEDDING_DIMENSIONS
    as_base64 = _encoding_is_base64(checked)
    _preflight(state, knobs, model)
    return await _send_body(request, state, recorded, knobs, _embeddings_payload(model, inputs, dimensions, as_base64))


# --------------------------------------------------------------------------------------------------------------
# Models and unknown paths
# --------------------------------------------------------------------------------------------------------------


def _models_payload() -> bytes:
    data = [
        {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": model.split("/", 1)[0]}
        for model in DEMO_MODELS
    ]
    return orjson.dumps({"object": "list", "data": data})


_MODELS_PAYLOAD: Final = _models_payload()


async def _serve_models(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``GET /v1/models``: a fixed list; only the status knobs apply."""
    _preflight(state, knobs, None)
    return await _send_json(request, state.recorder, recorded, 200, _MODELS_PAYLOAD)


async def _serve_unknown(
    request: web.Request, state: _DemoState, recorded: RecordedRequest, knobs: _Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """Any other ``/v1/*`` path or method: OpenAI's 404, recorded so a gateway routing bug is visible in tests."""
    raise _UpstreamError(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error", "unknown_url")


# --------------------------------------------------------------------------------------------------------------
# App wiring
# --------------------------------------------------------------------------------------------------------------

_Serve = Callable[
    [web.Request, _DemoState, RecordedRequest, _Knobs, dict[str, Any] | None], Awaitable[web.StreamResponse]
]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _dispatch(
    serve: _Serve, request: web.Request, state: _DemoState, recorded: RecordedRequest, body: dict[str, Any] | None
) -> web.StreamResponse:
    """Knobs, headers delay, then the endpoint; errors decided before the response started are rendered here."""
    try:
        knobs = _parse_knobs(request.headers)
        await _sleep(knobs.headers_delay_s)
        return await serve(request, state, recorded, knobs, body)
    except _UpstreamError as error:
        return await _send_json(request, state.recorder, recorded, error.status, error.payload(), error.headers)


def _recorded_endpoint(serve: _Serve) -> _Handler:
    """Wrap an endpoint so the request is recorded first and its outcome always lands in the recorder.

    Cancellation (the client went away, with ``handler_cancellation=True``) marks it disconnected and re-raises.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[_STATE_KEY]
        body = await _read_json_object(request)
        recorded = state.recorder._record(request, {} if body is None else body)
        try:
            return await _dispatch(serve, request, state, recorded, body)
        except asyncio.CancelledError:
            state.recorder._finish(recorded, disconnected=True)
            raise
        except Exception:
            state.recorder._finish(recorded)
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
    app[_STATE_KEY] = _DemoState(recorder)
    app.router.add_post("/v1/chat/completions", _recorded_endpoint(_serve_chat))
    app.router.add_post("/v1/embeddings", _recorded_endpoint(_serve_embeddings))
    app.router.add_get("/v1/models", _recorded_endpoint(_serve_models))
    app.router.add_route("*", "/v1/{tail:.*}", _recorded_endpoint(_serve_unknown))
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
        description="Deterministic OpenAI-compatible demo upstream (see the module docstring for x-demo-* knobs).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind; 0 picks a free one (default 9000)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
