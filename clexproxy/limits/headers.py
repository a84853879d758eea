"""What the limits tell a client: the metering headers and the per-minute 429's words.

Every answer after authentication carries the same six metering headers (SPEC "Response
headers"): the full path's admissions and refusals, a 400 that reserved nothing, and the
screen's prebuilt 429 (`RateLimitAnswers`), which renders `metering_headers` once per plan
with sentinel values and fills them in per call. One builder, so the names, their order and
their formats exist once.
"""

from __future__ import annotations

from clexproxy.catalog import Plan
from clexproxy.clock import seconds_to_utc_midnight
from clexproxy.fastpath.limits import BucketResult
from clexproxy.headers import (
    CREDITS_LIMIT,
    CREDITS_REMAINING,
    CREDITS_RESET,
    RATELIMIT_LIMIT_REQUESTS,
    RATELIMIT_REMAINING_REQUESTS,
    RATELIMIT_RESET_REQUESTS,
)


def metering_headers(plan: Plan, remaining: int, bucket: BucketResult, wall: float) -> dict[str, str]:
    """The metering headers, in `headers.METERING` order: `remaining` credits today, the per-minute `bucket`.

    `wall` is the wall clock the day's reset is counted from. The dict is the caller's to amend
    (a refund rewrites the credits remaining, the full path adds its request id).
    """
    return {
        CREDITS_REMAINING: str(remaining),
        CREDITS_LIMIT: str(plan.credits_per_day),
        CREDITS_RESET: str(seconds_to_utc_midnight(wall)),
        RATELIMIT_LIMIT_REQUESTS: str(plan.requests_per_minute),
        RATELIMIT_REMAINING_REQUESTS: str(bucket.remaining),
        RATELIMIT_RESET_REQUESTS: openai_duration(bucket.reset_after),
    }


def openai_duration(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 0.9995:  # the common case, answered without rounding to the millisecond first
        ms = int(seconds * 1000 + 0.5)  # ms-rounding as `round(seconds, 3)` does, for the values seen here
        return f"{ms if ms > 0 else 0}ms"
    seconds = round(seconds if seconds < 86_400.0 else 86_400.0, 3)  # a bucket that never refills says inf
    if seconds < 60.0:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def rpm_message(plan: Plan) -> str:
    """The per-minute 429's message, up to the part that says when to retry (`retry_when`)."""
    return f"Rate limit reached: your {plan.name} plan allows {plan.requests_per_minute} requests per minute. "


def retry_when(retry_after: float) -> str:
    """The per-minute 429's message, its end: when a retry can succeed."""
    return f"Retry in {retry_after:.1f}s." if retry_after < 86_400 else "It admits no requests."
