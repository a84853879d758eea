"""The entry points the proxy handler, the screen and the gateway call, on both `Limits`.

`LocalLimits` alone, and `SharedLimits` against a real redis-server: a call is counted
(`count_request`), admitted (`admit`) and settled (`settle`, `refund`, `charge_served`) the same
way on both, and the headers and 429s say the same. Both run on a manual clock: the shared
limits read every time from it too (their remembered refusals and their circuit), so a test
moves them on without waiting. Redis keeps its own clock for its schedule of slots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clexproxy.auth import Account
from clexproxy.catalog import Plan
from clexproxy.clock import ManualClock, utc_day
from clexproxy.errors import RateLimited, ServiceUnavailable
from clexproxy.headers import CREDITS_LIMIT, CREDITS_REMAINING, METERING, RATELIMIT_REMAINING_REQUESTS
from clexproxy.limits.base import Admission, LedgerLimits, Limits
from clexproxy.limits.local import LocalLimits
from clexproxy.limits.shared import SharedLimits
from clexproxy.store.base import UsageDelta
from clexproxy.sync.redis import RedisSync
from tests.redis_server import RedisServer

NOON = 1_795_608_000.0  # 2026-11-25 12:00:00 UTC
DAY = utc_day(NOON)
TEN = Plan("ten", credits_per_day=10, requests_per_minute=1000, max_keys=1)
ONE_A_MINUTE = Plan("slow", credits_per_day=100, requests_per_minute=1, max_keys=1)


class Trips:
    """Every Redis round trip the shared limits make, by operation (a `RedisObserver`)."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.failed: list[str] = []

    def redis_call(self, operation: str, seconds: float) -> None:
        self.made.append(operation)

    def redis_failed(self, operation: str) -> None:
        self.failed.append(operation)


async def nothing_spent(account_id: int, day: int) -> int:
    """The store's figure for a day new to Redis: nothing spent yet."""
    return 0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


@pytest.fixture
def trips() -> Trips:
    return Trips()


@pytest.fixture
async def shared(clock: ManualClock, redis_server: RedisServer, trips: Trips) -> AsyncIterator[SharedLimits]:
    """One worker's shared limits, alone on a Redis of the test's own."""
    sync = RedisSync(redis_server.url, observer=trips)
    try:
        yield SharedLimits(clock, sync, 1, nothing_spent)
    finally:
        await sync.close()


@pytest.fixture(params=["local", "shared"])
def limits(request: pytest.FixtureRequest, clock: ManualClock) -> LedgerLimits:
    """Each implementation in turn; Redis is started only for the shared one."""
    if request.param == "local":
        return LocalLimits(clock)
    limits: SharedLimits = request.getfixturevalue("shared")
    return limits


async def admit(limits: Limits, account: Account, cost: int) -> Admission:
    """Both steps, as the proxy handler takes them: the call counted, then `cost` credits reserved."""
    return await limits.admit(account, cost, await limits.count_request(account))


def account(plan: Plan = TEN, account_id: int = 1) -> Account:
    return Account(account_id, f"acct-{account_id}", plan)


async def test_an_answered_call_is_charged_with_its_tokens(limits: LedgerLimits) -> None:
    acct = account()
    admission = await admit(limits, acct, 3)
    assert tuple(admission.headers) == METERING
    assert (admission.headers[CREDITS_REMAINING], admission.headers[CREDITS_LIMIT]) == ("7", "10")
    limits.settle(admission, True, 10, 5)
    assert not admission.refunded
    assert limits.drain() == [UsageDelta(acct.id, DAY, 3, 1, 10, 5)]


async def test_a_call_whose_answer_never_started_is_refunded_once(limits: LedgerLimits) -> None:
    acct = account()
    admission = await admit(limits, acct, 3)
    limits.refund(admission)  # the handler's error answer says what remains after the refund
    assert admission.refunded and admission.headers[CREDITS_REMAINING] == "10"
    limits.settle(admission, False, 0, 0)  # then settlement, which refunds nothing twice
    assert admission.headers[CREDITS_REMAINING] == "10"
    assert (await admit(limits, acct, 10)).headers[CREDITS_REMAINING] == "0"


async def test_the_credits_429_once_the_day_is_spent(limits: LedgerLimits) -> None:
    acct = account()
    await admit(limits, acct, 5)
    await admit(limits, acct, 5)
    with pytest.raises(RateLimited) as info:
        await admit(limits, acct, 1)
    error = info.value
    assert error.limit == "daily_credits" and error.headers[CREDITS_REMAINING] == "0"
    assert error.headers["Retry-After"] == str(12 * 3600)
    assert [row[2] for row in limits.drain()] == [10]


