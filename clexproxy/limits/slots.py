"""A worker's per-minute slots when several workers share an account's rate through Redis.

Redis keeps each account's schedule (GCRA, `RedisSync.take_slots`); a worker takes slots from
it in batches and spends them from memory. Two bounds hold across every worker of every host:

* never more than the plan's rpm, plus what refills meanwhile (and a batch is used only within
  the time its slots cover, so one taken in a quiet minute cannot add to a busy one later);
* never fewer when calls ask for more: a batch is what the calls waiting for it need, and slots
  for calls still to come (the worker's recent rate) come only out of room to spare on Redis,
  at most 1/(64N) of it. What a batch leaves unused goes back to Redis when it expires or the
  worker stops (`give_slots`), so no slot sits in one worker while another refuses a call.

A refusal is remembered until its retry time, so a flood is answered from memory. While Redis
cannot be reached (`Circuit`), each worker keeps to its 1/N share in a bucket of its own.
"""

from __future__ import annotations

import asyncio
import logging

from clexproxy.auth import Account
from clexproxy.clock import Clock
from clexproxy.fastpath.limits import BucketResult, TokenBuckets
from clexproxy.sync.redis import RedisError, RedisSync

log = logging.getLogger("clexproxy.shared")

SLOT_BATCH_SECONDS = 0.5  # slots for calls to come cover about this much of the worker's recent rate
SLOT_SPARE_DIVISOR = 64  # ... and at most 1/(64N) of the room past the calls waiting (N: workers a host)
MIN_SLOT_VALIDITY = 0.5  # seconds a batch of slots may be used in, at the least
CIRCUIT_MIN, CIRCUIT_MAX = 0.1, 5.0  # seconds between tries of a Redis that failed, doubling


class Circuit:
    """Whether Redis is worth a trip: after a failure, not until a pause (doubling) is over."""

    __slots__ = ("clock", "until", "wait")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.until = 0.0  # monotonic: no trip before then
        self.wait = CIRCUIT_MIN

    @property
    def is_open(self) -> bool:
        return self.clock.monotonic() < self.until

    def failed(self) -> None:
        self.until = self.clock.monotonic() + self.wait
        self.wait = min(CIRCUIT_MAX, self.wait * 2)

    def answered(self) -> None:
        self.wait = CIRCUIT_MIN


class _Slots:
    __slots__ = ("allowance", "batch", "calls", "denied_until", "left", "rate_since", "rpm", "valid_until", "waiting")

    def __init__(self) -> None:
        self.allowance = 0  # slots in hand
        self.valid_until = 0.0  # monotonic: slots in hand expire then, and go back to Redis
        self.batch = 0  # which grant the slots in hand came from: an older grant's expiry timer does nothing
        self.rpm = 0  # the rate the slots in hand were taken at: a return moves the schedule back at it
        self.waiting = 0  # calls waiting on a trip to Redis for a slot: what the next batch needs
        self.denied_until = 0.0  # monotonic: Redis refused until then
        self.left = 0  # slots Redis had left at the last grant (for the headers)
        self.calls = 0  # calls since rate_since: slots for calls to come follow the rate
        self.rate_since = 0.0


