"""A key's own limits in the limits and the directory: the daily cap as a second budget, both or neither.

LocalLimits on a manual clock, and SharedLimits as two workers on a real redis-server (the cap is
as exact across workers as an account's budget). Calls are admitted and settled as the proxy
handler does (`count_request`, `admit`, `settle`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from clexproxy.auth import KEY_BUDGET_BASE, Account, Directory, key_budget
from clexproxy.catalog import DEFAULT_PLANS, default_catalog
from clexproxy.clock import ManualClock, utc_day
from clexproxy.config import StoreSettings
from clexproxy.errors import AuthenticationFailed, RateLimited
from clexproxy.limits.local import LocalLimits
from clexproxy.limits.shared import SharedLimits
from clexproxy.store.base import AccountRow, KeyRow, KeyUsageRow, UsageRow
from clexproxy.store.sqlite import SQLiteStore, ThreadedSQLiteStore
from clexproxy.sync.redis import RedisSync
from clexproxy.sync.store import StoreSync
from tests.redis_server import RedisServer

NOON = 1_795_608_000.0  # 2026-11-25 12:00:00 UTC
DAY = utc_day(NOON)
REMAINING, LIMIT = "X-Clex-Credits-Remaining", "X-Clex-Credits-Limit"


def acme() -> Account:
    return Account(1, "acme", DEFAULT_PLANS["free"])  # 100 credits a day


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


async def test_a_capped_call_reserves_from_both_budgets_and_the_headers_show_the_tighter(clock: ManualClock) -> None:
    limits = LocalLimits(clock)
    account = acme()
    budget = key_budget(7, 12, account)
    assert budget.id == KEY_BUDGET_BASE + 7 and budget.plan.credits_per_day == 12
    bucket = await limits.count_request(account)
    admission = await limits.admit(account, 5, bucket, 7, "m", budget)
    assert (admission.headers[REMAINING], admission.headers[LIMIT]) == ("7", "12")  # the key's 7 < the account's 95
    assert limits.ledger.remaining(account.id, DAY) == 95
    limits.settle(admission, True, 10, 20)
    second = await limits.admit(account, 5, bucket, 7, "m", budget)
    limits.settle(second, True, 1, 2)
    with pytest.raises(RateLimited) as refused:
        await limits.admit(account, 5, bucket, 7, "m", budget)  # 2 left of the cap
    assert refused.value.limit == "daily_credits" and "cap (12/day)" in refused.value.message
    assert (refused.value.headers[REMAINING], refused.value.headers[LIMIT]) == ("2", "12")
    assert limits.ledger.remaining(account.id, DAY) == 90  # the refused call took nothing from the account
    # Another key of the account, without a cap, spends the account's budget as before.
    other = await limits.admit(account, 5, bucket, 8, "m")
    assert (other.headers[REMAINING], other.headers[LIMIT]) == ("85", "100")
    # Peeking (a 400 after authentication) reports the tighter budget too, the account's for a key without one.
    assert limits.peek_headers(account, budget)[REMAINING] == "2"
    assert limits.peek_headers(account)[REMAINING] == "85"


async def test_the_account_budget_refusing_gives_the_key_budget_back(clock: ManualClock) -> None:
    limits = LocalLimits(clock)
    account = acme()
    budget = key_budget(7, 100, account)
    limits.track(account, spent_today=98)
    bucket = await limits.count_request(account)
    with pytest.raises(RateLimited) as refused:
        await limits.admit(account, 5, bucket, 7, "m", budget)
    assert "free plan" in refused.value.message
    assert limits.ledger.remaining(budget.id, DAY) == 100  # neither budget keeps the reservation
    assert limits.ledger.remaining(account.id, DAY) == 2


async def test_a_refund_and_a_cheaper_fallback_move_both_budgets(clock: ManualClock) -> None:
    limits = LocalLimits(clock)
    account = acme()
    budget = key_budget(7, 20, account)
    bucket = await limits.count_request(account)
    admission = await limits.admit(account, 5, bucket, 7, "premium", budget)
    limits.charge_served(admission, 1)  # the fallback costs 1
    assert (limits.ledger.remaining(account.id, DAY), limits.ledger.remaining(budget.id, DAY)) == (99, 19)
    assert (admission.headers[REMAINING], admission.headers[LIMIT]) == ("19", "20")
    failed = await limits.admit(account, 5, bucket, 7, "premium", budget)
    limits.settle(failed, False, 0, 0)  # the upstream failed before the answer: refunded
    assert (limits.ledger.remaining(account.id, DAY), limits.ledger.remaining(budget.id, DAY)) == (99, 19)
    assert failed.refunded and failed.headers[REMAINING] == "19"


async def test_usage_detail_counts_settled_calls_by_key_and_model_and_drain_leaves_budgets_out(
    clock: ManualClock,
) -> None:
    limits = LocalLimits(clock)
    account = acme()
    budget = key_budget(7, 50, account)
    bucket = await limits.count_request(account)
    calls = ((7, "a", 2, budget), (7, "a", 2, budget), (8, "b", 1, None), (0, "a", 3, None))
    for key_id, model, cost, budget_of in calls:
        admission = await limits.admit(account, cost, bucket, key_id, model, budget_of)
        limits.settle(admission, True, 4, 6)
    refunded = await limits.admit(account, 5, bucket, 7, "a", budget)
    limits.settle(refunded, False, 0, 0)  # a refunded call adds nothing
    fallback = await limits.admit(account, 5, bucket, 8, "premium", None)
    fallback.model = "cheap"  # what the handler sets when the fallback answered
    limits.charge_served(fallback, 1)
    limits.settle(fallback, True, 1, 1)
    rows = limits.drain()
    assert [row[0] for row in rows] == [account.id]  # the key's budget is not account usage
    assert rows[0][2:4] == (2 + 2 + 1 + 3 + 1, 5)
    assert sorted(limits.drain_detail()) == sorted([
        KeyUsageRow(1, 7, "a", DAY, 4, 2, 8, 12),
        KeyUsageRow(1, 8, "b", DAY, 1, 1, 4, 6),
        KeyUsageRow(1, 0, "a", DAY, 3, 1, 4, 6),
        KeyUsageRow(1, 8, "cheap", DAY, 1, 1, 1, 1),
    ])
    assert limits.drain_detail() == []


def test_the_directory_keeps_policies_only_for_limited_keys() -> None:
    catalog = default_catalog()
    directory = Directory(catalog)
    plain = KeyRow(1, 1, "acme", b"a" * 32, "h1", NOON, None)
    capped = replace(plain, id=2, key_hash=b"b" * 32, name="ci", daily_cap=10, models=("x", "y"),
                     expires_at=NOON + 60)
    directory.apply([AccountRow(1, "acme", "free", NOON)], [plain, capped])
    assert set(directory.policies) == {2} and directory.names == {2: "ci"}
    policy = directory.policies[2]
    assert policy.models == frozenset({"x", "y"}) and policy.budget is not None
    assert policy.budget.plan.credits_per_day == 10 and policy.budget.plan.requests_per_minute == 40
    assert policy.expired(NOON + 59.9) is None
    expired = policy.expired(NOON + 60)
    assert isinstance(expired, AuthenticationFailed)
    assert expired.message == "This API key expired at 2026-11-25T12:01:00Z."
    # A plan change derives the key's budget plan again; a revoke drops the policy and the name.
    directory.apply([AccountRow(1, "acme", "pro", NOON)], [])
    budget = directory.policies[2].budget
    assert budget is not None and budget.plan.requests_per_minute == DEFAULT_PLANS["pro"].requests_per_minute
    directory.apply([], [replace(capped, revoked_at=NOON)])
    assert directory.policies == {} and directory.names == {}


@pytest.fixture
async def workers(redis_server: RedisServer, clock: ManualClock) -> AsyncIterator[list[SharedLimits]]:
    syncs = [RedisSync(redis_server.url) for _ in range(2)]
    asked: list[int] = []

    async def stored(budget_id: int, day: int) -> int:
        asked.append(budget_id)
        return 3 if budget_id >= KEY_BUDGET_BASE else 0  # the store says the key spent 3 today already

    limits = [SharedLimits(clock, sync, 2, stored) for sync in syncs]
    try:
        yield limits
    finally:
        for sync in syncs:
            await sync.close()
    assert KEY_BUDGET_BASE + 7 in asked  # the key's budget was seeded from the store at its day's first lease


async def test_a_cap_holds_exactly_across_two_shared_workers(workers: list[SharedLimits]) -> None:
    account = acme()
    budget = key_budget(7, 23, account)  # 23 - 3 already spent = 20 credits today

    async def one(worker: SharedLimits) -> int:
        bucket = await worker.count_request(account)
        try:
            admission = await worker.admit(account, 1, bucket, 7, "m", budget)
        except RateLimited as refused:
            assert refused.limit == "daily_credits"
            return 429
        worker.settle(admission, True, 0, 0)
        return 200

    statuses = await asyncio.gather(*(one(workers[i % 2]) for i in range(30)))
    assert statuses.count(200) == 20 and statuses.count(429) == 10
    # The account's budget was spent exactly as much: 20 of its 100.
    day = DAY
    left = await workers[0].sync.credits_left(account.id, day) or 0
    held = sum(worker.ledger.remaining(account.id, day) for worker in workers)
    assert left + held == 80
    usage = [row for worker in workers for row in worker.drain()]
    assert {row[0] for row in usage} == {account.id} and sum(row[2] for row in usage) == 20


async def test_a_shared_refund_goes_back_to_both_budgets(workers: list[SharedLimits]) -> None:
    account = acme()
    budget = key_budget(7, 8, account)  # 5 left after the stored 3
    worker = workers[0]
    bucket = await worker.count_request(account)
    admission = await worker.admit(account, 5, bucket, 7, "m", budget)
    assert admission.headers[REMAINING] == "0" and admission.headers[LIMIT] == "8"
    with pytest.raises(RateLimited):
        await workers[1].admit(account, 5, bucket, 7, "m", budget)
    worker.settle(admission, False, 0, 0)  # the upstream failed: refunded
    assert admission.headers[REMAINING] == "5"
    again = await worker.admit(account, 5, bucket, 7, "m", budget)
    worker.settle(again, True, 0, 0)
    assert worker.drain_detail() == [KeyUsageRow(1, 7, "m", DAY, 5, 1, 0, 0)]


class FailingOnce(ThreadedSQLiteStore):
    """The real SQLite store, whose first usage write fails (a locked or unreachable database)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(SQLiteStore.in_data_dir(data_dir))
        self.failures = 1

    async def add_usage(self, deltas: Iterable[UsageRow], detail: Iterable[KeyUsageRow] = ()) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("the database is locked")
        await super().add_usage(deltas, detail)


async def test_a_failed_write_keeps_the_detail_rows_for_the_next_try(tmp_path: Path, clock: ManualClock) -> None:
    store = FailingOnce(tmp_path)
    try:
        row, _ = await store.create_key("acme", "free", {"free": 1})
        limits = LocalLimits(clock)
        directory = Directory(default_catalog())
        sync = StoreSync(StoreSettings(), store, directory, limits)
        await sync.load()
        account = directory.accounts[row.account_id]
        admission = await limits.admit(account, 2, await limits.count_request(account), row.id, "m")
        limits.settle(admission, True, 3, 4)
        with pytest.raises(OSError):
            await sync.flush_usage()
        await sync.flush_usage()
        assert await store.key_usage("acme") == [KeyUsageRow(account.id, row.id, "m", DAY, 2, 1, 3, 4)]
        assert await store.key_credits_spent(DAY) == {row.id: 2}
        assert (await store.credits_spent(DAY))[account.id] == 2
    finally:
        await store.close()
