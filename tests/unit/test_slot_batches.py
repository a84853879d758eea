"""Per-minute slots shared through a real redis-server: batches sized by the calls waiting, and given back unused.

Workers here are `SharedLimits` on a manual clock, each with its own Redis connection, as in
test_limits.py. Redis keeps its own clock for the schedule, so a probe of what is left allows
for the slots that refill while a test runs (one every 60/rpm seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from clexproxy.auth import Account
from clexproxy.catalog import Plan
from clexproxy.clock import ManualClock
from clexproxy.errors import RateLimited
from clexproxy.limits.shared import SharedLimits
from clexproxy.limits.slots import MIN_SLOT_VALIDITY
from clexproxy.sync.redis import RedisSync
from tests.redis_server import RedisServer

NOON = 1_795_608_000.0  # 2026-11-25 12:00:00 UTC
ROOMY = Plan("roomy", credits_per_day=100_000, requests_per_minute=6_400, max_keys=1)  # room to spare: 1/64 of it
TEN = Plan("ten", credits_per_day=100_000, requests_per_minute=10, max_keys=1)


async def nothing_spent(account_id: int, day: int) -> int:
    return 0


Worker = Callable[[int], SharedLimits]


@pytest.fixture
async def worker(redis_server: RedisServer) -> AsyncIterator[Worker]:
    """A factory of workers of one host (`workers` of them), each on its own manual clock and Redis connection."""
    syncs: list[RedisSync] = []

    def make(workers: int) -> SharedLimits:
        sync = RedisSync(redis_server.url)
        syncs.append(sync)
        return SharedLimits(ManualClock(NOON), sync, workers, nothing_spent)

    try:
        yield make
    finally:
        for sync in syncs:
            await sync.close()


async def counted(limits: SharedLimits, account: Account) -> bool:
    try:
        await limits.count_request(account)
        return True
    except RateLimited:
        return False


async def room(sync: RedisSync, account: Account) -> int:
    """Every slot Redis has free now: a probe that takes them all (the account is not used after it)."""
    return (await sync.take_slots(account.id, account.plan.requests_per_minute, 1_000_000)).granted


async def test_calls_at_once_take_the_slots_they_need_and_no_more(worker: Worker) -> None:
    first, second = worker(2), worker(2)
    acct = Account(1, "acct-1", TEN)
    clock = first.clock
    assert isinstance(clock, ManualClock)
    assert all(await asyncio.gather(*(counted(first, acct) for _ in range(4))))  # one trip for 1, then for 3
    for _ in range(3):  # a pace of 100 calls a second: no room to spare, so no slot for calls to come
        clock.advance(0.01)
        assert await counted(first, acct)
    # The other worker gets every slot the first did not use: 10 - 7, and none is stranded.
    answered = [await counted(second, acct) for _ in range(10)]
    assert 3 <= answered.count(True) <= 4  # one more may refill (every 6 s) while the test runs
    assert answered[:3] == [True] * 3 and not answered[-1]


async def paced(limits: SharedLimits, account: Account) -> None:
    """Two calls 10 ms apart: a pace of 100 calls a second, for which the second trip takes half a second's slots."""
    clock = limits.clock
    assert isinstance(clock, ManualClock)
    assert await counted(limits, account)
    clock.advance(0.01)
    assert await counted(limits, account)


async def test_a_crowd_on_two_workers_gets_the_plans_rpm_exactly(worker: Worker) -> None:
    """Waves of calls at once on two workers: each trip asks for the calls waiting then, and no slot is left over."""
    workers = [worker(2), worker(2)]
    acct = Account(7, "acct-7", TEN)

    async def wave(size: int) -> list[bool]:
        return await asyncio.gather(*(counted(workers[n % 2], acct) for n in range(size)))

    answered = [*await wave(3), *await wave(25), *await wave(25)]
    assert 10 <= answered.count(True) <= 11  # one more may refill while the test runs
    assert all(slots.allowance == 0 for w in workers for slots in w.slots._slots.values())


