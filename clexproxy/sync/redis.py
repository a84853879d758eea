"""What workers on several processes and hosts agree on through Redis: credit leases and per-minute slots.

Redis is never asked per request. A worker takes a *lease* of an account's daily credits (or a
batch of its per-minute *slots*) in one Lua script, then spends it from memory; it comes back
only when the lease runs out. Both scripts run atomically on Redis, so two workers can never
be handed the same credit or the same slot: the total handed out never exceeds the budget.

Credits: one hash per account and UTC day, `{limit, left}`, created by the first lease of the
day from the plan's limit minus what the store says was already spent, and expiring after
26 hours, so the daily reset needs no cron. A slice is `min(want, max(deficit, left / 8))`: it
shrinks toward one call's cost as the budget nears its end, so the last credits are not parked
in an idle worker. Each lease carries an id; asking again with the same id (after a timeout or
a reconnect) returns the same grant instead of a second one. A lease whose reply never came
(Redis restarted between running the script and answering) is asked for once more by id when
Redis is back (`recover_credits`), so a lost reply strands nothing.

Slots: GCRA (the algorithm of redis-cell and Stripe's limiters) on Redis's own clock, with the
same shape as the in-process bucket: a burst of `rpm`, refilled at `rpm` per minute. A worker
takes the slots its waiting calls need at once, and more for calls to come only out of room to
spare; a refusal says how long until the next slot frees, and the worker caches it until then.
Slots a worker did not use go back (`give_slots`): the schedule moves back by as many, never
before now, once per return id.

Every round trip is reported to an observer (the metrics): its duration by operation when it
succeeds, the operation when it fails. The key-change subscription counts too, so a Redis that
goes away shows within seconds even when no call needs it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

__all__ = ("CreditGrant", "RedisError", "RedisObserver", "RedisSync", "SlotGrant")

T = TypeVar("T")

DAY_TTL_SECONDS = 26 * 3600  # a day's budget outlives its UTC day by two hours, then Redis drops it
GRANT_MEMORY_SECONDS = 600  # how long a lease id is remembered for a retried request
SLICE_DIVISOR = 8  # by default a lease takes at most 1/8 of what is left (or the call's deficit, if larger)

# KEYS[1]: the account's budget for the day (hash); KEYS[2]: this lease's record. ARGV: limit, spent
# before Redis knew the day, want, deficit, divisor, ttl, grant memory, unit. Returns {granted, left}.
# Grants are the deficit plus whole units (one call's cost): with calls of one price, no lease is
# ever left holding less than a call, so the whole budget can be spent.
_TAKE_CREDITS = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local done = redis.call('GET', KEYS[2])
if done then
  return {tonumber(done), tonumber(redis.call('HGET', key, 'left') or 0)}
end
if tonumber(ARGV[4]) == 0 then
  -- A recovery (deficit 0): this id took nothing yet, and now never will, even if the lost
  -- original is still on its way here.
  redis.call('SET', KEYS[2], 0, 'EX', tonumber(ARGV[7]))
  return {0, tonumber(redis.call('HGET', key, 'left') or 0)}
end
if redis.call('EXISTS', key) == 0 then
  if tonumber(ARGV[2]) < 0 then return {-1, -1} end
  redis.call('HSET', key, 'limit', limit, 'left', limit - tonumber(ARGV[2]))
  redis.call('EXPIRE', key, tonumber(ARGV[6]))
else
  local old = tonumber(redis.call('HGET', key, 'limit'))
  if old ~= limit then
    redis.call('HINCRBY', key, 'left', limit - old)
    redis.call('HSET', key, 'limit', limit)
  end
end
local left = tonumber(redis.call('HGET', key, 'left'))
local deficit = tonumber(ARGV[4])
local unit = tonumber(ARGV[8])
local take = 0
if left >= deficit then
  local slice = math.min(math.floor(left / tonumber(ARGV[5])), tonumber(ARGV[3]), left)
  take = deficit
  if slice > deficit then take = deficit + unit * math.floor((slice - deficit) / unit) end
  redis.call('HINCRBY', key, 'left', -take)
  left = left - take
end
redis.call('SET', KEYS[2], take, 'EX', tonumber(ARGV[7]))
return {take, left}
"""

# KEYS[1]: the account's budget for the day; KEYS[2]: this return's record. ARGV: credits, memory.
# Gives back an unused lease, once even if asked twice; a day Redis has already dropped is not
# recreated (its credits are of no use any more).
_GIVE_CREDITS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', tonumber(ARGV[2])) == false then
  return tonumber(redis.call('HGET', KEYS[1], 'left'))
