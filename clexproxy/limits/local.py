"""Limits held by one process alone: its own per-minute buckets and the whole of each daily budget.

The gateway uses these when no Redis is configured (`redis_url`), which means one worker: the
ledger's lease of an account is its whole remaining budget (`auto_lease`), so admission is
answered from memory every time and the coroutines never suspend. Nothing is leased, so
nothing is squared up after an outage or given back at stop.
"""

from __future__ import annotations

from clexproxy.auth import Account
from clexproxy.clock import Clock, utc_day
from clexproxy.fastpath.limits import BucketResult, CreditLedger, TokenBuckets
from clexproxy.limits.base import Admission, LedgerLimits, RpmRefusal
from clexproxy.limits.headers import metering_headers


class LocalLimits(LedgerLimits):
    """`Limits` for a gateway alone: a token bucket per account for the minute, the ledger for the day."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, CreditLedger(auto_lease=True))
        self.buckets = TokenBuckets()

    def credits_left(self, account_id: int, day: int, unknown: int = 0) -> int:
        return self.ledger.remaining(account_id, day)

    def peek_bucket(self, account: Account) -> BucketResult:
        rpm = account.plan.requests_per_minute
        return self.buckets.peek(account.id, rpm, rpm / 60.0, self.clock.monotonic())

    async def count_request(self, account: Account) -> BucketResult:
        rpm = account.plan.requests_per_minute
        bucket = self.buckets.acquire(account.id, rpm, rpm / 60.0, self.clock.monotonic())
        if not bucket.allowed:
            raise self.rpm_error(account, bucket)
        return bucket

    def rpm_refusal(self, account: Account) -> RpmRefusal | None:
        """A refused call takes nothing from the bucket, so looking is exact; an admitted one is left to count."""
        bucket = self.peek_bucket(account)
        return None if bucket.allowed else self._refused(account, bucket)

    async def admit(self, account: Account, cost: int, bucket: BucketResult, key_id: int = 0, model: str = "",
                    budget: Account | None = None) -> Admission:
        wall = self.clock.time()
        day = utc_day(wall)
        if account.id not in self.ledger:
            self.track(account)
        if budget is not None:
            return self._admit_capped(account, cost, bucket, key_id, model, budget, wall)
        remaining = self.ledger.reserve(account.id, cost, day)
        if remaining < 0:
            raise self._credits_error(account, cost, bucket, wall)
        return Admission(account.id, cost, day, metering_headers(account.plan, remaining, bucket, wall), False,
                         key_id, model)

    def _admit_capped(self, account: Account, cost: int, bucket: BucketResult, key_id: int, model: str,
                      budget: Account, wall: float) -> Admission:
        """A capped key's call: from its budget and the account's, both or neither."""
        day = utc_day(wall)
        if budget.id not in self.ledger:
            self.track(budget)
        if self.ledger.reserve(budget.id, cost, day) < 0:
            raise self._cap_error(account, budget, cost, bucket, wall)
        remaining = self.ledger.reserve(account.id, cost, day)
        if remaining < 0:
            self.ledger.refund(budget.id, cost, day)
            raise self._credits_error(account, cost, bucket, wall)
        headers = metering_headers(account.plan, remaining, bucket, wall)
        self.tighter(headers, budget.id, day, budget.plan.credits_per_day)
        return Admission(account.id, cost, day, headers, False, key_id, model, budget.id)

    @property
    def unsettled(self) -> bool:
        return False

    async def reconcile(self) -> int:
        return 0

    async def give_back(self) -> int:
        return 0
