"""LocalLimits on a manual clock: admission headers, both 429s, idempotent refunds, drained usage, UTC rollover.

Calls are admitted as the proxy handler admits them (`count_request`, then `admit`) and settled
as `finish_call` settles them (`settle`).
"""

from __future__ import annotations

import pytest

from clexproxy.auth import Account
from clexproxy.catalog import DEFAULT_PLANS, Plan
from clexproxy.clock import SECONDS_PER_DAY, ManualClock, seconds_to_utc_midnight, utc_day
from clexproxy.errors import RateLimited
from clexproxy.limits.base import Admission
from clexproxy.limits.headers import openai_duration
from clexproxy.limits.local import LocalLimits
from clexproxy.store.base import UsageDelta

# 2026-11-25 12:00:00 UTC.
NOON = 1_795_608_000.0
DAY = utc_day(NOON)
METERING = (
    "X-Clex-Credits-Remaining",
    "X-Clex-Credits-Limit",
    "X-Clex-Credits-Reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)


def account(plan: str = "free", account_id: int = 1) -> Account:
    return Account(account_id, f"acct-{account_id}", DEFAULT_PLANS[plan])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


@pytest.fixture
def limits(clock: ManualClock) -> LocalLimits:
    return LocalLimits(clock)


async def admit(limits: LocalLimits, acct: Account, cost: int) -> Admission:
    """Both steps, as the proxy handler takes them: one request from the bucket, then `cost` credits."""
    return await limits.admit(acct, cost, await limits.count_request(acct))


# openai_duration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.02, "20ms"),
        (0.3, "300ms"),
        (0.289, "289ms"),  # not 288: 0.289 * 1000 is 288.99999999999994 in binary floating point
        (0.999, "999ms"),
        (0.9994, "999ms"),
        (0.9996, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (59.9996, "1m0s"),  # rounds up into the next unit: OpenAI's format never says "60s"
        (60.0, "1m0s"),
        (61.0, "1m1s"),
        (360.0, "6m0s"),
        (3599.0, "59m59s"),
        (3600.0, "1h0m0s"),
        (3661.0, "1h1m1s"),
        (-1.0, "0ms"),
    ],
)
def test_openai_duration(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


# clock helpers ------------------------------------------------------------------------------------


def test_utc_day_edges() -> None:
    assert utc_day(0.0) == 0
    assert utc_day(SECONDS_PER_DAY - 0.001) == 0
    assert utc_day(SECONDS_PER_DAY) == 1
    assert utc_day(NOON) == utc_day(NOON + 12 * 3600 - 0.001) == utc_day(NOON - 12 * 3600)
    assert utc_day(NOON + 12 * 3600) == DAY + 1


def test_seconds_to_utc_midnight_edges() -> None:
    assert seconds_to_utc_midnight(0.0) == SECONDS_PER_DAY
    assert seconds_to_utc_midnight(NOON) == 12 * 3600
    assert seconds_to_utc_midnight(NOON + 0.5) == 12 * 3600  # whole seconds, rounded up
    assert seconds_to_utc_midnight(NOON + 12 * 3600 - 1) == 1
    # Never 0: a reset "now" would invite a retry storm.
    assert seconds_to_utc_midnight(NOON + 12 * 3600 - 0.0001) == 1
    assert seconds_to_utc_midnight(NOON + 12 * 3600) == SECONDS_PER_DAY


def test_manual_clock_moves_both_readings() -> None:
    clock = ManualClock(NOON, mono=5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (NOON + 2.5, 7.5)


# admit --------------------------------------------------------------------------------------------


async def test_admit_headers(limits: LocalLimits) -> None:
    admission = await admit(limits, account("free"), 3)
    assert set(METERING) <= set(admission.headers)
    h = admission.headers
    assert h["X-Clex-Credits-Remaining"] == "97"
    assert h["X-Clex-Credits-Limit"] == "100"
    assert h["X-Clex-Credits-Reset"] == str(12 * 3600)
    assert h["x-ratelimit-limit-requests"] == "40"
    assert h["x-ratelimit-remaining-requests"] == "39"
    # One request out of a 40/min bucket refills in 60/40 = 1.5 s.
    assert h["x-ratelimit-reset-requests"] == "1.5s"
    assert (admission.account_id, admission.cost, admission.day, admission.refunded) == (1, 3, DAY, False)


async def test_accounts_are_metered_separately(limits: LocalLimits) -> None:
    await admit(limits, account("free", 1), 5)
    other = await admit(limits, account("pro", 2), 5)
    assert other.headers["X-Clex-Credits-Remaining"] == "1995"
    assert other.headers["x-ratelimit-remaining-requests"] == "199"


async def test_rpm_refusal(limits: LocalLimits, clock: ManualClock) -> None:
    acct = account("free")
    for i in range(40):
        assert (await admit(limits, acct, 1)).headers["x-ratelimit-remaining-requests"] == str(39 - i)
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    error = info.value
    assert error.status == 429 and error.limit == "requests_per_minute"
    assert error.body()["error"]["limit"] == "requests_per_minute"
    assert error.headers["Retry-After"] == "2"  # 1.5 s to the next token, in whole seconds rounded up
    assert error.headers["retry-after-ms"] == "1500"
    assert "x-should-retry" not in error.headers
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    # The refused request reserved nothing.
    assert error.headers["X-Clex-Credits-Remaining"] == "60"
    assert limits.peek_headers(acct)["X-Clex-Credits-Remaining"] == "60"
    clock.advance(1.5)
    assert (await admit(limits, acct, 1)).headers["X-Clex-Credits-Remaining"] == "59"


async def test_rpm_refusal_looks_without_counting(limits: LocalLimits, clock: ManualClock) -> None:
    """What the screen asks: would the per-minute limit refuse a call now? Looking takes nothing."""
    acct = account("free")
    for _ in range(39):
        await admit(limits, acct, 1)
    assert limits.rpm_refusal(acct) is None and limits.rpm_refusal(acct) is None  # one request left, still there
    await admit(limits, acct, 1)
    refused = limits.rpm_refusal(acct)
    assert refused is not None
    bucket, remaining, wall = refused
    assert (bucket.allowed, bucket.remaining, remaining, wall) == (False, 0, 60, NOON)
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    assert info.value.headers["retry-after-ms"] == str(round(bucket.retry_after * 1000))
    assert info.value.headers["X-Clex-Credits-Remaining"] == "60"
    clock.advance(1.5)
    assert limits.rpm_refusal(acct) is None


async def test_credit_refusal(limits: LocalLimits) -> None:
    acct = account("free")
    for _ in range(20):
        await admit(limits, acct, 5)
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    error = info.value
    assert error.limit == "daily_credits"
    assert error.body()["error"]["limit"] == "daily_credits"
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    assert error.headers["x-should-retry"] == "false"
    assert error.headers["Retry-After"] == str(12 * 3600)
    assert error.headers["retry-after-ms"] == str(12 * 3600 * 1000)
    assert error.headers["X-Clex-Credits-Remaining"] == "0"
    assert error.headers["X-Clex-Credits-Limit"] == "100"


async def test_credit_refusal_leaves_a_cheaper_call_possible(limits: LocalLimits) -> None:
    acct = account("free")
    for _ in range(9):
        await admit(limits, acct, 10)
    await admit(limits, acct, 8)  # 98 spent, 10 requests (well under the per-minute limit)
    with pytest.raises(RateLimited):
        await admit(limits, acct, 3)
    assert (await admit(limits, acct, 2)).headers["X-Clex-Credits-Remaining"] == "0"


async def test_plan_with_zero_rpm_is_refused_cleanly(limits: LocalLimits) -> None:
    """A bucket that never refills must still give a finite Retry-After and a readable message."""
    acct = Account(3, "suspended", Plan("suspended", credits_per_day=100, requests_per_minute=0, max_keys=1))
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    error = info.value
    assert error.limit == "requests_per_minute"
    assert 1 <= int(error.headers["Retry-After"]) <= SECONDS_PER_DAY
    assert int(error.headers["retry-after-ms"]) >= 1000
    assert "inf" not in error.message
    assert limits.peek_headers(acct)["X-Clex-Credits-Remaining"] == "100"


def test_peek_reserves_nothing(limits: LocalLimits) -> None:
    acct = account("starter")
    for _ in range(3):
        h = limits.peek_headers(acct)
    assert h["X-Clex-Credits-Remaining"] == "500"
    assert h["x-ratelimit-remaining-requests"] == "80"
    assert h["x-ratelimit-reset-requests"] == "0ms"
    assert limits.drain() == []


# refund and drain ---------------------------------------------------------------------------------


async def test_refund_restores_and_is_idempotent(limits: LocalLimits) -> None:
    acct = account("free")
    admission = await admit(limits, acct, 5)
    assert admission.headers["X-Clex-Credits-Remaining"] == "95"
    limits.refund(admission)
    assert admission.refunded
    assert admission.headers["X-Clex-Credits-Remaining"] == "100"
    limits.refund(admission)
    assert limits.peek_headers(acct)["X-Clex-Credits-Remaining"] == "100"
    assert (await admit(limits, acct, 1)).headers["X-Clex-Credits-Remaining"] == "99"


async def test_drain(limits: LocalLimits) -> None:
    acct = account("pro", 7)
    first = await admit(limits, acct, 3)
    second = await admit(limits, acct, 3)
    refunded = await admit(limits, acct, 3)
    limits.refund(refunded)
    limits.refund(refunded)
    limits.settle(first, True, 10, 8)
    limits.settle(second, True, 5, 2)
    assert limits.drain() == [UsageDelta(7, DAY, 6, 2, 15, 10)]
    assert limits.drain() == []


async def test_drain_tokens_without_new_credits(limits: LocalLimits) -> None:
    """Tokens recorded after the admission was already drained still reach the store."""
    acct = account("pro", 7)
    admission = await admit(limits, acct, 1)
    assert limits.drain() == [UsageDelta(7, DAY, 1, 1, 0, 0)]
    limits.settle(admission, True, 4, 3)
    assert limits.drain() == [UsageDelta(7, DAY, 0, 0, 4, 3)]


async def test_refund_after_drain_is_a_negative_delta(limits: LocalLimits) -> None:
    acct = account("pro", 7)
    admission = await admit(limits, acct, 5)
    assert limits.drain() == [UsageDelta(7, DAY, 5, 1, 0, 0)]
    limits.refund(admission)
    assert limits.drain() == [UsageDelta(7, DAY, -5, -1, 0, 0)]


async def test_track_with_stored_usage(limits: LocalLimits) -> None:
    """At start the limits are seeded with what the store says was spent today."""
    acct = account("starter")
    limits.track(acct, spent_today=490)
    assert (await admit(limits, acct, 3)).headers["X-Clex-Credits-Remaining"] == "7"


async def test_plan_change_takes_effect(limits: LocalLimits) -> None:
    acct = account("free")
    await admit(limits, acct, 5)
    acct.plan = DEFAULT_PLANS["pro"]
    limits.track(acct)
    h = (await admit(limits, acct, 5)).headers
    assert h["X-Clex-Credits-Remaining"] == "1990"
    assert h["X-Clex-Credits-Limit"] == "2000"
    assert h["x-ratelimit-limit-requests"] == "200"


# rollover -----------------------------------------------------------------------------------------


async def test_rollover_at_utc_midnight(clock: ManualClock) -> None:
    clock.advance(12 * 3600 - 2)  # 23:59:58
    limits = LocalLimits(clock)
    acct = account("free")
    for _ in range(20):
        last = await admit(limits, acct, 5)
    assert last.headers["X-Clex-Credits-Reset"] == "2"
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    assert info.value.headers["Retry-After"] == "2"
    clock.advance(1.5)  # 23:59:59.5: still yesterday
    with pytest.raises(RateLimited):
        await admit(limits, acct, 1)
    clock.advance(0.5)  # 00:00:00
    assert limits.peek_headers(acct)["X-Clex-Credits-Remaining"] == "100"  # before any call of the new day
    admission = await admit(limits, acct, 1)
    assert admission.day == DAY + 1
    assert admission.headers["X-Clex-Credits-Remaining"] == "99"
    assert admission.headers["X-Clex-Credits-Reset"] == str(SECONDS_PER_DAY)
    drained = sorted(limits.drain(), key=lambda d: d[1])  # by day
    assert drained == [UsageDelta(1, DAY, 100, 20, 0, 0), UsageDelta(1, DAY + 1, 1, 1, 0, 0)]


async def test_refund_of_yesterdays_call_does_not_add_to_today(clock: ManualClock) -> None:
    """A call admitted before midnight and refunded after it corrects yesterday's usage, not today's budget."""
    clock.advance(12 * 3600 - 1)
    limits = LocalLimits(clock)
    acct = account("free")
    late = await admit(limits, acct, 5)
    assert limits.drain() == [UsageDelta(1, DAY, 5, 1, 0, 0)]
    clock.advance(2)
    await admit(limits, acct, 3)
    limits.refund(late)
    assert limits.peek_headers(acct)["X-Clex-Credits-Remaining"] == "97"
    assert late.headers["X-Clex-Credits-Remaining"] == "97"
    drained = sorted(limits.drain(), key=lambda d: d[1])  # by day
    assert drained == [UsageDelta(1, DAY, -5, -1, 0, 0), UsageDelta(1, DAY + 1, 3, 1, 0, 0)]


# a fallback's answer charged at the model that answered (issue 10, item 17) -----------------------


async def test_a_cheaper_fallback_is_charged_its_own_cost_as_one_call(limits: LocalLimits) -> None:
    acct = account("free")  # 100 credits a day
    admission = await admit(limits, acct, 3)
    assert admission.headers["X-Clex-Credits-Remaining"] == "97"
    limits.charge_served(admission, 1)
    assert admission.cost == 1 and admission.headers["X-Clex-Credits-Remaining"] == "99"
    assert limits.ledger.remaining(acct.id, limits.today()) == 99
    assert [(row[2], row[3]) for row in limits.drain()] == [(1, 1)]  # one call, one credit
    limits.charge_served(admission, 1)  # idempotent
    assert limits.ledger.remaining(acct.id, limits.today()) == 99
    limits.refund(admission)  # an answer that then failed before it started: the served cost comes back
    assert limits.ledger.remaining(acct.id, limits.today()) == 100


async def test_a_dearer_fallback_is_charged_what_was_reserved(limits: LocalLimits) -> None:
    acct = account("free")
    admission = await admit(limits, acct, 2)
    limits.charge_served(admission, 5)
    assert admission.cost == 2 and limits.ledger.remaining(acct.id, limits.today()) == 98


async def test_a_refunded_or_midnight_crossing_call_keeps_its_settlement(limits: LocalLimits,
                                                                         clock: ManualClock) -> None:
    acct = account("free")
    refunded = await admit(limits, acct, 3)
    limits.refund(refunded)
    limits.charge_served(refunded, 1)
    assert limits.ledger.remaining(acct.id, limits.today()) == 100
    late = await admit(limits, acct, 3)
    clock.advance(SECONDS_PER_DAY / 2 + 1)  # past 00:00 UTC: yesterday's usage cannot be re-reserved
    limits.charge_served(late, 1)
    assert late.cost == 3
