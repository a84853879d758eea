"""Pure-Python twin of the compiled `_limits`: the rate-limit buckets and the daily credit ledger.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. The public
API and every observable result must match the compiled module exactly; the algorithms mirror
it step by step (same floating-point operation order) so that they cannot drift.

`TokenBuckets` holds the per-account requests-per-minute limit; `CreditLedger` the per-account
daily credit budget, with write-behind usage deltas.
"""

from __future__ import annotations

import math

__all__ = ("BucketResult", "CreditLedger", "TokenBuckets")


# ---------------------------------------------------------------------------------------------
# Token buckets
# ---------------------------------------------------------------------------------------------

# Tolerance in tokens: a client that waits exactly `retry_after` must get through even when
# the clock arithmetic lands a few ulps short of a whole token.
_EPS = 1e-6


class BucketResult:
    """The outcome of one bucket check, in the numbers the rate-limit headers need."""

    __slots__ = ("_allowed", "_remaining", "_reset_after", "_retry_after")

    def __init__(self, allowed: bool, remaining: int, retry_after: float, reset_after: float) -> None:
        self._allowed = bool(allowed)
        self._remaining = remaining
        self._retry_after = retry_after
        self._reset_after = reset_after

    @property
    def allowed(self) -> bool:
        return self._allowed

    @property
    def remaining(self) -> int:
        return self._remaining

    @property
    def retry_after(self) -> float:
        return self._retry_after

    @property
    def reset_after(self) -> float:
        return self._reset_after

    def __repr__(self) -> str:
        return (
            f"BucketResult(allowed={self._allowed!r}, remaining={self._remaining!r}, "
            f"retry_after={self._retry_after!r}, reset_after={self._reset_after!r})"
        )


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


def _result(allowed: bool, tokens: float, cost: float, capacity: float, refill: float) -> BucketResult:
    """Shared by acquire and peek so both report identical numbers for identical state."""
    if allowed:
        retry = 0.0
    elif refill > 0.0 and cost <= capacity:
        retry = (cost - tokens) / refill
    else:
        retry = math.inf  # the bucket can never hold `cost` tokens
    if refill > 0.0:
        reset = (capacity - tokens) / refill
        if reset < 0.0:
            reset = 0.0
    elif tokens >= capacity:
        reset = 0.0
    else:
        reset = math.inf
    return BucketResult(allowed, math.floor(tokens + _EPS), retry, reset)


