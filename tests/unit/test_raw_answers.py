"""The screen's per-minute 429 template renders what the full path's `RateLimited` renders, for any numbers.

The integration tests (tests/integration/test_screen.py) hold a screened answer equal to one the
full path wrote to a socket; this test walks the numbers that change between calls (the waits
and their rounding, the credits left, the time to midnight, odd plan names) through both renderers.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from clexproxy.auth import Account
from clexproxy.catalog import Plan
from clexproxy.clock import ManualClock
from clexproxy.fastpath.limits import BucketResult
from clexproxy.limits.local import Meter
from clexproxy.server.raw_answers import RateLimitAnswers, raw_response

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

ANSWERS = RateLimitAnswers()  # one renderer for every example, as the server keeps one


@given(plan=PLANS, retry_after=WAITS, reset_after=WAITS, spent=st.integers(0, 10**9),
       seconds=st.floats(0.0, 86_399.999), request_id=st.from_regex(r"[ -~]{1,40}", fullmatch=True))
def test_template_renders_the_full_paths_429(plan: Plan, retry_after: float, reset_after: float, spent: int,
                                             seconds: float, request_id: str) -> None:
    clock = ManualClock(NOON - 43_200 + seconds)
    meter = Meter(clock)
    account = Account(7, "acct", plan)
    meter.ledger.set_account(account.id, plan.credits_per_day, meter.today(), min(spent, plan.credits_per_day))
    bucket = BucketResult(False, 0, retry_after, reset_after)
    expected = raw_response(meter._rpm_refusal(account, bucket), request_id)
    remaining = meter.ledger.remaining(account.id, meter.today())
    rendered = ANSWERS.render(plan, bucket, remaining, clock.time(), request_id)
    assert DATE.sub(b"\r\n", rendered) == DATE.sub(b"\r\n", expected)
