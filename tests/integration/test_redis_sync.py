"""Credit leases and per-minute slots on a real redis-server (`RedisSync`), and key changes announced there.

The property that matters is the total: however many workers ask, at once or again after a
lost reply, Redis never hands out more credits than the day's budget nor more slots than the
plan's rate allows. A key change one worker announces is applied by another's `StoreSync` at
once, not at its next poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clexproxy.auth import Directory
from clexproxy.catalog import default_catalog
from clexproxy.clock import ManualClock
from clexproxy.config import StoreSettings
from clexproxy.limits.local import LocalLimits
from clexproxy.store.sqlite import SQLiteStore, ThreadedSQLiteStore
from clexproxy.sync.redis import DAY_TTL_SECONDS, RedisSync
from clexproxy.sync.store import StoreSync
from tests.redis_server import RedisServer

DAY = 20_417


@pytest.fixture
async def sync(redis_server: RedisServer) -> AsyncIterator[RedisSync]:
    client = RedisSync(redis_server.url)
    try:
        yield client
    finally:
        await client.close()


async def test_first_lease_of_the_day_starts_from_the_stores_spend(sync: RedisSync) -> None:
    grant = await sync.take_credits(1, DAY, limit=1000, spent=200, want=500, deficit=5, unit=5, lease_id="a")
    assert (grant.granted, grant.left) == (100, 700)  # 1/8 of the 800 left, not the 500 wanted
    again = await sync.take_credits(1, DAY, limit=1000, spent=999, want=10, deficit=5, unit=5, lease_id="b")
    assert (again.granted, again.left) == (10, 690)  # the day exists now: the store's figure is ignored
    assert await sync.credits_left(1, DAY) == 690


async def test_slices_shrink_to_the_deficit_near_the_end(sync: RedisSync) -> None:
    grants = []
    for i in range(40):
        grant = await sync.take_credits(2, DAY, limit=100, spent=0, want=100, deficit=5, unit=5, lease_id=f"l{i}")
        grants.append(grant.granted)
        if grant.granted == 0:
            break
    assert sum(grants) == 100
    # 100/8 rounded down to whole calls, ..., one call's cost, then nothing: no credit is stranded
    assert grants[0] == 10 and grants[-2] == 5 and grants[-1] == 0 and all(g % 5 == 0 for g in grants)


async def test_a_deficit_larger_than_what_is_left_gets_nothing(sync: RedisSync) -> None:
    await sync.take_credits(3, DAY, limit=12, spent=0, want=10, deficit=10, unit=10, lease_id="x")
    grant = await sync.take_credits(3, DAY, limit=12, spent=0, want=5, deficit=5, unit=5, lease_id="y")
    assert (grant.granted, grant.left) == (0, 2)  # 2 left cannot pay a 5-credit call: they stay in Redis


async def test_a_retried_lease_is_not_granted_twice(sync: RedisSync) -> None:
    first = await sync.take_credits(4, DAY, limit=800, spent=0, want=50, deficit=1, unit=1, lease_id="same")
    second = await sync.take_credits(4, DAY, limit=800, spent=0, want=50, deficit=1, unit=1, lease_id="same")
    assert first.granted == second.granted == 50
    assert await sync.credits_left(4, DAY) == 750


async def test_a_lease_whose_reply_was_lost_is_recovered_by_its_id(sync: RedisSync) -> None:
    taken = await sync.take_credits(9, DAY, limit=1000, spent=0, want=50, deficit=5, unit=5, lease_id="lost")
    assert taken.granted == 50
    assert await sync.recover_credits(9, DAY, "lost") == 50  # the same grant, not a second one
    assert await sync.recover_credits(9, DAY, "never-ran") == 0
    # The original of a recovered id, arriving late, takes nothing: the recovery said 0.
    late = await sync.take_credits(9, DAY, limit=1000, spent=0, want=50, deficit=5, unit=5, lease_id="never-ran")
    assert late.granted == 0
    assert await sync.credits_left(9, DAY) == 950


async def test_recovering_a_lease_of_a_day_redis_does_not_hold_creates_nothing(sync: RedisSync) -> None:
    assert await sync.recover_credits(10, DAY, "gone") == 0
    assert await sync.credits_left(10, DAY) is None


async def test_a_lease_must_cover_at_least_one_credit(sync: RedisSync) -> None:
    with pytest.raises(ValueError, match="at least one credit"):
        await sync.take_credits(11, DAY, limit=100, spent=0, want=10, deficit=0, unit=1, lease_id="empty")


async def test_a_plan_change_moves_what_is_left(sync: RedisSync) -> None:
    await sync.take_credits(5, DAY, limit=100, spent=0, want=40, deficit=1, unit=1, lease_id="1")  # 12 of 100
    grant = await sync.take_credits(5, DAY, limit=500, spent=0, want=1, deficit=1, unit=1, lease_id="2")
    assert grant.left == 500 - 12 - 1
    grant = await sync.take_credits(5, DAY, limit=20, spent=0, want=1, deficit=1, unit=1, lease_id="3")
    assert (grant.granted, grant.left) == (1, 20 - 12 - 1 - 1)


async def test_given_back_credits_can_be_leased_again(sync: RedisSync) -> None:
    grant = await sync.take_credits(6, DAY, limit=80, spent=0, want=10, deficit=1, unit=1, lease_id="g")
    assert await sync.give_credits(6, DAY, grant.granted, "r1") == 80
    assert await sync.give_credits(6, DAY, grant.granted, "r1") == 80  # a retried return counts once
    assert await sync.give_credits(6, DAY + 1, 5, "r2") is None  # a day Redis does not hold is not created
    assert await sync.credits_left(6, DAY + 1) is None


async def test_the_days_budget_expires_by_itself(sync: RedisSync, redis_server: RedisServer) -> None:
    await sync.take_credits(7, DAY, limit=80, spent=0, want=10, deficit=1, unit=1, lease_id="t")
    ttl = await sync._redis.ttl(sync._budget_key(7, DAY))
    assert DAY_TTL_SECONDS - 60 < ttl <= DAY_TTL_SECONDS


async def test_many_workers_never_lease_more_than_the_budget(redis_server: RedisServer) -> None:
    workers = [RedisSync(redis_server.url) for _ in range(8)]
    try:
        async def worker(sync: RedisSync, n: int) -> int:
            total = 0
            for i in range(60):
                grant = await sync.take_credits(8, DAY, limit=1000, spent=37, want=25, deficit=3, unit=3,
                                                lease_id=f"{n}-{i}")
                total += grant.granted
            return total

        totals = await asyncio.gather(*(worker(sync, n) for n, sync in enumerate(workers)))
        assert sum(totals) == 1000 - 37  # every credit leased once: none twice, none stranded (963 is 321 calls)
        assert await workers[0].credits_left(8, DAY) == 0
    finally:
        for sync in workers:
            await sync.close()


async def test_leases_survive_a_redis_restart(sync: RedisSync, redis_server: RedisServer) -> None:
    await sync.take_credits(9, DAY, limit=100, spent=0, want=30, deficit=1, unit=1, lease_id="before")
    redis_server.kill()  # a crash: with appendfsync always, every acknowledged lease is on disk
    redis_server.start()
    assert await sync.credits_left(9, DAY) == 100 - 12
    again = await sync.take_credits(9, DAY, limit=100, spent=0, want=30, deficit=1, unit=1, lease_id="before")
    assert again.granted == 12  # the lease id is remembered across the restart too


async def test_slots_follow_the_plans_rate(sync: RedisSync) -> None:
    grant = await sync.take_slots(10, 60, 45)
    assert (grant.granted, grant.left) == (45, 15)
    grant = await sync.take_slots(10, 60, 45)
    assert grant.granted <= 15 + 1  # what was left, plus at most one refilled while the test ran
    refused = await sync.take_slots(10, 60, 1)
    if refused.granted == 0:
        assert 0 < refused.retry_after <= 1.0  # one slot frees every second at 60 per minute


async def test_a_plan_without_requests_gets_no_slots(sync: RedisSync) -> None:
    grant = await sync.take_slots(11, 0, 1)
    assert grant.granted == 0 and grant.retry_after == 86_400


async def test_many_workers_share_one_rate(redis_server: RedisServer) -> None:
    workers = [RedisSync(redis_server.url) for _ in range(8)]
    try:
        started = time.monotonic()

        async def worker(sync: RedisSync) -> int:
            total = 0
            for _ in range(40):
                total += (await sync.take_slots(12, 120, 3)).granted
            return total

        granted = sum(await asyncio.gather(*(worker(sync) for sync in workers)))
        elapsed = time.monotonic() - started
        assert 120 <= granted <= 120 + int(120 * elapsed / 60) + 1  # the burst, plus what refilled meanwhile
    finally:
        for sync in workers:
            await sync.close()


async def test_a_key_change_announced_by_one_worker_is_applied_by_another_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two workers' `StoreSync`s on one key store, polling once an hour: the announcement is what applies it."""
    never = StoreSettings(poll_seconds=3600, flush_seconds=3600)
    workers = []
    for _ in range(2):
        store = ThreadedSQLiteStore(SQLiteStore.in_data_dir(tmp_path))
        directory = Directory(default_catalog())
        redis = RedisSync(redis_server.url)
        workers.append((StoreSync(never, store, directory, LocalLimits(ManualClock(1e9)), redis),
                        store, directory, redis))
    for sync, *_ in workers:
        await sync.load()
        sync.start()
    (writer, writer_store, _, _), (_, _, reader_directory, _) = workers
    try:
        row, key = await writer_store.create_key("announced", "pro", {"pro": 5})
        await writer.sync_store(force=True)  # as the admin API does after its own write
        for _ in range(500):  # bounded wait; announced again until the reader's subscription is up
            await writer.announce_key_change()
            if reader_directory.keys.lookup(key) is not None:
                break
            await asyncio.sleep(0.01)
        assert reader_directory.keys.lookup(key) is not None
        await writer_store.revoke_key(row.id)
        for _ in range(500):
            await writer.announce_key_change()
            if reader_directory.keys.lookup(key) is None:
                break
            await asyncio.sleep(0.01)
        assert reader_directory.keys.lookup(key) is None
    finally:
        for sync, store, _, redis in workers:
            await sync.stop()
            await redis.close()
            await store.close()
