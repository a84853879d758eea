# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled admission state: the per-account rate-limit buckets and the daily credit ledger.

Every admitted call acquires a token and reserves credits here, so the state is C doubles and
64-bit integers in small extension objects and a call costs one dict lookup and a few
arithmetic operations. `_limits_py` is the pure-Python twin with the same public API and
results; the two mirror each other step by step (same floating-point operation order), and
every test runs against both. Keep them in sync.
"""

from libc.math cimport INFINITY, floor

__all__ = ("BucketResult", "CreditLedger", "TokenBuckets")


# ---------------------------------------------------------------------------------------------
# Token buckets
# ---------------------------------------------------------------------------------------------

# Tolerance in tokens: a client that waits exactly `retry_after` must get through even when
# the clock arithmetic lands a few ulps short of a whole token.
cdef double _EPS = 1e-6


cdef class BucketResult:
    """The outcome of one bucket check, in the numbers the rate-limit headers need."""

    cdef readonly bint allowed
    cdef readonly long long remaining
    cdef readonly double retry_after
    cdef readonly double reset_after

    def __init__(self, bint allowed, long long remaining, double retry_after, double reset_after):
        self.allowed = allowed
        self.remaining = remaining
        self.retry_after = retry_after
        self.reset_after = reset_after

    def __repr__(self):
        return (
            f"BucketResult(allowed={self.allowed!r}, remaining={self.remaining!r}, "
            f"retry_after={self.retry_after!r}, reset_after={self.reset_after!r})"
        )


cdef class _Bucket:
    cdef double tokens
    cdef double last


cdef BucketResult _result(bint allowed, double tokens, double cost, double capacity, double refill):
    """Shared by acquire and peek so both report identical numbers for identical state."""
    cdef BucketResult result = BucketResult.__new__(BucketResult)
    cdef double reset
    result.allowed = allowed
    if allowed:
        result.retry_after = 0.0
    elif refill > 0.0 and cost <= capacity:
        result.retry_after = (cost - tokens) / refill
    else:
        result.retry_after = INFINITY  # the bucket can never hold `cost` tokens
    if refill > 0.0:
        reset = (capacity - tokens) / refill
        if reset < 0.0:
            reset = 0.0
    elif tokens >= capacity:
        reset = 0.0
    else:
        reset = INFINITY
    result.reset_after = reset
    result.remaining = <long long>floor(tokens + _EPS)
    return result


cdef class TokenBuckets:
    """Continuously refilled token buckets keyed by account.

    Capacity and rate are passed on every call rather than stored, so a plan change takes
    effect on the next request without any notification path. Time is whatever the caller
    passes (a monotonic clock in production, a fake one in tests).
    """

    cdef dict _buckets

    def __cinit__(self):
        self._buckets = {}

    def acquire(self, key, double capacity, double refill_per_second, double now, double cost=1.0):
        cdef double cap = capacity if capacity > 0.0 else 0.0
        cdef double refill = refill_per_second if refill_per_second > 0.0 else 0.0
        cdef double tokens
        cdef _Bucket bucket
        if cost < 0.0:
            raise ValueError("cost must not be negative")
        found = self._buckets.get(key)
        if found is None:
            bucket = _Bucket.__new__(_Bucket)
            bucket.tokens = cap
            bucket.last = now
            self._buckets[key] = bucket
        else:
            bucket = <_Bucket>found
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

    def peek(self, key, double capacity, double refill_per_second, double now):
        """The numbers `acquire` would see, without taking a token or touching stored state."""
        cdef double cap = capacity if capacity > 0.0 else 0.0
        cdef double refill = refill_per_second if refill_per_second > 0.0 else 0.0
        cdef double tokens
        cdef _Bucket bucket
        found = self._buckets.get(key)
        if found is None:
            tokens = cap
        else:
            bucket = <_Bucket>found
            tokens = bucket.tokens
            if now > bucket.last:
                tokens = tokens + (now - bucket.last) * refill
            if tokens > cap:
                tokens = cap
        return _result(tokens + _EPS >= 1.0, tokens, 1.0, cap, refill)

    def forget(self, key):
        self._buckets.pop(key, None)

    def __len__(self):
        return len(self._buckets)


# ---------------------------------------------------------------------------------------------
# Credit ledger
# ---------------------------------------------------------------------------------------------


cdef class _Account:
    """One account's budget for its current day, plus usage not yet drained for that day.

    Usage for the current day accumulates on the account itself (no per-call tuple or dict
    entry); only the rare correction for an earlier day goes to the ledger's side table.
    """

    cdef object account
    cdef long long limit
    cdef long long day
    cdef long long spent
    cdef long long lease
    cdef long long credits  # undrained usage for `day`
    cdef long long calls
    cdef long long prompt_tokens
    cdef long long completion_tokens
    cdef bint dirty  # listed in CreditLedger._dirty


cdef class _Delta:
    cdef long long credits
    cdef long long calls
    cdef long long prompt_tokens
    cdef long long completion_tokens


cdef class CreditLedger:
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

    cdef bint _auto
    cdef dict _accounts
    cdef list _dirty
    cdef dict _side

    def __init__(self, bint auto_lease=True):
        self._auto = auto_lease
        self._accounts = {}
        self._dirty = []
        self._side = {}

    cdef _Account _get(self, account):
        found = self._accounts.get(account)
        if found is None:
            raise KeyError(account)
        return <_Account>found

    cdef inline long long _fresh_lease(self, long long limit, long long spent):
        cdef long long lease
        if not self._auto:
            return 0
        lease = limit - spent
        return lease if lease > 0 else 0

    cdef void _side_add(self, account, long long day, long long credits, long long calls, long long prompt_tokens,
                        long long completion_tokens) except *:
        cdef _Delta slot
        key = (account, day)
        found = self._side.get(key)
        if found is None:
            slot = _Delta.__new__(_Delta)
            self._side[key] = slot
        else:
            slot = <_Delta>found
        slot.credits += credits
        slot.calls += calls
        slot.prompt_tokens += prompt_tokens
        slot.completion_tokens += completion_tokens

    cdef void _record(self, _Account acct, long long day, long long credits, long long calls, long long prompt_tokens,
                      long long completion_tokens) except *:
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

    cdef void _rollover(self, _Account acct, long long day) except *:
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

    def set_account(self, account, long long limit, long long day, long long spent):
        """Create an account, or change its limit.

        `spent` (usage already stored for `day`) is used when the account is new or `day` is
        newer than its current day; for the same or an older day the ledger's own count wins,
        because it includes reservations the store has not seen yet.
        """
        cdef _Account acct
        found = self._accounts.get(account)
        if found is None:
            acct = _Account.__new__(_Account)
            acct.account = account
            acct.limit = limit
            acct.day = day
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
            self._accounts[account] = acct
            return
        acct = <_Account>found
        if day > acct.day:
            self._rollover(acct, day)
            acct.limit = limit
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
        else:
            acct.limit = limit
            if self._auto:
                acct.lease = self._fresh_lease(limit, acct.spent)

    def reserve(self, account, long long cost, long long day):
        """Take `cost` credits from the lease; the lease left, or -1 (nothing changed) if short."""
        cdef _Account acct
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

    def refund(self, account, long long cost, long long day):
        """Undo a reservation made on `day`; after a rollover only the stored usage is corrected."""
        cdef _Account acct
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"refund for day {day}, but account {account} is still on day {acct.day}")
        if day == acct.day:
            acct.lease += cost
            acct.spent -= cost
        self._record(acct, day, -cost, -1, 0, 0)

    def record_tokens(self, account, long long prompt_tokens, long long completion_tokens, long long day):
        """Add a call's tokens to the usage of `day` (the day its credits were reserved on)."""
        cdef _Account acct
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"tokens for day {day}, but account {account} is still on day {acct.day}")
        self._record(acct, day, 0, 0, prompt_tokens, completion_tokens)

    def remaining(self, account, long long day):
        cdef _Account acct = self._get(account)
        if day > acct.day:
            return self._fresh_lease(acct.limit, 0)
        return acct.lease

    def limit(self, account):
        return self._get(account).limit

    def spent(self, account):
        return self._get(account).spent

    def grant(self, account, long long credits, day=None):
        """Add credits to the lease; with `day`, roll over first, and drop a grant for a past day."""
        cdef _Account acct
        cdef long long d
        if credits < 0:
            raise ValueError("credits must not be negative")
        acct = self._get(account)
        if day is not None:
            d = day
            if d > acct.day:
                self._rollover(acct, d)
            elif d < acct.day:
                return
        acct.lease += credits

    def take_back(self, account):
        cdef _Account acct = self._get(account)
        cdef long long lease = acct.lease
        acct.lease = 0
        return lease

    def drain_usage(self):
        """Usage since the last drain, as (account, day, credits, calls, prompt_tokens, completion_tokens) deltas.

        Rows whose deltas are all zero are left out; the order is unspecified.
        """
        cdef list out = []
        cdef _Account acct
        cdef _Delta delta
        for acct in self._dirty:
            if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
                out.append((acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens,
                            acct.completion_tokens))
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
            acct.dirty = False
        self._dirty = []
        for key, found in self._side.items():
            delta = <_Delta>found
            if delta.credits or delta.calls or delta.prompt_tokens or delta.completion_tokens:
                out.append((key[0], key[1], delta.credits, delta.calls, delta.prompt_tokens, delta.completion_tokens))
        self._side = {}
        return out

    def __contains__(self, account):
        return account in self._accounts

    def __len__(self):
        return len(self._accounts)