end
return redis.call('HINCRBY', KEYS[1], 'left', tonumber(ARGV[1]))
"""

# KEYS[1]: the account's budget for the day; KEYS[2]: this debit's record. ARGV: credits, memory.
# Charges credits a fail-open plan spent while Redis was away, once even if asked twice. A day
# Redis does not hold is left alone: its first lease will start from the store, which has them.
_DEBIT_CREDITS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', tonumber(ARGV[2])) == false then
  return {1, tonumber(redis.call('HGET', KEYS[1], 'left'))}
end
return {1, redis.call('HINCRBY', KEYS[1], 'left', -tonumber(ARGV[1]))}
"""

# KEYS[1]: the account's theoretical arrival time, in µs on Redis's clock. ARGV: rpm, slots needed
# (calls waiting for one), slots wanted beyond those, divisor. What is needed is granted first, up
# to the room; slots beyond it come only from what the room holds past that, at most 1/divisor of it.
# Returns {granted, µs until a slot frees (when none granted), slots left after the grant}.
_TAKE_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rpm = tonumber(ARGV[1])
if rpm <= 0 then return {0, 86400000000, 0} end
local interval = 60000000 / rpm
local depth = 60000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + depth - tat) / interval + 1e-9)
local k = tonumber(ARGV[2])
if k > room then k = room end
if k <= 0 then
  return {0, math.ceil(tat + interval - depth - now), 0}