class TokenBuckets:
    """Continuously refilled token buckets keyed by account.

    Capacity and rate are passed on every call rather than stored, so a plan change takes
    effect on the next request without any notification path. Time is whatever the caller
    passes (a monotonic clock in production, a fake one in tests).
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}

    def acquire(
        self, key: int, capacity: float, refill_per_second: float, now: float, cost: float = 1.0
    ) -> BucketResult:
        # float() gives the same double arithmetic as the compiled twin's C parameters.
        capacity, refill_per_second, now, cost = float(capacity), float(refill_per_second), float(now), float(cost)
        if cost < 0.0:
            raise ValueError("cost must not be negative")
        cap = capacity if capacity > 0.0 else 0.0
        refill = refill_per_second if refill_per_second > 0.0 else 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(cap, now)
        else:
            if now > bucket.last:
                # A clock that went backwards refills nothing and keeps the later `last`, so
                # the time is not counted twice once it catches up.
                tokens = bucket.tokens + (now - bucket.last) * refill
                bucket.tokens = tokens if tokens < cap else cap
                bucket.last = now
            if bucket.tokens > cap:
                bucket.tokens = cap  # the plan shrank
        if bucket.tokens + _EPS >= cost:
            tokens = bucket.tokens - cost
            bucket.tokens = tokens if tokens > 0.0 else 0.0
            return _result(True, bucket.tokens, cost, cap, refill)
        return _result(False, bucket.tokens, cost, cap, refill)

    def peek(self, key: int, capacity: float, refill_per_second: float, now: float) -> BucketResult:
        """The numbers `acquire` would see, without taking a token or touching stored state."""
        capacity, refill_per_second, now = float(capacity), float(refill_per_second), float(now)
        cap = capacity if capacity > 0.0 else 0.0
        refill = refill_per_second if refill_per_second > 0.0 else 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = cap
        else:
            tokens = bucket.tokens
            if now > bucket.last:
                tokens = tokens + (now - bucket.last) * refill
            if tokens > cap:
                tokens = cap
        return _result(tokens + _EPS >= 1.0, tokens, 1.0, cap, refill)

    def forget(self, key: int) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


# ---------------------------------------------------------------------------------------------
# Credit ledger
# ---------------------------------------------------------------------------------------------


class _Account:
    """One account's budget for its current day, plus usage not yet drained for that day.

    Usage for the current day accumulates on the account itself (no per-call tuple or dict
    entry); only the rare correction for an earlier day goes to the ledger's side table.
    """

    __slots__ = ("account", "calls", "completion_tokens", "credits", "day", "dirty", "lease", "limit", "prompt_tokens",
                 "spent")

    def __init__(self, account: int, limit: int, day: int, spent: int, lease: int) -> None:
        self.account = account
        self.limit = limit
        self.day = day
        self.spent = spent
        self.lease = lease
        self.credits = 0  # undrained usage for `day`
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.dirty = False  # listed in CreditLedger._dirty


class CreditLedger:
    """Per-account daily credits, admitted against a local lease.

    Spending is only allowed out of `lease`. In a single process (`auto_lease`) the lease is
    simply the whole remaining budget; with several processes a coordinator hands out slices
    of the shared budget with `grant` and collects them back with `take_back`, and the ledger
    code stays the same.

    Days only move forward: a call with a day older than the account's current day is counted
    on the current day (`reserve`) or as a correction to that older day (`refund`).
    `remaining` never mutates: for a day the account has not reached it reports what the
    rollover would give, and the rollover itself happens on the next `reserve`/`grant`.
    """

    __slots__ = ("_accounts", "_auto", "_dirty", "_side")

    def __init__(self, auto_lease: bool = True) -> None:
        self._auto = bool(auto_lease)
        self._accounts: dict[int, _Account] = {}
        self._dirty: list[_Account] = []
        self._side: dict[tuple[int, int], list[int]] = {}

    def _get(self, account: int) -> _Account:
        acct = self._accounts.get(account)
        if acct is None:
            raise KeyError(account)
        return acct

    def _fresh_lease(self, limit: int, spent: int) -> int:
        if not self._auto:
            return 0
        lease = limit - spent
        return lease if lease > 0 else 0

    def _side_add(
        self, account: int, day: int, credits: int, calls: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        slot = self._side.get((account, day))
        if slot is None:
            slot = self._side[(account, day)] = [0, 0, 0, 0]
        slot[0] += credits
        slot[1] += calls
        slot[2] += prompt_tokens
        slot[3] += completion_tokens

    def _record(
        self, acct: _Account, day: int, credits: int, calls: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        if day != acct.day:
            self._side_add(acct.account, day, credits, calls, prompt_tokens, completion_tokens)
            return
        if not acct.dirty:
            acct.dirty = True
            self._dirty.append(acct)
        acct.credits += credits
        acct.calls += calls
        acct.prompt_tokens += prompt_tokens
        acct.completion_tokens += completion_tokens

    def _rollover(self, acct: _Account, day: int) -> None:
        if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
            # Undrained usage belongs to the day it happened on, not to the new one.
            self._side_add(acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens, acct.completion_tokens)
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
        acct.day = day
        acct.spent = 0
        acct.lease = self._fresh_lease(acct.limit, 0)

    def set_account(self, account: int, limit: int, day: int, spent: int) -> None:
        """Create an account, or change its limit.

        `spent` (usage already stored for `day`) is used when the account is new or `day` is
        newer than its current day; for the same or an older day the ledger's own count wins,
        because it includes reservations the store has not seen yet.
        """
        acct = self._accounts.get(account)
        if acct is None:
            self._accounts[account] = _Account(account, limit, day, spent, self._fresh_lease(limit, spent))
        elif day > acct.day:
            self._rollover(acct, day)
            acct.limit = limit
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
        else:
            acct.limit = limit
            if self._auto:
                acct.lease = self._fresh_lease(limit, acct.spent)

    def reserve(self, account: int, cost: int, day: int) -> int:
        """Take `cost` credits from the lease; the lease left, or -1 (nothing changed) if short."""
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            self._rollover(acct, day)
        if acct.lease < cost:
            return -1
        acct.lease -= cost
        acct.spent += cost
        self._record(acct, acct.day, cost, 1, 0, 0)
        return acct.lease

    def refund(self, account: int, cost: int, day: int) -> None:
        """Undo a reservation made on `day`; after a rollover only the stored usage is corrected."""
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"refund for day {day}, but account {account} is still on day {acct.day}")
        if day == acct.day:
            acct.lease += cost
            acct.spent -= cost
        self._record(acct, day, -cost, -1, 0, 0)

    def record_tokens(self, account: int, prompt_tokens: int, completion_tokens: int, day: int) -> None:
        """Add a call's tokens to the usage of `day` (the day its credits were reserved on)."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"tokens for day {day}, but account {account} is still on day {acct.day}")
        self._record(acct, day, 0, 0, prompt_tokens, completion_tokens)

    def remaining(self, account: int, day: int) -> int:
        acct = self._get(account)
        if day > acct.day:
            return self._fresh_lease(acct.limit, 0)
        return acct.lease

    def limit(self, account: int) -> int:
        return self._get(account).limit

    def spent(self, account: int) -> int:
        return self._get(account).spent

    def grant(self, account: int, credits: int, day: int | None = None) -> None:
        """Add credits to the lease; with `day`, roll over first, and drop a grant for a past day."""
        if credits < 0:
            raise ValueError("credits must not be negative")
        acct = self._get(account)
        if day is not None:
            if day > acct.day:
                self._rollover(acct, day)
            elif day < acct.day:
                return
        acct.lease += credits

    def take_back(self, account: int) -> int:
        acct = self._get(account)
        lease = acct.lease
        acct.lease = 0
        return lease

    def drain_usage(self) -> list[tuple[int, int, int, int, int, int]]:
        """Usage since the last drain, as (account, day, credits, calls, prompt_tokens, completion_tokens) deltas.

        Rows whose deltas are all zero are left out; the order is unspecified.
        """
        out: list[tuple[int, int, int, int, int, int]] = []
        for acct in self._dirty:
            if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
                out.append(
                    (acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens, acct.completion_tokens)
                )
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
            acct.dirty = False
        self._dirty = []
        for (account, day), (credits, calls, prompt_tokens, completion_tokens) in self._side.items():
            if credits or calls or prompt_tokens or completion_tokens:
                out.append((account, day, credits, calls, prompt_tokens, completion_tokens))
        self._side = {}
        return out

    def __contains__(self, account: object) -> bool:
        return account in self._accounts

    def __len__(self) -> int:
        return len(self._accounts)