async def test_a_call_that_leaves_mid_trip_leaves_its_slot_to_the_next(worker: Worker) -> None:
    limits = worker(1)
    acct = Account(6, "acct-6", TEN)
    call = asyncio.ensure_future(limits.count_request(acct))
    await asyncio.sleep(0)  # its trip to Redis is under way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.gather(*limits.slots._fetching.values())
    assert limits.slots._slots[acct.id].allowance == 1  # the trip landed: its slot is here, not lost
    assert await counted(limits, acct)
    other = worker(1)
    answered = [await counted(other, acct) for _ in range(10)]
    assert 9 <= answered.count(True) <= 10  # one more may refill while the test runs


async def test_a_batch_beyond_the_calls_waiting_comes_only_from_room_to_spare(worker: Worker) -> None:
    limits = worker(1)
    acct = Account(2, "acct-2", ROOMY)
    await paced(limits, acct)
    assert limits.slots._slots[acct.id].allowance == 50  # 51 taken, one for the call; (6,400 - 1) // 64 allowed
    probe = worker(1)
    assert 6_400 - 52 <= await room(probe.sync, acct) <= 6_400 - 52 + 10  # 107 refill a second


@pytest.mark.parametrize("noticed_by", ["timer", "next call"])
async def test_what_a_batch_leaves_unused_goes_back_when_it_expires(worker: Worker, noticed_by: str) -> None:
    limits = worker(1)
    acct = Account(3, "acct-3", ROOMY)
    await paced(limits, acct)
    clock = limits.clock
    assert isinstance(clock, ManualClock)
    clock.advance(MIN_SLOT_VALIDITY)  # the batch's time is up on the limits' clock
    if noticed_by == "timer":
        await asyncio.sleep(MIN_SLOT_VALIDITY + 0.1)  # and on the loop's: its timer gives it back, no call needed
        assert limits.slots._slots[acct.id].allowance == 0
        used = 2
    else:
        assert await counted(limits, acct)  # before the loop's timer: this call finds the batch expired
        used = 4  # and takes a slot of its own trip, with one more for a pace of 2 a second
    await asyncio.gather(*limits.slots._returning)
    probe = worker(1)
    assert 6_400 - used <= await room(probe.sync, acct) <= 6_400


async def test_slots_in_hand_go_back_when_a_worker_stops(worker: Worker) -> None:
    limits = worker(1)
    acct = Account(4, "acct-4", ROOMY)
    await paced(limits, acct)
    assert await limits.give_back() == 0  # credits: none were leased here
    assert limits.slots._slots[acct.id].allowance == 0
    probe = worker(1)
    assert 6_400 - 2 <= await room(probe.sync, acct) <= 6_400


async def test_a_return_counts_once_and_never_frees_more_than_was_taken(redis_server: RedisServer) -> None:
    sync = RedisSync(redis_server.url)
    try:
        assert (await sync.take_slots(30, 60, 30)).granted == 30
        assert await sync.give_slots(30, 60, 10, "back-1") == 10
        assert await sync.give_slots(30, 60, 10, "back-1") == 0  # the same return again: counted once
        back = await sync.give_slots(30, 60, 100, "back-2")  # more than is out: the schedule stops at now
        assert 19 <= back <= 20  # the 20 still out, less any that refilled (one a second)
        assert await sync.give_slots(30, 60, 5, "back-3") == 0  # the whole burst is free: nothing to move
        assert (await sync.take_slots(30, 60, 100)).granted == 60  # the burst, never more
    finally:
        await sync.close()


async def test_slots_for_calls_to_come_are_at_most_a_share_of_the_room_past_the_calls_waiting(
        redis_server: RedisServer) -> None:
    sync = RedisSync(redis_server.url)
    try:
        first = await sync.take_slots(31, 40, 1, extra=100, divisor=4)
        assert (first.granted, first.left) == (10, 30)  # 1, and (40 - 1) // 4 for calls to come
        second = await sync.take_slots(31, 40, 25, extra=100, divisor=4)
        assert second.granted == 26  # the calls waiting come first: 25, and (30 - 25) // 4
        last = await sync.take_slots(31, 40, 10, extra=100, divisor=4)
        assert last.granted in (4, 5)  # what is left (one may have refilled), nothing to spare
    finally:
        await sync.close()