end
local extra = math.min(tonumber(ARGV[3]), math.floor((room - k) / tonumber(ARGV[4])))
if extra > 0 then k = k + extra end
tat = tat + k * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {k, 0, room - k}
"""

# KEYS[1]: the account's theoretical arrival time; KEYS[2]: this return's record. ARGV: rpm, slots,
# memory. Slots a worker took and did not use move the schedule back by as much, never before now
# (a schedule at or before now already has its whole burst free). Once per return id.
# Returns the slots given back, or -1 when this return was made before.
_GIVE_SLOTS = """
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', tonumber(ARGV[3])) == false then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rpm = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if rpm <= 0 or tat <= now then return 0 end
local interval = 60000000 / rpm
local moved = tat - math.max(now, tat - tonumber(ARGV[2]) * interval)
tat = tat - moved
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return math.ceil(moved / interval - 1e-9)
"""


@dataclass(frozen=True, slots=True)
class CreditGrant:
    granted: int  # credits now leased to this worker (0: the day's budget cannot cover the deficit)
    left: int  # credits Redis still holds for the day after this grant


@dataclass(frozen=True, slots=True)
class SlotGrant:
    granted: int  # per-minute slots now this worker's to spend
    retry_after: float  # seconds until a slot frees, when none was granted
    left: int  # slots still free on Redis after this grant


class RedisObserver(Protocol):
    """What is told about each Redis round trip (clexproxy.observability.metrics.Metrics is one)."""

    def redis_call(self, operation: str, seconds: float) -> None: ...

    def redis_failed(self, operation: str) -> None: ...


class _Unobserved:
    def redis_call(self, operation: str, seconds: float) -> None:
        return None

    def redis_failed(self, operation: str) -> None:
        return None


class RedisSync:
    """One process's connection to the shared limits. Every call is one Redis round trip."""

    def __init__(self, url: str, *, prefix: str = "clex", timeout: float = 1.0,
                 observer: RedisObserver | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.observer: RedisObserver = observer or _Unobserved()
        # A dropped connection (a Redis restart) is retried: every script here is safe to run twice.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), 2),
        )
        self._take_credits = self._redis.register_script(_TAKE_CREDITS)
        self._give_credits = self._redis.register_script(_GIVE_CREDITS)
        self._debit_credits = self._redis.register_script(_DEBIT_CREDITS)
        self._take_slots = self._redis.register_script(_TAKE_SLOTS)
        self._give_slots = self._redis.register_script(_GIVE_SLOTS)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _trip(self, operation: str, trip: Awaitable[T]) -> T:
        """Await one round trip, and tell the observer how it went."""
        started = time.perf_counter()
        try:
            result = await trip
        except RedisError:
            self.observer.redis_failed(operation)
            raise
        self.observer.redis_call(operation, time.perf_counter() - started)
        return result

    async def ping(self) -> bool:
        return bool(await self._trip("ping", self._redis.ping()))

    # One hash tag per account: an account's keys live on one Redis Cluster slot, as its scripts need.
    def _budget_key(self, account_id: int, day: int) -> str:
        return f"{self.prefix}:{{{account_id}}}:credits:{day}"

    def _lease_key(self, account_id: int, lease_id: str) -> str:
        """The record of what one lease took: how a retried or recovered lease gets the same answer."""
        return f"{self.prefix}:{{{account_id}}}:lease:{lease_id}"

    @staticmethod
    def new_lease_id() -> str:
        """Unique, and naming the process: what a dead worker had leased can be read back from Redis."""
        return f"{os.getpid()}-{secrets.token_hex(6)}"

    async def take_credits(self, account_id: int, day: int, *, limit: int, spent: int, want: int, deficit: int,
                           unit: int, lease_id: str, divisor: int = SLICE_DIVISOR) -> CreditGrant:
        """Lease up to `want` credits (at least `deficit`, or none) of the account's budget for `day`.

        `spent` is what the store holds as spent for the day; it only counts when this is the
        day's first lease anywhere. With `spent` < 0 a day Redis does not hold yet is not
        created: the grant is -1, and the caller asks again with the store's figure. Beyond the
        deficit, credits come in multiples of `unit` (the call's cost). Retrying with the same
        `lease_id` returns the same grant.
        """
        if deficit < 1:
            raise ValueError("a lease covers at least one credit (deficit 0 is how recover_credits asks)")
        granted, left = await self._trip("take_credits", self._take_credits(
            keys=[self._budget_key(account_id, day), self._lease_key(account_id, lease_id)],
            args=[limit, spent, max(want, deficit), deficit, max(1, divisor), DAY_TTL_SECONDS, GRANT_MEMORY_SECONDS,
                  max(1, unit)],
        ))
        return CreditGrant(int(granted), int(left))

    async def recover_credits(self, account_id: int, day: int, lease_id: str) -> int:
        """What a lease whose reply was lost took: the same grant, or 0, after which that id can take nothing."""
        granted, _ = await self._trip("recover_credits", self._take_credits(
            keys=[self._budget_key(account_id, day), self._lease_key(account_id, lease_id)],
            args=[0, -1, 0, 0, 1, DAY_TTL_SECONDS, GRANT_MEMORY_SECONDS, 1],
        ))
        return max(0, int(granted))

    async def give_credits(self, account_id: int, day: int, credits: int, return_id: str) -> int | None:
        """Return an unused lease (once per `return_id`); the day's credits left, or None if Redis dropped the day."""
        if credits <= 0:
            return None
        left = await self._trip("give_credits", self._give_credits(
            keys=[self._budget_key(account_id, day), f"{self.prefix}:{{{account_id}}}:return:{return_id}"],
            args=[credits, GRANT_MEMORY_SECONDS],
        ))
        return None if left is None or int(left) < 0 else int(left)

    async def debit_credits(self, account_id: int, day: int, credits: int, debit_id: str) -> int | None:
        """Charge credits spent without a lease (once per `debit_id`); the day's credits left, or None if not held."""
        held, left = await self._trip("debit_credits", self._debit_credits(
            keys=[self._budget_key(account_id, day), f"{self.prefix}:{{{account_id}}}:debit:{debit_id}"],
            args=[credits, GRANT_MEMORY_SECONDS],
        ))
        return int(left) if int(held) else None

    async def credits_left(self, account_id: int, day: int) -> int | None:
        left = await self._trip("credits_left", self._redis.hget(self._budget_key(account_id, day), "left"))
        return None if left is None else int(left)

    @property
    def keys_channel(self) -> str:
        return f"{self.prefix}:keys"

    async def announce_key_change(self) -> None:
        """Tell every worker on every host to re-read the store's keys and accounts now (a revoke, a plan change)."""
        await self._trip("publish", self._redis.publish(self.keys_channel, b"changed"))

    async def key_changes(self) -> AsyncGenerator[None, None]:
        """One item per announced change, for as long as the subscription lives (a Redis error ends it)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._trip("subscribe", pubsub.subscribe(self.keys_channel))
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except RedisError:  # the connection is lost: Redis is down as surely as when a trip fails
                    self.observer.redis_failed("subscribe")
                    raise
                if message is not None:
                    yield None
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def _rpm_key(self, account_id: int) -> str:
        return f"{self.prefix}:{{{account_id}}}:rpm"

    async def take_slots(self, account_id: int, rpm: int, need: int, *, extra: int = 0, divisor: int = 1) -> SlotGrant:
        """Take up to `need` of the account's per-minute slots, or learn how long until one frees.

        `extra` more come only out of the room left past `need`, at most 1/`divisor` of it: a
        worker's guess at calls still to come may not take the slots of calls already waiting
        elsewhere.
        """
        granted, wait_us, left = await self._trip(
            "take_slots", self._take_slots(keys=[self._rpm_key(account_id)],
                                           args=[rpm, need, max(0, extra), max(1, divisor)])
        )
        return SlotGrant(int(granted), int(wait_us) / 1e6, int(left))

    async def give_slots(self, account_id: int, rpm: int, slots: int, return_id: str) -> int:
        """Return slots taken and not used (once per `return_id`); how many went back (0: the minute refilled them)."""
        if slots <= 0:
            return 0
        back = await self._trip("give_slots", self._give_slots(
            keys=[self._rpm_key(account_id), f"{self.prefix}:{{{account_id}}}:slots-back:{return_id}"],
            args=[rpm, slots, GRANT_MEMORY_SECONDS],
        ))
        return max(0, int(back))