async def test_the_per_minute_429_and_the_screens_view_of_it(limits: LedgerLimits, clock: ManualClock) -> None:
    acct = account(ONE_A_MINUTE)
    assert limits.rpm_refusal(acct) is None
    bucket = await limits.count_request(acct)
    assert bucket.allowed
    with pytest.raises(RateLimited) as info:
        await limits.count_request(acct)
    error = info.value
    assert error.limit == "requests_per_minute" and error.headers[RATELIMIT_REMAINING_REQUESTS] == "0"
    assert error.headers[CREDITS_REMAINING] == "100"  # counting a call reserves nothing
    refused = limits.rpm_refusal(acct)
    assert refused is not None
    refusing, remaining, wall = refused
    assert (refusing.allowed, remaining, wall) == (False, 100, NOON)
    assert limits.rpm_refusal(acct) is not None  # looking takes nothing
    clock.advance(61)  # the minute is over on the clock the limits were given
    assert limits.rpm_refusal(acct) is None


async def test_peek_headers_reserve_nothing(limits: LedgerLimits) -> None:
    acct = account()
    headers = limits.peek_headers(acct)
    assert tuple(headers) == METERING and headers[CREDITS_REMAINING] == "10"
    assert limits.drain() == []


async def test_a_cheaper_fallback_is_charged_its_own_cost(limits: LedgerLimits) -> None:
    acct = account()
    admission = await admit(limits, acct, 3)
    limits.charge_served(admission, 1)
    assert admission.cost == 1 and admission.headers[CREDITS_REMAINING] == "9"
    limits.settle(admission, True, 0, 0)
    assert [row[2:4] for row in limits.drain()] == [(1, 1)]


async def test_alone_there_is_nothing_to_reconcile_or_give_back(clock: ManualClock) -> None:
    limits = LocalLimits(clock)
    await admit(limits, account(), 3)
    assert not limits.unsettled
    assert await limits.reconcile() == 0
    assert await limits.give_back() == 0


async def test_shared_leases_go_back_at_stop(shared: SharedLimits) -> None:
    acct = account(Plan("big", credits_per_day=1000, requests_per_minute=1000, max_keys=1))
    await admit(shared, acct, 5)
    held = shared.ledger.remaining(acct.id, DAY)
    assert held > 0  # a lease covers more than the one call
    assert await shared.give_back() == held
    assert await shared.sync.credits_left(acct.id, DAY) == 1000 - 5


async def test_shared_calls_answer_from_memory_while_the_lease_and_slots_last(
    shared: SharedLimits, clock: ManualClock, trips: Trips
) -> None:
    acct = account(Plan("big", credits_per_day=1000, requests_per_minute=1000, max_keys=1))
    await admit(shared, acct, 1)  # a lease of 8 calls, and one slot: the account's pace is not known yet
    first = len(trips.made)
    assert set(trips.made) == {"take_credits", "take_slots"}
    clock.advance(0.01)
    await admit(shared, acct, 1)  # a batch of slots for the pace the limits' clock measured
    assert trips.made[first:] == ["take_slots"]
    for _ in range(5):
        clock.advance(0.01)
        await admit(shared, acct, 1)
    assert len(trips.made) == first + 1  # from the lease and the batch in hand


async def test_the_shared_circuit_runs_on_the_injected_clock(shared: SharedLimits, redis_server: RedisServer,
                                                             clock: ManualClock, trips: Trips) -> None:
    """Redis away: a fail-closed plan's call beyond the lease is a 503, and Redis is not asked again until
    the circuit's pause is over on the limits' clock; then the outage is squared and calls are admitted."""
    acct = account(Plan("big", credits_per_day=1000, requests_per_minute=1000, max_keys=1))
    shared.track(acct)
    bucket = await shared.count_request(acct)
    redis_server.kill()
    with pytest.raises(ServiceUnavailable):
        await shared.admit(acct, 5, bucket)  # no lease in hand, and the trip for one fails
    assert shared.unsettled  # the lost trip may have taken credits on Redis
    redis_server.start()
    asked = len(trips.made) + len(trips.failed)
    with pytest.raises(ServiceUnavailable):
        await shared.admit(acct, 5, bucket)
    assert (await shared.count_request(acct)).allowed  # the per-minute limit falls back to this worker's share
    assert len(trips.made) + len(trips.failed) == asked  # the circuit is open: Redis was not asked
    clock.advance(1.0)
    admission = await shared.admit(acct, 5, bucket)
    assert admission.cost == 5 and not shared.unsettled
