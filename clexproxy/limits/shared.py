"""A worker's share of limits that hold across processes and hosts: leased credits and batched slots.

With several workers (`serve --workers N`, several hosts) each account's daily credits and
per-minute rate are one budget, kept in Redis (`RedisSync`). This worker spends from what it
holds in memory and goes to Redis only when that runs out, so `count_request` and `admit`
suspend only then:

* credits: a lease sits in this worker's `CreditLedger` (`auto_lease=False`); `admit` spends
  it, and a call the lease cannot cover waits for one refill, shared by every call of the
  account that needs it at that moment;
* slots: batches of per-minute slots (`limits.slots.SlotBatches`), sized by the calls waiting
  for them and given back unused; a refusal is remembered until its retry time, so a flood is
  answered from memory (and by the screen, `rpm_refusal`).

When Redis cannot be reached, credits are fail-closed (a call beyond the lease in hand gets a
503) and the per-minute limit falls back to its 1/N share on this worker's own bucket, N being
the worker count; a circuit keeps calls from waiting on a Redis that just failed. A lease trip
that failed may still have taken its credits on Redis (the reply is what was lost): its id is
kept, and Redis is asked what it took once it answers again (`reconcile`).

Every reading of time comes from the injected `Clock`: monotonic for slots, leases and the
circuit, wall time for the UTC day.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from clexproxy.auth import Account
from clexproxy.clock import Clock, utc_day
from clexproxy.errors import ServiceUnavailable
from clexproxy.fastpath.limits import BucketResult, CreditLedger
from clexproxy.limits.base import Admission, LedgerLimits, RpmRefusal
from clexproxy.limits.headers import metering_headers
from clexproxy.limits.slots import Circuit, SlotBatches
from clexproxy.sync.redis import SLICE_DIVISOR, RedisError, RedisSync

log = logging.getLogger("clexproxy.shared")


class LeaseObserver(Protocol):
    """What is told about each credit lease Redis grants (`Metrics` is one)."""

    def lease_granted(self, plan: str) -> None: ...


class _Unobserved:
    def lease_granted(self, plan: str) -> None:
        return None

LEASE_CALLS = 8  # a first lease asks for this many calls' worth (Redis caps any lease at 1/(4N) of what is left)
LEASE_MAX_CALLS = 65_536
LEASE_TARGET_SECONDS = 1.0  # a lease spent faster than this asks for twice as much next time; much slower, half
SPENT_OUT_SECONDS = 1.0  # a spent budget is believed this long before Redis is asked again


class SharedLimits(LedgerLimits):
    """`Limits` for one of several workers: credits leased from Redis, per-minute slots taken in batches."""

    def __init__(self, clock: Clock, sync: RedisSync, workers: int,
                 stored_spend: Callable[[int, int], Awaitable[int]], observer: LeaseObserver | None = None) -> None:
        super().__init__(clock, CreditLedger(auto_lease=False))  # credits come only from leases
        self.sync = sync
        self.observer: LeaseObserver = observer or _Unobserved()
        self.workers = max(1, workers)
        # A lease is at most 1/(4N) of what is left (N: this host's workers), so the leases of every
        # worker together hold a small part of a budget, and a small budget is leased one call at a
        # time: no worker sits on credits that a call on another worker could have spent.
        self._divisor = max(SLICE_DIVISOR, 4 * self.workers)
        self._stored_spend = stored_spend  # (account, day) -> credits the store holds as spent
        self._leasing: dict[int, asyncio.Future[bool]] = {}
        self._lease_calls: dict[int, tuple[int, float]] = {}  # account -> (calls the next lease asks for, last lease)
        self._leased: set[tuple[int, int]] = set()
        self._left: dict[int, int] = {}  # account -> credits Redis held after our last lease
        # (account, day) -> (credits Redis held, until when we believe it): a budget found spent is
        # not asked about again for every call of a flood.
        self._spent_out: dict[tuple[int, int], tuple[int, float]] = {}
        self.circuit = Circuit(clock)
        self.slots = SlotBatches(clock, sync, self.workers, self.circuit)
        # Fail-open plans' spending while Redis was away: (account, day, credits, debit id), charged
        # to Redis in order once it answers again (`reconcile`), and the per-day totals it is capped by.
        self._owed: list[tuple[int, int, int, str]] = []
        self._spent_open: dict[tuple[int, int], int] = {}
        # Leases whose trip failed, as (account, day, lease id): each may have been granted on Redis.
        self._unconfirmed: list[tuple[int, int, str]] = []
        self._reconciling = asyncio.Lock()

    # credits ------------------------------------------------------------------------------------

    def credits_left(self, account_id: int, day: int, unknown: int = 0) -> int:
        """This worker's lease plus what Redis held at its last lease (`unknown` before any): the headers' figure.

        Other workers spend meanwhile, so across workers it is an estimate; the budget itself is exact.
        """
        return self.ledger.remaining(account_id, day) + self._left.get(account_id, unknown)

    async def admit(self, account: Account, cost: int, bucket: BucketResult, key_id: int = 0, model: str = "",
                    budget: Account | None = None) -> Admission:
        """From the lease in hand; a lease too short is topped up from Redis first (the credits 429 or a 503)."""
        wall = self.clock.time()
        day = utc_day(wall)
        if account.id not in self.ledger:
            self.track(account)
        if budget is not None:
            return await self._admit_capped(account, cost, bucket, key_id, model, budget)
        while self.ledger.reserve(account.id, cost, day) < 0:  # else a concurrent call took the refill first
            wall = self.clock.time()
            day = utc_day(wall)
            if not await self._top_up(account, cost, day):
                raise self._credits_error(account, cost, bucket, wall)
        left = self.credits_left(account.id, day)
        return Admission(account.id, cost, day, metering_headers(account.plan, left, bucket, wall), False,
                         key_id, model)

    async def _admit_capped(self, account: Account, cost: int, bucket: BucketResult, key_id: int, model: str,
                            budget: Account) -> Admission:
        """A capped key's call: its budget leased like an account's, then the account's; both or neither.

        Both are reserved on one day (the one the call started on): a call waiting across midnight
        for a lease is refused on the old day's figures rather than split over two days.
        """
        wall = self.clock.time()
        day = utc_day(wall)
        if budget.id not in self.ledger:
            self.track(budget)
        while self.ledger.reserve(budget.id, cost, day) < 0:
            if not await self._top_up(budget, cost, day):
                raise self._cap_error(account, budget, cost, bucket, self.clock.time())
        try:
            while self.ledger.reserve(account.id, cost, day) < 0:
                if not await self._top_up(account, cost, day):
                    raise self._credits_error(account, cost, bucket, self.clock.time())
        except BaseException:
            self.ledger.refund(budget.id, cost, day)
            raise
        headers = metering_headers(account.plan, self.credits_left(account.id, day), bucket, wall)
        self.tighter(headers, budget.id, day, budget.plan.credits_per_day)
        return Admission(account.id, cost, day, headers, False, key_id, model, budget.id)

    async def _top_up(self, account: Account, cost: int, day: int) -> bool:
        """Top the lease up to cover one call of `cost`; False when the day's budget cannot.

        Calls of one account that need credits at the same moment share one trip to Redis;
        each then tries its reservation again.
        """
        pending = self._leasing.get(account.id)
        if pending is not None and not pending.done():  # a finished one would be awaited without a pause: a spin
            await asyncio.shield(pending)
            return True
        # The trip runs as a task of its own: a client that leaves mid-trip cancels its call, not
        # the lease, which still lands in the ledger instead of being stranded in Redis.
        task = asyncio.ensure_future(self._lease(account, cost, day))
        self._leasing[account.id] = task
        task.add_done_callback(lambda done: self._lease_done(account.id, done))
        return await asyncio.shield(task)

    def _lease_done(self, account_id: int, task: asyncio.Future[bool]) -> None:
        if self._leasing.get(account_id) is task:
            del self._leasing[account_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every call that waited on it may have left

    async def _lease(self, account: Account, cost: int, day: int) -> bool:
        deficit = cost - self.ledger.remaining(account.id, day)
        if deficit <= 0:
            return True
        known = self._spent_out.get((account.id, day))
        if known is not None and known[0] < deficit and self.clock.monotonic() < known[1]:
            return False
        if self.circuit.is_open:
            if account.plan.fail_open:
                return self._lease_without_redis(account, cost, day, deficit)
            raise _unavailable(self.circuit.until - self.clock.monotonic())
        limit = account.plan.credits_per_day
        calls = self._next_lease_calls(account.id)
        lease_id = RedisSync.new_lease_id()
        spent = -1  # Redis asks for the store's figure only when the day is new to it
        try:
            while True:
                grant = await self.sync.take_credits(account.id, day, limit=limit, spent=spent,
                                                     want=cost * calls, deficit=deficit, unit=cost,
                                                     lease_id=lease_id, divisor=self._divisor)
                if grant.granted >= 0:
                    break
                spent = await self._stored_spend(account.id, day)
        except RedisError as exc:
            log.warning("Redis unavailable for credit leases: %s", exc)
            self._unconfirmed.append((account.id, day, lease_id))
            self.circuit.failed()
            if account.plan.fail_open:
                return self._lease_without_redis(account, cost, day, deficit)
            raise _unavailable(self.circuit.wait) from None
        self.circuit.answered()
        if self.unsettled:
            await self.reconcile()
        self._left[account.id] = grant.left
        if grant.granted == 0:
            if len(self._spent_out) > 65_536:
                self._spent_out.clear()
            self._spent_out[(account.id, day)] = (grant.left, self.clock.monotonic() + SPENT_OUT_SECONDS)
            return False
        self.ledger.grant(account.id, grant.granted, day)
        self._leased.add((account.id, day))
        self.observer.lease_granted(account.plan.name)
        return True

    def _lease_without_redis(self, account: Account, cost: int, day: int, deficit: int) -> bool:
        """A fail-open plan's lease while Redis is away: counted here, up to 1/N of the day, charged to Redis later."""
        spent = self._spent_open.get((account.id, day), 0)
        if spent + deficit > max(cost, account.plan.credits_per_day // self.workers):
            return False
        self._spent_open[(account.id, day)] = spent + deficit
        self._owed.append((account.id, day, deficit, RedisSync.new_lease_id()))
        self.ledger.grant(account.id, deficit, day)
        return True

    async def reconcile(self) -> int:
        """Square up with Redis after an outage; the credits charged for fail-open spending.

        Fail-open plans' spending is charged (each debit once). A day Redis no longer holds needs
        nothing: its first lease starts from the store, which has the spending. Then each lease
        whose reply was lost is asked for by id: what it took joins the ledger, to be spent or
        given back. Stops at the first Redis error; what is left waits for the next try.
        """
        charged = 0
        async with self._reconciling:  # one at a time: each item is sent, then dropped, in order
            while self._owed:
                account_id, day, credits, debit_id = self._owed[0]
                try:
                    await self.sync.debit_credits(account_id, day, credits, debit_id)
                except RedisError:
                    return charged
                self._owed.pop(0)
                charged += credits
            self._spent_open.clear()
            while self._unconfirmed:
                account_id, day, lease_id = self._unconfirmed[0]
                try:
                    granted = await self.sync.recover_credits(account_id, day, lease_id)
                except RedisError:
                    return charged
                self._unconfirmed.pop(0)
                if granted and account_id in self.ledger:
                    log.info("recovered a lease of %d credits whose reply was lost", granted)
                    self.ledger.grant(account_id, granted, day)  # a past day's grant is dropped: its day is over
                    self._leased.add((account_id, day))
        return charged

    @property
    def unsettled(self) -> bool:
        return bool(self._owed or self._unconfirmed)

    def _next_lease_calls(self, account_id: int) -> int:
        """Leases follow the account's pace on this worker: a busy account goes to Redis about once a second."""
        now = self.clock.monotonic()
        calls, last = self._lease_calls.get(account_id, (LEASE_CALLS, 0.0))
        if last:
            lasted = now - last
            if lasted < LEASE_TARGET_SECONDS:
                calls = min(LEASE_MAX_CALLS, calls * 2)
            elif lasted > 10 * LEASE_TARGET_SECONDS:
                calls = max(LEASE_CALLS, calls // 2)
        self._lease_calls[account_id] = (calls, now)
        return calls

    async def give_back(self) -> int:
        """Outage debts are squared first (`reconcile`); a past day's leases are not returned: that day is over."""
        await self.reconcile()
        day = self.today()
        returned = 0
        for account_id, lease_day in sorted(self._leased):
            if lease_day != day or account_id not in self.ledger:
                continue
            credits = self.ledger.take_back(account_id)
            if credits <= 0:
                continue
            try:
                await self.sync.give_credits(account_id, day, credits, RedisSync.new_lease_id())
                returned += credits
            except RedisError:
                log.warning("could not return a lease of %d credits for account %d", credits, account_id)
        self._leased.clear()
        slots = await self.slots.give_back()
        if slots:
            log.info("returned %d unused per-minute slots to Redis", slots)
        return returned

    # slots --------------------------------------------------------------------------------------

    async def count_request(self, account: Account) -> BucketResult:
        """A slot from the batch in hand or a remembered refusal; else one trip to Redis, shared by concurrent calls."""
        bucket = self.slots.take(account, counted=True)
        if bucket is None:
            bucket = await self.slots.fetch(account)
        if not bucket.allowed:
            raise self.rpm_error(account, bucket)
        return bucket

    def peek_bucket(self, account: Account) -> BucketResult:
        return self.slots.peek(account)

    def rpm_refusal(self, account: Account) -> RpmRefusal | None:
        """The remembered refusal of the account's calls, if it still holds."""
        refused = self.slots.refusal(account)
        return None if refused is None else self._refused(account, refused)


def _unavailable(retry_after: float) -> ServiceUnavailable:
    return ServiceUnavailable(
        "Credit limits are temporarily unavailable; the call was not charged. Retry shortly.",
        retry_after=max(1.0, retry_after),
    )
