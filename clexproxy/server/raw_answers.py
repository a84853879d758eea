"""The screen's answers: the full path's bytes for a refusal, rendered once by aiohttp and filled in per call.

The full path answers a refusal with an `ApiError` rendered by `ApiError.to_response` and written by
aiohttp, which adds `Content-Length`, `Date` and `Server` and serializes the head. The screen writes
to the socket itself, from a template: the same response, for the same plan or message, taken once
through aiohttp's own `StreamResponse.prepare` and header serialization (`wire_bytes`), with a
sentinel in each value that changes from call to call; splitting at the sentinels leaves one `%`
format. So every header name, its order, the status line, the body and its message come from the
one renderer, and a call costs one dict lookup and one `%` format instead of an exception, two
header dicts, a JSON encoding and a Response (a flood of refused calls is what an attack looks like).

`RateLimitAnswers` holds one per-minute 429 template per plan, `raw_response` one per error
whose class and message decide its bytes (a 401 of `Directory.authenticate`). The screen's
integration test holds both equal to what the full path wrote to a socket, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from clexproxy.answer_wire import http_date, response_bytes
from clexproxy.catalog import Plan
from clexproxy.clock import seconds_to_utc_midnight
from clexproxy.errors import ApiError, RateLimited, retry_after_values
from clexproxy.fastpath.limits import BucketResult
from clexproxy.headers import (
    CREDITS_REMAINING,
    CREDITS_RESET,
    RATELIMIT_REMAINING_REQUESTS,
    RATELIMIT_RESET_REQUESTS,
    REQUEST_ID,
    RETRY_AFTER,
    RETRY_AFTER_MS,
)
from clexproxy.limits.headers import metering_headers, openai_duration, retry_when, rpm_message

MAX_TEMPLATES = 256  # plans replaced by configuration reloads, messages: a bound, never reached in practice


def wire_bytes(response: web.Response, late: Mapping[str, str] | None = None) -> bytes:
    """`response` as aiohttp writes it on a keep-alive HTTP/1.1 connection: its head, then its body.

    `late` replaces values aiohttp adds while preparing (`hdrs.DATE`, `hdrs.CONTENT_LENGTH`).
    """
    return response_bytes(response, HttpVersion11, True, late)[0]


def _as_format(response: web.Response, slots: tuple[tuple[str, bytes], ...], late: Mapping[str, str]) -> bytes:
    """`response`'s bytes as a `%` format: each sentinel of `slots`, in their order, becomes its conversion."""
    rest = wire_bytes(response, late).replace(b"%", b"%%")
    parts: list[bytes] = []
    for sentinel, conversion in slots:
        before, found, rest = rest.partition(sentinel.encode())
        if not found:
            raise RuntimeError(f"the rendered answer lacks {sentinel} where the template expects it")
        parts += [before, conversion]
    if any(sentinel.encode() in rest for sentinel, _ in slots):
        raise RuntimeError("a sentinel appears twice in the rendered answer")
    return b"".join(parts) + rest


def _sentinel(name: str) -> str:
    return f"<clexproxy-slot-{name}>"  # plain ASCII without `%`: JSON and the header serializer keep it as is


_REMAINING, _RESET, _BUCKET, _RESET_REQUESTS = (_sentinel(n) for n in ("remaining", "reset", "bucket", "in"))
_RETRY, _RETRY_MS, _ID, _LENGTH, _DATE, _WHEN = (
    _sentinel(n) for n in ("retry", "retry-ms", "id", "length", "date", "when")
)
_FIXED_SLOTS = ((_ID, b"%s"), (_DATE, b"%s"))


class RateLimitAnswers:
    """The per-minute 429 (`LedgerLimits.rpm_error`, rendered by `to_response`), from one template per plan."""

    # The template's conversions, in the order the answer carries them; `render` fills them in this order.
    _SLOTS = (
        (_REMAINING, b"%d"), (_RESET, b"%d"), (_BUCKET, b"%d"), (_RESET_REQUESTS, b"%s"), (_RETRY, b"%d"),
        (_RETRY_MS, b"%d"), (_ID, b"%s"), (_LENGTH, b"%d"), (_DATE, b"%s"), (_WHEN, b"%s"),
    )

    def __init__(self) -> None:
        self._templates: dict[Plan, tuple[bytes, int]] = {}

    def render(self, plan: Plan, bucket: BucketResult, remaining: int, wall: float, request_id: str) -> bytes:
        """The answer for a call of an account on `plan`, refused by `bucket`, with `remaining` credits today."""
        template = self._templates.get(plan)
        if template is None:
            template = self._template(plan)
        head, length = template
        retry_after = bucket.retry_after
        seconds, ms = retry_after_values(retry_after)
        when = retry_when(retry_after).encode()
        return head % (
            remaining, seconds_to_utc_midnight(wall), bucket.remaining, openai_duration(bucket.reset_after).encode(),
            seconds, ms, request_id.encode(), length + len(when), http_date(), when,
        )

    def _template(self, plan: Plan) -> tuple[bytes, int]:
        """The full path's 429 for `plan` with sentinels for what changes per call, and its body's length but the wait.

        Built as the full path builds it: the metering headers, the message, `RateLimited` (which
        adds the waits), then `to_response` with the request id after the error's headers.
        """
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        error = RateLimited(
            rpm_message(plan) + _WHEN, limit="requests_per_minute", retry_after=1.0,
            headers=metering_headers(plan, 0, BucketResult(False, 0, 1.0, 1.0), 0.0),
        )
        error.headers.update({  # the values each call fills in (`update` keeps their places)
            CREDITS_REMAINING: _REMAINING, CREDITS_RESET: _RESET, RATELIMIT_REMAINING_REQUESTS: _BUCKET,
            RATELIMIT_RESET_REQUESTS: _RESET_REQUESTS, RETRY_AFTER: _RETRY, RETRY_AFTER_MS: _RETRY_MS,
        })
        response = error.to_response({**error.headers, REQUEST_ID: _ID})
        head = _as_format(response, self._SLOTS, {hdrs.CONTENT_LENGTH: _LENGTH, hdrs.DATE: _DATE})
        length = len(error.to_bytes()) - len(_WHEN)
        template = self._templates[plan] = (head, length)
        return template


_FIXED: dict[tuple[type[ApiError], str], bytes] = {}


def raw_response(error: ApiError, request_id: str) -> bytes:
    """The whole response the full path sends for `error` (its headers, then the request id), as bytes.

    For errors whose class and message decide every other byte (no per-call headers or fields):
    `Directory.authenticate`'s 401s, the 503 to a connection over the cap, the 408 for a head that
    never came whole. One template each; a call fills in its request id and the date.
    """
    template = _FIXED.get((type(error), error.message))
    if template is None:
        if len(_FIXED) >= MAX_TEMPLATES:
            _FIXED.clear()
        response = error.to_response({**error.headers, REQUEST_ID: _ID})
        template = _FIXED[type(error), error.message] = _as_format(response, _FIXED_SLOTS, {hdrs.DATE: _DATE})
    return template % (request_id.encode(), http_date())
