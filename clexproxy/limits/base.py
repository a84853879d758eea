"""The admission API (`Limits`) and what its two implementations share (`LedgerLimits`).

A proxied call is admitted in two steps and settled in one, the same way whether the limits
are this process's alone (`LocalLimits`) or shared with other workers through Redis
(`SharedLimits`), so the handler never asks which:

* `count_request` counts the call against the account's per-minute limit, before its body is
  read (a refused call costs no parsing, and every call counts, as OpenAI counts them);
* `admit` reserves the call's credits once its model, and so its cost, is known;
* `settle` ends the call: a reservation whose answer never started is refunded, any other is
  charged; `charge_served` moved it to a fallback's cost first.

Both steps are coroutines that return without suspending whenever memory can answer (always
alone; while the lease and slots in hand last, shared): only the shared limits' trips to
Redis wait. `settle`, `refund` and `charge_served` are synchronous, so a client that leaves
(which cancels the handler) cannot interrupt them half-way.

Each implementation owns its `CreditLedger` (the credits it may spend today: the whole day's
budget alone, a lease shared) and its per-minute buckets; the store only sees the usage
deltas `drain` hands to the write-behind.

A key with a daily cap (`KeyPolicy.budget`) has a second budget in the same ledger, under an id
no account reaches (`KEY_BUDGET_BASE` + key id): a call reserves from both or neither, and a
refund or a fallback's charge moves both, so the cap is exactly as exact as the account's budget
(shared: the same Redis leases). Its ledger rows are not usage: `drain` leaves them out. The
headers report the tighter of the two (the smaller remaining, and that budget's limit).

Usage by key and model (`KeyUsageRow`) is tallied per settled call in a plain dict of small lists
keyed (account, key, model, day), and drained with the account rows (`drain_detail`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

from clexproxy.auth import KEY_BUDGET_BASE, Account
from clexproxy.clock import Clock, seconds_to_utc_midnight, utc_day
from clexproxy.errors import RateLimited
from clexproxy.fastpath.limits import BucketResult, CreditLedger
from clexproxy.headers import CREDITS_LIMIT, CREDITS_REMAINING
from clexproxy.limits.headers import metering_headers, retry_when, rpm_message
from clexproxy.store.base import KeyUsageRow, UsageRow


@dataclass(slots=True)
class Admission:
    """A reservation in flight; `refund` or nothing (charged) settles it exactly once."""

    account_id: int
    cost: int
    day: int
    headers: dict[str, str]
    refunded: bool = False
    key_id: int = 0
    model: str = ""  # the model that answered: a fallback's once `charge_served` ran
    budget: int = 0  # the key's budget id (`KEY_BUDGET_BASE` + key id) when it has a daily cap, else 0


# What the screen needs to render a per-minute 429: the bucket, the credits remaining today, the wall clock.
RpmRefusal = tuple[BucketResult, int, float]


class Limits(Protocol):
    """Admission and settlement for the proxied calls, and what the gateway does with the limits off the path."""

    clock: Clock  # the wall clock a key's expiry is checked against, the day's too

    def today(self) -> int:
        """The UTC day the daily budgets are counted in."""
        ...

    def track(self, account: Account, spent_today: int = 0) -> None:
        """Start or update metering for an account (new account, plan change, or startup with stored usage)."""
        ...

    async def count_request(self, account: Account) -> BucketResult:
        """Count one call against the per-minute limit, or raise its 429."""
        ...

    async def admit(self, account: Account, cost: int, bucket: BucketResult, key_id: int = 0, model: str = "",
                    budget: Account | None = None) -> Admission:
        """Reserve `cost` credits for a call `count_request` counted, or raise the credits 429 (shared: or a 503).

        With `budget` (a capped key's), from it and the account's both, or neither.
        """
        ...

    def settle(self, admission: Admission, answered: bool, prompt_tokens: int, completion_tokens: int) -> None:
        """End a call: refund it unless its answer started, and record its tokens."""
        ...

    def refund(self, admission: Admission) -> None:
        """Give a reservation back (idempotent); its headers then say what remains."""
        ...

    def charge_served(self, admission: Admission, served_cost: int) -> None:
        """Move a reservation to the cost of the model that answered (a fallback's)."""
        ...

    def peek_headers(self, account: Account, budget: Account | None = None) -> dict[str, str]:
        """The metering headers for an answer that reserves nothing (a 400 after authentication)."""
        ...

    def rpm_refusal(self, account: Account) -> RpmRefusal | None:
        """What the per-minute 429 would say now, counting nothing; None when a call would be admitted."""
        ...

    def drain(self) -> list[UsageRow]:
        """Usage since the last drain, for the write-behind to the store."""
        ...

    def drain_detail(self) -> list[KeyUsageRow]:
        """Usage by key and model since the last drain (drained with `drain`'s rows)."""
        ...

    @property
    def unsettled(self) -> bool:
        """Something from a Redis outage is still to be squared (`reconcile`)."""
        ...

    async def reconcile(self) -> int:
        """Square up with Redis after an outage; the credits charged for spending while it was away."""
        ...

    async def give_back(self) -> int:
        """At stop: return today's unused leases (and slots); the credits returned."""
        ...


class LedgerLimits(abc.ABC):
    """`Limits` over a `CreditLedger`: the headers, the 429s, refunds, fallback charges and usage.

    An implementation says how a call gets its per-minute slot and its credits, and what the
    headers report as remaining (`credits_left`, `peek_bucket`).
    """

    def __init__(self, clock: Clock, ledger: CreditLedger) -> None:
        self.clock = clock
        self.ledger = ledger
        # (account id, key id, model, day) -> [credits, calls, prompt tokens, completion tokens]
        self._detail: dict[tuple[int, int, str, int], list[int]] = {}

    @abc.abstractmethod
    def credits_left(self, account_id: int, day: int, unknown: int = 0) -> int:
        """Credits remaining today, as the headers report them (`unknown` when nothing is known yet)."""

    @abc.abstractmethod
    def peek_bucket(self, account: Account) -> BucketResult:
        """The account's per-minute standing, for headers, taking nothing."""

    def today(self) -> int:
        return utc_day(self.clock.time())

    def track(self, account: Account, spent_today: int = 0) -> None:
        self.ledger.set_account(account.id, account.plan.credits_per_day, self.today(), spent_today)

    def peek_headers(self, account: Account, budget: Account | None = None) -> dict[str, str]:
        wall = self.clock.time()
        day = utc_day(wall)
        if account.id not in self.ledger:
            self.track(account)
        left = self.credits_left(account.id, day, account.plan.credits_per_day)
        headers = metering_headers(account.plan, left, self.peek_bucket(account), wall)
        if budget is not None:
            if budget.id not in self.ledger:
                self.track(budget)
            self.tighter(headers, budget.id, day, budget.plan.credits_per_day)
        return headers

    def tighter(self, headers: dict[str, str], budget_id: int, day: int, cap: int) -> None:
        """Make `headers` report the key's budget where it is tighter than the account's (by remaining)."""
        left = self.credits_left(budget_id, day, cap)
        if left < int(headers[CREDITS_REMAINING]):
            headers[CREDITS_REMAINING] = str(left)
            headers[CREDITS_LIMIT] = str(cap)

    def _remaining_headers(self, admission: Admission, day: int) -> None:
        """After a refund or a fallback's charge: the headers' credits remaining (the tighter budget's)."""
        headers = admission.headers
        headers[CREDITS_REMAINING] = str(self.credits_left(admission.account_id, day))
        if admission.budget:
            headers[CREDITS_LIMIT] = str(self.ledger.limit(admission.account_id))
            self.tighter(headers, admission.budget, day, self.ledger.limit(admission.budget))

    def _refused(self, account: Account, bucket: BucketResult) -> RpmRefusal:
        """`rpm_refusal`'s answer for a `bucket` that refuses."""
        wall = self.clock.time()
        if account.id not in self.ledger:
            self.track(account)
        return bucket, self.credits_left(account.id, utc_day(wall), account.plan.credits_per_day), wall

    def rpm_error(self, account: Account, bucket: BucketResult) -> RateLimited:
        """The per-minute 429 for a call `bucket` refuses (what the screen's `RateLimitAnswers` renders too)."""
        bucket, left, wall = self._refused(account, bucket)
        return RateLimited(
            rpm_message(account.plan) + retry_when(bucket.retry_after),
            limit="requests_per_minute",
            retry_after=bucket.retry_after,
            headers=metering_headers(account.plan, left, bucket, wall),
        )

    def _credits_error(self, account: Account, cost: int, bucket: BucketResult, wall: float) -> RateLimited:
        left = self.credits_left(account.id, utc_day(wall))
        reset = seconds_to_utc_midnight(wall)
        return RateLimited(
            f"Daily credits exhausted: this call costs {cost} credit(s) and {left} remain today "
            f"on your {account.plan.name} plan ({account.plan.credits_per_day}/day). "
            f"The budget resets at 00:00 UTC, in {reset}s.",
            limit="daily_credits",
            retry_after=reset,
            headers=metering_headers(account.plan, left, bucket, wall),
        )

    def _cap_error(self, account: Account, budget: Account, cost: int, bucket: BucketResult,
                   wall: float) -> RateLimited:
        """The 429 of a key whose daily cap cannot cover the call (the account's budget may still)."""
        left = self.credits_left(budget.id, utc_day(wall))
        cap = budget.plan.credits_per_day
        reset = seconds_to_utc_midnight(wall)
        headers = metering_headers(account.plan, self.credits_left(account.id, utc_day(wall)), bucket, wall)
        self.tighter(headers, budget.id, utc_day(wall), cap)
        return RateLimited(
            f"Daily credits exhausted for this key: this call costs {cost} credit(s) and {left} remain today "
            f"of the key's daily cap ({cap}/day). The budget resets at 00:00 UTC, in {reset}s.",
            limit="daily_credits",
            retry_after=reset,
            headers=headers,
        )

    def settle(self, admission: Admission, answered: bool, prompt_tokens: int, completion_tokens: int) -> None:
        if not answered:
            self.refund(admission)
        if prompt_tokens or completion_tokens:
            self.ledger.record_tokens(admission.account_id, prompt_tokens, completion_tokens, admission.day)
        if not admission.refunded:
            slot = (admission.account_id, admission.key_id, admission.model, admission.day)
            row = self._detail.get(slot)
            if row is None:
                self._detail[slot] = [admission.cost, 1, prompt_tokens, completion_tokens]
            else:
                row[0] += admission.cost
                row[1] += 1
                row[2] += prompt_tokens
                row[3] += completion_tokens

    def refund(self, admission: Admission) -> None:
        """Shared, the credits go back to this worker's lease (a capped key's to its budget's too)."""
        if admission.refunded:
            return
        admission.refunded = True
        self.ledger.refund(admission.account_id, admission.cost, admission.day)
        if admission.budget:
            self.ledger.refund(admission.budget, admission.cost, admission.day)
        self._remaining_headers(admission, self.today())

    def charge_served(self, admission: Admission, served_cost: int) -> None:
        """Called once the upstream answered and before the answer is sent.

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
        if admission.budget:
            self.ledger.refund(admission.budget, admission.cost, admission.day)
            self.ledger.reserve(admission.budget, cost, admission.day)
        admission.cost = cost
        self._remaining_headers(admission, admission.day)

    def drain(self) -> list[UsageRow]:
        """In `UsageDelta` order; the keys' budgets are left out (their calls are their accounts')."""
        return [row for row in self.ledger.drain_usage() if row[0] < KEY_BUDGET_BASE]

    def drain_detail(self) -> list[KeyUsageRow]:
        detail, self._detail = self._detail, {}
        return [KeyUsageRow(account_id, key_id, model, day, *figures)
                for (account_id, key_id, model, day), figures in detail.items()
                if figures[1] or figures[0]]
