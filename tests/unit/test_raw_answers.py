"""The screen's templates fill in to what the one renderer writes, for any numbers.

`RateLimitAnswers` and `raw_response` render a refusal once, with sentinels, through
`ApiError.to_response` and aiohttp's `StreamResponse.prepare` (`wire_bytes`), and fill in per call.
These tests walk what changes between calls (the waits and their rounding, the credits left, the
time to midnight, odd plan names, request ids with `%`) through the template and through the
renderer itself; the screen's integration tests hold the templates equal to what the full path
wrote to a socket.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from clexproxy.auth import Account
from clexproxy.catalog import Plan
from clexproxy.clock import ManualClock
from clexproxy.errors import ApiError, AuthenticationFailed, RequestTimeout, ServiceUnavailable
from clexproxy.fastpath.limits import BucketResult
from clexproxy.headers import REQUEST_ID
from clexproxy.limits.local import LocalLimits
from clexproxy.server.raw_answers import RateLimitAnswers, raw_response, wire_bytes

NOON = 1_795_608_000.0
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
WAITS = st.one_of(
    st.floats(0.0, 90_000.0, allow_nan=False),
    st.sampled_from([0.0, 0.0004, 0.0005, 0.9994, 0.9995, 0.9999, 1.0, 59.9995, 60.0, 3599.5, 86_399.9996, 86_400.0]),
    st.just(float("inf")),
)
PLANS = st.builds(
    Plan,
    name=st.text(min_size=1, max_size=12),
    credits_per_day=st.integers(0, 10**9),
    requests_per_minute=st.integers(0, 10_000),
    max_keys=st.just(1),
)
REQUEST_IDS = st.from_regex(r"[ -~]{1,40}", fullmatch=True)

ANSWERS = RateLimitAnswers()  # one renderer for every example, as the server keeps one


def full_path(error: ApiError, request_id: str) -> bytes:
    """What the proxy handler's refusal writes: the error's headers, then the request id."""
    return DATE.sub(b"\r\n", wire_bytes(error.to_response({**error.headers, REQUEST_ID: request_id})))


@given(plan=PLANS, retry_after=WAITS, reset_after=WAITS, spent=st.integers(0, 10**9),
       seconds=st.floats(0.0, 86_399.999), request_id=REQUEST_IDS)
def test_template_renders_the_full_paths_429(plan: Plan, retry_after: float, reset_after: float, spent: int,
                                             seconds: float, request_id: str) -> None:
    clock = ManualClock(NOON - 43_200 + seconds)
    limits = LocalLimits(clock)
    account = Account(7, "acct", plan)
    limits.ledger.set_account(account.id, plan.credits_per_day, limits.today(), min(spent, plan.credits_per_day))
    bucket = BucketResult(False, 0, retry_after, reset_after)
    expected = full_path(limits.rpm_error(account, bucket), request_id)
    remaining = limits.ledger.remaining(account.id, limits.today())
    rendered = ANSWERS.render(plan, bucket, remaining, clock.time(), request_id)
    assert DATE.sub(b"\r\n", rendered) == expected


@given(request_id=REQUEST_IDS)
def test_fixed_answers_fill_in_the_request_id(request_id: str) -> None:
    """A 401 (no headers), the 503 over the cap and a head's 408 (headers of their own): one template each."""
    turned_away = ServiceUnavailable("The gateway has as many connections open as it serves; retry in a moment.")
    timed_out = RequestTimeout("The request's head did not arrive whole within 30 seconds.")
    for error in (turned_away, timed_out):
        error.headers.update({"Connection": "close"})  # as `ClientConnection` sends them
    for error in (AuthenticationFailed("Invalid or revoked API key."), turned_away, timed_out):
        for rid in (request_id, "another"):  # the second call fills in the first's template
            assert DATE.sub(b"\r\n", raw_response(error, rid)) == full_path(error, rid)