class SlotBatches:
    """One worker's batches of per-minute slots, by account."""

    def __init__(self, clock: Clock, sync: RedisSync, workers: int, circuit: Circuit) -> None:
        self.clock = clock
        self.sync = sync
        self.workers = max(1, workers)
        self.circuit = circuit
        self._slots: dict[int, _Slots] = {}
        self._fetching: dict[int, asyncio.Future[bool]] = {}
        self._spare_divisor = SLOT_SPARE_DIVISOR * self.workers
        self._returning: set[asyncio.Task[int]] = set()
        self._fallback = TokenBuckets()

    def take(self, account: Account, counted: bool = False) -> BucketResult | None:
        """A slot from memory, a remembered refusal, or None: Redis must be asked (`fetch`).

        `counted`: this is a call's first look, which counts toward the worker's rate.
        """
        slots = self._slots.get(account.id)
        if slots is None:
            return None
        if counted:
            slots.calls += 1
        now = self.clock.monotonic()
        if slots.allowance > 0:
            if now < slots.valid_until:
                slots.allowance -= 1
                return self._result(account, slots, True, 0.0)
            self._give_back(account.id, slots)
        if now < slots.denied_until:
            return self._result(account, slots, False, slots.denied_until - now)
        return None

    def peek(self, account: Account) -> BucketResult:
        """What `take` would say, without taking anything or asking Redis."""
        slots = self._slots.get(account.id)
        if slots is None:
            rpm = account.plan.requests_per_minute
            return BucketResult(rpm > 0, rpm, 0.0, 0.0)
        now = self.clock.monotonic()
        if now < slots.denied_until and not (slots.allowance > 0 and now < slots.valid_until):
            return self._result(account, slots, False, slots.denied_until - now)
        return self._result(account, slots, True, 0.0)

    def refusal(self, account: Account) -> BucketResult | None:
        """The remembered refusal of the account's calls, if it still holds."""
        slots = self._slots.get(account.id)
        now = self.clock.monotonic()
        if slots is None or now >= slots.denied_until or (slots.allowance > 0 and now < slots.valid_until):
            return None
        return self._result(account, slots, False, slots.denied_until - now)

    async def fetch(self, account: Account) -> BucketResult:
        """One slot for this call, from Redis: one trip at a time per account, for every call waiting on it.

        The trip runs as a task of its own: a call that leaves meanwhile cancels its wait, not the
        trip, whose slots still land here (to be spent, or given back) instead of being lost.
        """
        rpm = account.plan.requests_per_minute
        if self.circuit.is_open:
            return self._fallback_slot(account, rpm)
        slots = self._slots.get(account.id)
        if slots is None:
            slots = self._slots[account.id] = _Slots()
        slots.waiting += 1
        try:
            while True:
                trip = self._fetching.get(account.id)
                # A finished trip may still be here (its done-callback not yet run) for a call started
                # eagerly in the meantime: awaited again it would not pause, and the call would spin.
                if trip is None or trip.done():
                    trip = self._fetching[account.id] = asyncio.ensure_future(self._refill(account.id, slots, rpm))
                    trip.add_done_callback(lambda done: self._trip_done(account.id, done))
                if not await asyncio.shield(trip):
                    return self._fallback_slot(account, rpm)
                taken = self.take(account)
                if taken is not None:  # else newer calls took the batch first: this one needs another
                    return taken
        finally:
            slots.waiting -= 1

    def _trip_done(self, account_id: int, trip: asyncio.Future[bool]) -> None:
        if self._fetching.get(account_id) is trip:
            del self._fetching[account_id]

    async def _refill(self, account_id: int, slots: _Slots, rpm: int) -> bool:
        """One trip: a slot for each call waiting, and for the recent rate out of Redis's room to spare.

        False when Redis could not be reached: the calls fall back to this worker's share.
        """
        now = self.clock.monotonic()
        elapsed = now - slots.rate_since
        rate = slots.calls / elapsed if slots.rate_since and elapsed > 0 else 0.0
        slots.calls, slots.rate_since = 0, now
        need = max(1, slots.waiting)
        extra = int(rate * SLOT_BATCH_SECONDS) + 1 - need
        try:
            grant = await self.sync.take_slots(account_id, rpm, need, extra=extra, divisor=self._spare_divisor)
        except RedisError as exc:
            log.warning("Redis unavailable for per-minute limits (%s); %d/%d of the limit on this worker",
                        exc, rpm, self.workers)
            self.circuit.failed()
            return False
        self.circuit.answered()
        now = self.clock.monotonic()
        slots.left = grant.left
        if grant.granted == 0:
            slots.denied_until = now + grant.retry_after
            return True
        validity = max(MIN_SLOT_VALIDITY, grant.granted * 60.0 / max(1, rpm))
        slots.allowance = grant.granted
        slots.valid_until = now + validity
        slots.denied_until = 0.0
        slots.rpm = rpm
        slots.batch += 1
        asyncio.get_running_loop().call_later(validity, self._expired, account_id, slots.batch)
        return True

    def _expired(self, account_id: int, batch: int) -> None:
        """A batch's time is up on the loop's clock: what is left of it goes back, if the limits' clock agrees."""
        slots = self._slots.get(account_id)
        if slots is not None and slots.batch == batch and self.clock.monotonic() >= slots.valid_until:
            self._give_back(account_id, slots)

    def _give_back(self, account_id: int, slots: _Slots) -> None:
        """The slots in hand go back to Redis, in the background; from now on they are not this worker's."""
        unused, slots.allowance = slots.allowance, 0
        if unused <= 0:
            return
        task = asyncio.ensure_future(self._give_slots(account_id, slots.rpm, unused))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _give_slots(self, account_id: int, rpm: int, unused: int) -> int:
        return_id = RedisSync.new_lease_id()
        for attempt in range(2):  # the id makes a second try safe: Redis counts a return once
            try:
                return await self.sync.give_slots(account_id, rpm, unused, return_id)
            except RedisError as exc:
                if attempt:
                    log.warning("could not return %d unused per-minute slots: %s", unused, exc)
        return 0

    async def give_back(self) -> int:
        """At stop: every batch's unused slots back to Redis, and returns already under way finished; how many."""
        for account_id, slots in self._slots.items():
            self._give_back(account_id, slots)
        if not self._returning:
            return 0
        return sum(await asyncio.gather(*self._returning))

    def _fallback_slot(self, account: Account, rpm: int) -> BucketResult:
        share = rpm / self.workers
        return self._fallback.acquire(account.id, share, share / 60.0, self.clock.monotonic())

    def _result(self, account: Account, slots: _Slots, allowed: bool, retry_after: float) -> BucketResult:
        rpm = account.plan.requests_per_minute
        remaining = slots.allowance + slots.left if allowed else 0
        reset_after = (rpm - remaining) * 60.0 / rpm if rpm > 0 else float("inf")
        return BucketResult(allowed, remaining, retry_after, reset_after)
