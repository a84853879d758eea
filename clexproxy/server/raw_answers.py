"""The screen's answers (clexproxy/server/screen.py) as the exact bytes the full path sends for them.

The full path answers a refusal with an `ApiError` rendered by aiohttp (`to_response`); the
screen writes to the socket itself, so it renders the same status line, headers (in the same
order, with the `Content-Type`, `Content-Length`, `Date` and `Server` aiohttp adds) and body.
The per-minute 429 is what a flood is made of, so it has its own renderer: one `%` format per
plan, built once, instead of an exception, two header dicts and a JSON encoding per call.
tests/integration/test_screen.py holds both renderings equal to the full path's, byte for byte.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus

import orjson
from aiohttp.http import SERVER_SOFTWARE

from clexproxy.catalog import Plan
from clexproxy.clock import seconds_to_utc_midnight
from clexproxy.errors import ApiError, RateLimited, retry_after_values
from clexproxy.fastpath.limits import BucketResult
from clexproxy.limits.headers import openai_duration, retry_when, rpm_message


class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, email.utils.formatdate(second, usegmt=True).encode()
        return cls.value


_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus}


def raw_response(error: ApiError, request_id: str) -> bytes:
    """The whole HTTP/1.1 response the full path sends for `error` (`error.to_response`), as bytes."""
    body = error.to_bytes()
    fields = "".join([f"{name}: {value}\r\n" for name, value in error.headers.items()])
    return (
        f"{_STATUS_LINES[error.status]}{fields}X-Request-Id: {request_id}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nDate: {_Date.now().decode()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
    ).encode() + body


class RateLimitAnswers:
    """The per-minute 429 (`Meter._rpm_refusal` rendered by `to_response`), from one template per plan."""

    def __init__(self) -> None:
        self._templates: dict[Plan, tuple[bytes, bytes, bytes]] = {}

    def render(self, plan: Plan, bucket: BucketResult, remaining: int, wall: float, request_id: str) -> bytes:
        """The answer for a call of an account on `plan`, refused by `bucket`, with `remaining` credits today."""
        template = self._templates.get(plan)
        if template is None:
            template = self._template(plan)
        head, before, after = template
        retry_after = bucket.retry_after
        seconds, ms = retry_after_values(retry_after)
        when = retry_when(retry_after).encode()
        return head % (
            remaining, seconds_to_utc_midnight(wall), bucket.remaining, openai_duration(bucket.reset_after).encode(),
            seconds, ms, request_id.encode(), len(before) + len(when) + len(after), _Date.now(), before, when, after,
        )

    def _template(self, plan: Plan) -> tuple[bytes, bytes, bytes]:
        if len(self._templates) >= 256:  # plans replaced by configuration reloads
            self._templates.clear()
        # The message is the body's first string and ends with `retry_when`'s plain ASCII, which
        # JSON leaves as it is: the body splits where the message's closing quote is.
        message = rpm_message(plan)
        body = RateLimited(message, limit="requests_per_minute", retry_after=1.0).to_bytes()
        split = body.index(orjson.dumps(message)) + len(orjson.dumps(message)) - 1
        before, after = body[:split], body[split:]
        fields = (
            "X-Clex-Credits-Remaining: %d\r\n"
            f"X-Clex-Credits-Limit: {plan.credits_per_day}\r\n"
            "X-Clex-Credits-Reset: %d\r\n"
            f"x-ratelimit-limit-requests: {plan.requests_per_minute}\r\n"
            "x-ratelimit-remaining-requests: %d\r\n"
            "x-ratelimit-reset-requests: %s\r\n"
            "Retry-After: %d\r\n"
            "retry-after-ms: %d\r\n"
            "X-Request-Id: %s\r\n"
        )
        server = SERVER_SOFTWARE.replace("%", "%%")
        tail = f"Content-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\nServer: {server}\r\n\r\n"
        head = f"{_STATUS_LINES[RateLimited.status]}{fields}{tail}%s%s%s".encode()
        template = self._templates[plan] = (head, before, after)
        return template
