"""Admit and settle: the per-minute bucket, the daily credit reservation, and the headers they produce.

Everything here is in memory (`_fastpath`); the store only sees the usage deltas drained by
the write-behind task. A call reserves its credits when admitted; `refund` gives them back
when the call ends in an error before any answer was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clexproxy.auth import Account
from clexproxy.clock import Clock, seconds_to_utc_midnight, utc_day
from clexproxy.errors import RateLimited
from clexproxy.fastpath.limits import BucketResult, CreditLedger, TokenBuckets
from clexproxy.headers import CREDITS_REMAINING
from clexproxy.limits.headers import metering_headers, retry_when, rpm_message
from clexproxy.store.base import UsageRow

if TYPE_CHECKING:
    from clexproxy.limits.shared import SharedLimits


@dataclass(slots=True)
class Admission:
    """A reservation in flight; `refund` or nothing (charged) settles it exactly once."""

    account_id: int
    cost: int
    day: int
    headers: dict[str, str]
    refunded: bool = False


class Meter:
    """Admission from memory; with `shared`, the credits and slots in memory are this worker's share (leases)."""

    def __init__(self, clock: Clock, shared: bool = False) -> None:
        self.clock = clock
        self.buckets = TokenBuckets()
        # Alone, a worker's lease is the whole remaining budget; shared, leases come from Redis.
        self.ledger = CreditLedger(auto_lease=not shared)
        self.shared: SharedLimits | None = None

    def share(self, limits: SharedLimits) -> None:
        self.shared = limits

    def _credits_left(self, account_id: int, day: int, unknown: int = 0) -> int:
        """Credits remaining today: the ledger's; shared, an estimate (`unknown` before this worker's first lease)."""
        if self.shared is not None:
            return self.shared.credits_left(account_id, day, unknown)
        return self.ledger.remaining(account_id, day)

    def _peek(self, account: Account) -> BucketResult:
        rpm = account.plan.requests_per_minute
        if self.shared is not None:
            return self.shared.peek_slot(account, self.clock.monotonic())
        return self.buckets.peek(account.id, rpm, rpm / 60.0, self.clock.monotonic())

    def today(self) -> int:
        return utc_day(self.clock.time())

    def track(self, account: Account, spent_today: int = 0) -> None:
        """Start or update metering for an account (new account, plan change, or startup with stored usage)."""
        self.ledger.set_account(account.id, account.plan.credits_per_day, self.today(), spent_today)

    def peek_headers(self, account: Account) -> dict[str, str]:
        """The metering headers for a response that reserves nothing (a 400 after authentication)."""
        wall = self.clock.time()
        day = utc_day(wall)
        if account.id not in self.ledger:
            self.track(account)
        left = self._credits_left(account.id, day, account.plan.credits_per_day)
        return metering_headers(account.plan, left, self._peek(account), wall)

    def take_request(self, account: Account) -> BucketResult | None:
        """Count one request against the per-minute limit, or raise its 429.

        Called before the body is read: a refused request costs no parsing, and every request,
        well-formed or not, counts (as OpenAI counts them). None: the limit is shared and this
        worker holds no slot for the account; `take_request_remote` asks Redis.
        """
        if self.shared is not None:
            bucket = self.shared.take_slot(account, self.clock.monotonic())
            if bucket is None:
                return None
        else:
            rpm = account.plan.requests_per_minute
            bucket = self.buckets.acquire(account.id, rpm, rpm / 60.0, self.clock.monotonic())
        if not bucket.allowed:
            raise self._rpm_refusal(account, bucket)
        return bucket

    async def take_request_remote(self, account: Account) -> BucketResult:
        """`take_request` for a shared limit with no slot in hand: one trip to Redis (shared by concurrent calls)."""
        assert self.shared is not None
        bucket = await self.shared.fetch_slot(account, self.clock.monotonic())
        if not bucket.allowed:
            raise self._rpm_refusal(account, bucket)
        return bucket

    def rpm_refused(self, account: Account) -> tuple[BucketResult, int, float] | None:
        """What the 429 `take_request` would raise now says, without counting anything; None when it would admit.

        The bucket, the credits remaining today and the wall clock: the screen
        (clexproxy/server/screen.py) renders the 429 from them. A refused request takes nothing from the
        bucket, so looking is exact, and an admitted one is left for `take_request` to count.
        """
        if self.shared is not None:
            refused = self.shared.refusal(account, self.clock.monotonic())
            if refused is None:
                return None
            bucket = refused
        else:
            rpm = account.plan.requests_per_minute
            bucket = self.buckets.peek(account.id, rpm, rpm / 60.0, self.clock.monotonic())
            if bucket.allowed:
                return None
        wall = self.clock.time()
        if account.id not in self.ledger:
            self.track(account)
        return bucket, self._credits_left(account.id, utc_day(wall), account.plan.credits_per_day), wall

    def _rpm_refusal(self, account: Account, bucket: BucketResult) -> RateLimited:
        wall = self.clock.time()
        if account.id not in self.ledger:
            self.track(account)
        left = self._credits_left(account.id, utc_day(wall), account.plan.credits_per_day)
        headers = metering_headers(account.plan, left, bucket, wall)
        return RateLimited(
            rpm_message(account.plan) + retry_when(bucket.retry_after),
            limit="requests_per_minute",
            retry_after=bucket.retry_after,
            headers=headers,
        )

    def reserve(self, account: Account, cost: int, bucket: BucketResult) -> Admission | None:
        """Reserve `cost` credits for a request already counted by `take_request`, or raise the credits 429.

        None: the budget is shared and this worker's lease is short; `reserve_remote` tops it up.
        """
        wall = self.clock.time()
        day = utc_day(wall)
        if account.id not in self.ledger:
            self.track(account)
        remaining = self.ledger.reserve(account.id, cost, day)
        if remaining < 0:
            if self.shared is not None:
                return None
            raise self._credits_refusal(account, cost, bucket, wall)
        if self.shared is not None:  # alone, what `reserve` returned is what remains
            remaining = self.shared.credits_left(account.id, day, 0)
        return Admission(account.id, cost, day, metering_headers(account.plan, remaining, bucket, wall))

    async def reserve_remote(self, account: Account, cost: int, bucket: BucketResult) -> Admission:
        """`reserve` with a lease from Redis; raises the credits 429 when the day's shared budget cannot pay."""
        assert self.shared is not None
        while True:
            wall = self.clock.time()
            day = utc_day(wall)
            if not await self.shared.lease(account, cost, day):
                raise self._credits_refusal(account, cost, bucket, wall)
            if self.ledger.reserve(account.id, cost, day) >= 0:  # else a concurrent call took the refill first
                left = self._credits_left(account.id, day)
                return Admission(account.id, cost, day, metering_headers(account.plan, left, bucket, wall))

    def _credits_refusal(self, account: Account, cost: int, bucket: BucketResult, wall: float) -> RateLimited:
        left = self._credits_left(account.id, utc_day(wall))
        reset = seconds_to_utc_midnight(wall)
        return RateLimited(
            f"Daily credits exhausted: this call costs {cost} credit(s) and {left} remain today "
            f"on your {account.plan.name} plan ({account.plan.credits_per_day}/day). "
            f"The budget resets at 00:00 UTC, in {reset}s.",
            limit="daily_credits",
            retry_after=reset,
            headers=metering_headers(account.plan, left, bucket, wall),
        )

    def admit(self, account: Account, cost: int) -> Admission:
        """Both steps at once, for a worker alone: one request from the bucket, then `cost` credits."""
        bucket = self.take_request(account)
        assert bucket is not None and self.shared is None, "shared limits admit through take_request_remote"
        admission = self.reserve(account, cost, bucket)
        assert admission is not None
        return admission

    def refund(self, admission: Admission) -> None:
        """Give a reservation back; synchronous so a cancelled handler cannot interrupt it half-way."""
        if admission.refunded:
            return
        admission.refunded = True
        self.ledger.refund(admission.account_id, admission.cost, admission.day)
        admission.headers[CREDITS_REMAINING] = str(self._credits_left(admission.account_id, self.today()))

    def charge_served(self, admission: Admission, served_cost: int) -> None:
        """Move a reservation to the cost of the model that answered (a fallback's), before the answer is sent.

        A cheaper fallback gets the difference back. A dearer one is charged what was reserved and
        no more: that is the price of the model the client asked for, the most it agreed to pay, and
        taking more could overspend a budget the reservation was checked against. Shared limits need
        nothing else: the credits go back to this worker's lease, as a refund's do. Usage keeps the
        one call: its reservation is undone and the lower cost reserved out of what that freed
        (which cannot fail, nor let another call in between). A call that crossed midnight since its
        admission keeps its charge: its day's usage can only be corrected by a refund, not re-reserved.
        """
        cost = served_cost if served_cost < admission.cost else admission.cost
        if cost == admission.cost or admission.refunded or admission.day != self.today():
            return
        self.ledger.refund(admission.account_id, admission.cost, admission.day)
        self.ledger.reserve(admission.account_id, cost, admission.day)
        admission.cost = cost
        admission.headers[CREDITS_REMAINING] = str(self._credits_left(admission.account_id, admission.day))

    def record_tokens(self, admission: Admission, prompt: int, completion: int) -> None:
        self.ledger.record_tokens(admission.account_id, prompt, completion, admission.day)

    def drain(self) -> list[UsageRow]:
        """Usage accumulated since the last drain, for the write-behind to the store (`UsageDelta` order)."""
        return self.ledger.drain_usage()
