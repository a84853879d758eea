"""`GET /api/key`: what the calling key may do, for the key holder (OpenRouter's `GET /api/v1/key`).

A program or a page holding a key asks, before spending, who it is and what is left: the account,
its plan, the key (its id and the hint `keys list` shows), today's credits (limit, used,
remaining, reset) and the per-minute standing. The figures come from the limits' own
`peek_headers`, so `credits.remaining` is the X-Clex-Credits-Remaining a proxied call made at
that moment would carry, and the answer carries those six metering headers too (SPEC: every
answer after authentication does).

Asking is free: no credits, and no slot of the plan's per-minute limit (`peek_headers` takes
nothing). So that a polling loop cannot turn it into a load, each key has its own small
allowance (`KEY_INFO_PER_MINUTE`, a `LookupThrottle` apart from the limits' buckets), one per
gateway: with several workers each counts its own. Beyond it: SPEC's 429 with `error.limit`
`api_key_requests_per_minute` and `Retry-After`.

The key hint is computed from the key the caller sent (`key_hint`): the caller holds the key, so
that is exact, and the directory keeps no hints. The key's name and limits (`KeyPolicy`: daily
cap, expiry, model allow-list) come from the directory; `credits` are the tighter of the key's
budget and the account's (the one the headers report), and `credits.applies` says which. An
expired key is refused here as on the request path (401).
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from clexproxy.auth import Account, Directory, KeyPolicy, iso_utc
from clexproxy.clock import SECONDS_PER_DAY, Clock, SystemClock, utc_day
from clexproxy.errors import RateLimited
from clexproxy.fastpath.limits import TokenBuckets
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY, request_id
from clexproxy.headers import (
    CREDITS_LIMIT,
    CREDITS_REMAINING,
    CREDITS_RESET,
    RATELIMIT_LIMIT_REQUESTS,
    RATELIMIT_REMAINING_REQUESTS,
    RATELIMIT_RESET_REQUESTS,
)
from clexproxy.limits.base import LedgerLimits, Limits
from clexproxy.limits.headers import retry_when
from clexproxy.store.base import key_hint

KEY_INFO_PER_MINUTE = 60
THROTTLE_LIMIT = "api_key_requests_per_minute"
NO_STORE = "no-store"



def limits_clock(limits: Limits) -> Clock:
    """The limits' clock (a test's manual one included), so the throttle and the figures share one time."""
    return limits.clock if isinstance(limits, LedgerLimits) else SystemClock()


class LookupThrottle:
    """A free endpoint's own allowance per caller and minute (`GET /api/key`, `GET /api/usage`).

    The endpoints charge nothing and take no slot of the plan's limit, so that a polling loop
    cannot turn them into a load each has its own `TokenBuckets`, one per gateway, kept beside it
    rather than in it: tests run several gateways in one process, whose key ids overlap, and the
    gateway's composition need not know these endpoints. Beyond it: SPEC's 429 with `error.limit`.
    """

    def __init__(self, endpoint: str, limit: str, per_minute: int) -> None:
        self.endpoint, self.limit, self.per_minute = endpoint, limit, per_minute
        self._buckets: weakref.WeakKeyDictionary[Gateway, TokenBuckets] = weakref.WeakKeyDictionary()

    def check(self, gateway: Gateway, caller: int, metering: dict[str, str]) -> None:
        """Count one lookup by `caller` (an id: a key's, or a console user's made negative), or raise the 429."""
        buckets = self._buckets.get(gateway)
        if buckets is None:
            buckets = self._buckets[gateway] = TokenBuckets()
        now = limits_clock(gateway.limits).monotonic()
        bucket = buckets.acquire(caller, self.per_minute, self.per_minute / 60.0, now)
        if not bucket.allowed:
            raise RateLimited(
                f"Too many lookups: {self.endpoint} allows {self.per_minute} requests per minute per caller. "
                + retry_when(bucket.retry_after),
                limit=self.limit,
                retry_after=bucket.retry_after,
                headers=metering,
            )


KEY_INFO_THROTTLE = LookupThrottle("GET /api/key", THROTTLE_LIMIT, KEY_INFO_PER_MINUTE)


def bearer_token(authorization: str) -> str:
    """The key in an Authorization header `Directory.authenticate` accepted (its scheme, one space, the key)."""
    return authorization.split(" ", 1)[1].strip()


def checked_policy(directory: Directory, key_id: int, wall: float) -> KeyPolicy | None:
    """The key's limits, or its expiry's 401 (as the request path refuses it)."""
    policy = directory.policies.get(key_id)
    if policy is not None:
        expired = policy.expired(wall)
        if expired is not None:
            raise expired
    return policy


def key_limits(policy: KeyPolicy | None) -> dict[str, Any]:
    """A key's limits as the API answers them (null: none)."""
    if policy is None:
        return {"daily_cap": None, "expires_at": None, "models": None}
    return {
        "daily_cap": policy.budget.plan.credits_per_day if policy.budget is not None else None,
        "expires_at": iso_utc(policy.expires_at) if policy.expires_at is not None else None,
        "models": sorted(policy.models) if policy.models is not None else None,
    }


def budget_of(policy: KeyPolicy | None) -> Account | None:
    return policy.budget if policy is not None else None


async def key_info(request: web.Request) -> web.Response:
    """The calling key's account, plan, key, today's credits and per-minute standing; charges nothing."""
    gateway = request.app[GATEWAY]
    authorization = request.headers.get("Authorization", "")
    entry, account = gateway.directory.authenticate(authorization)
    limits = gateway.limits
    clock = limits_clock(limits)
    wall = clock.time()
    policy = checked_policy(gateway.directory, entry.key_id, wall)
    budget = budget_of(policy)
    account_metering = limits.peek_headers(account)
    metering = account_metering if budget is None else limits.peek_headers(account, budget)
    applies = "account" if metering[CREDITS_REMAINING] == account_metering[CREDITS_REMAINING] else "key"
    KEY_INFO_THROTTLE.check(gateway, entry.key_id, metering)
    plan = account.plan
    limit = int(metering[CREDITS_LIMIT])
    remaining = int(metering[CREDITS_REMAINING])
    reset_at = datetime.fromtimestamp((utc_day(wall) + 1) * SECONDS_PER_DAY, UTC)
    payload: dict[str, Any] = {
        "object": "api_key",
        "account": {"name": account.name},
        "plan": {
            "name": plan.name,
            "credits_per_day": plan.credits_per_day,
            "requests_per_minute": plan.requests_per_minute,
            "max_keys": plan.max_keys,
        },
        "key": {
            "id": entry.key_id,
            "name": gateway.directory.names.get(entry.key_id, ""),
            "hint": key_hint(bearer_token(authorization)),
            **key_limits(policy),
        },
        "credits": {
            "limit": limit,
            "used": max(0, limit - remaining),
            "remaining": remaining,
            "applies": applies,
            "reset_seconds": int(metering[CREDITS_RESET]),
            "reset_at": reset_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "requests_per_minute": {
            "limit": int(metering[RATELIMIT_LIMIT_REQUESTS]),
            "remaining": int(metering[RATELIMIT_REMAINING_REQUESTS]),
            "reset": metering[RATELIMIT_RESET_REQUESTS],
        },
    }
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={**metering, "X-Request-Id": request_id(request), "Cache-Control": NO_STORE},
    )
