"""Keep the in-memory image in step with the store: keys and plans in, usage out.

The request path reads only memory (the `Directory` and the `Limits`); `StoreSync` is what
keeps that memory true to the store, off the path, on two timers. One applies the store's
change feed (keys created or revoked by the CLI or the admin API, plan changes); the other
writes usage behind, so a hard crash loses at most `store_flush_seconds` of it, and squares the
shared limits up with Redis once an outage is over (`Limits.reconcile`). With Redis, a change
announced there (`announce_key_change`) is applied at once by every worker on every host
instead of at its next poll; polling stays the backstop.

The write-behind carries two kinds of rows in one transaction (`Store.add_usage`): the accounts'
daily usage and the usage by key and model (`Limits.drain_detail`). A capped key's budget is
seeded like an account's: at load, and (shared) at a day's first lease, from what the store holds
as that key's spending (`stored_spend` answers for budget ids, `KEY_BUDGET_BASE` + key id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clexproxy.auth import KEY_BUDGET_BASE, Directory
from clexproxy.config import StoreSettings
from clexproxy.limits.base import Limits
from clexproxy.store.base import KeyUsageRow, Store, UsageRow
from clexproxy.sync.redis import RedisError, RedisSync

log = logging.getLogger("clexproxy.sync.store")

# The key-change listener loses nothing when cancelled, but redis-py can swallow a cancellation that
# lands while it subscribes (a stop right after a start hung there, 1 time in 8): asked again, then left.
LISTENER_STOP_SECONDS = 1.0


async def _cancel(task: asyncio.Task[None], within: float) -> None:
    """Cancel `task` and wait for it to end, cancelling again while it swallows the cancellation, `within` at most."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait((task,), timeout=0.1)
    if not task.done():
        log.warning("task %s did not stop within %.1f s; leaving it", task.get_name(), within)
    elif not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


class StoreSync:
    """The store poll, the key-change subscription and the usage write-behind of one gateway.

    `load` fills the directory and the limits from the store; `start` starts the timers and
    `stop` ends them without losing usage (the last write is the gateway's, `flush_usage`).
    """

    def __init__(self, settings: StoreSettings, store: Store, directory: Directory, limits: Limits,
                 redis: RedisSync | None = None) -> None:
        self._settings = settings
        self._store = store
        self._directory = directory
        self._limits = limits
        self._redis = redis
        self._seq = 0
        self._data_version = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._unflushed: list[UsageRow] = []
        self._unflushed_detail: list[KeyUsageRow] = []
        self._flushing = asyncio.Lock()

    async def load(self) -> None:
        """Read every account and key and today's usage into memory."""
        accounts, keys, self._seq = await self._store.changes_since(0)
        today = self._limits.today()
        spent = await self._store.credits_spent(today)
        for account in self._directory.apply(accounts, keys):
            self._limits.track(account, spent.get(account.id, 0))
        budgets = self._directory.budgets()
        if budgets:
            key_spent = await self._store.key_credits_spent(today)
            for budget in budgets:
                self._limits.track(budget, key_spent.get(budget.id - KEY_BUDGET_BASE, 0))
        self._data_version = await self._store.change_marker()

    def start(self) -> None:
        """Start the poll and the write-behind timers, and the key-change listener with Redis."""
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="clexproxy-store-poll"),
            asyncio.create_task(self._flush_loop(), name="clexproxy-usage-flush"),
        ]
        if self._redis is not None:  # waits on Redis, not on a timer: cancelled at stop, which loses nothing
            self._listener = asyncio.create_task(self._key_change_loop(), name="clexproxy-key-changes")

    async def stop(self) -> None:
        """End the timers: told to stop, not cancelled, since a cancelled write-behind could drop usage."""
        self._stopping.set()
        if self._listener is not None:
            await _cancel(self._listener, LISTENER_STOP_SECONDS)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sync_store(self, force: bool = False) -> None:
        """Apply what was written to the store since the last look.

        `data_version` only moves for other connections' commits, so our own writes (admin API) pass `force`.
        """
        version = await self._store.change_marker()
        if version == self._data_version and not force:
            return
        self._data_version = version
        accounts, keys, self._seq = await self._store.changes_since(self._seq)
        for account in self._directory.apply(accounts, keys):
            self._limits.track(account)

    async def flush_usage(self) -> None:
        """Write usage behind; a failed write keeps its deltas for the next try, so nothing is lost.

        One write at a time: a caller that drains nothing while the timer's write is still in flight
        must not return before that write lands, or it reads the store short (Redis seeding a day from
        `stored_spend`, the admin usage report, a test's totals).
        """
        async with self._flushing:
            deltas, self._unflushed = self._unflushed + self._limits.drain(), []
            detail, self._unflushed_detail = self._unflushed_detail + self._limits.drain_detail(), []
            if not deltas and not detail:
                return
            try:
                await self._store.add_usage(deltas, detail)
            except BaseException:
                self._unflushed = deltas + self._unflushed
                self._unflushed_detail = detail + self._unflushed_detail
                raise

    async def stored_spend(self, account_id: int, day: int) -> int:
        """What the store holds as spent by the account on `day`, this process's usage written first.

        `SharedLimits` asks for it once per account and day (the day's first lease anywhere).
        """
        await self.flush_usage()
        if account_id >= KEY_BUDGET_BASE:  # a capped key's budget
            return (await self._store.key_credits_spent(day)).get(account_id - KEY_BUDGET_BASE, 0)
        spent = await self._store.credits_spent(day)
        return spent.get(account_id, 0)

    async def announce_key_change(self) -> None:
        """After a write to keys or accounts: every worker on every host re-reads now, not at its next poll."""
        if self._redis is not None:
            try:
                await self._redis.announce_key_change()
            except RedisError as exc:
                log.warning("could not announce a key change (%s); workers pick it up at their next poll", exc)

    async def _tick(self, seconds: float) -> bool:
        """Sleep `seconds`; False once stopping."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _poll_loop(self) -> None:
        while await self._tick(self._settings.poll_seconds):
            try:
                await self.sync_store()
            except Exception:  # the loop must outlive a locked or briefly unreadable database
                log.exception("store sync failed; retrying")

    async def _key_change_loop(self) -> None:
        """Re-read the store at once when a key or plan change is announced on Redis (polling is the backstop)."""
        assert self._redis is not None
        wait = 0.1
        while not self._stopping.is_set():
            changes = self._redis.key_changes()
            try:
                async for _ in changes:
                    wait = 0.1
                    await self.sync_store(force=True)
            except RedisError as exc:
                log.warning("key-change subscription lost (%s); store polling covers until it is back", exc)
            except Exception:
                log.exception("store sync after a key change failed")
            finally:
                await changes.aclose()
            if not await self._tick(wait):
                return
            wait = min(5.0, wait * 2)

    async def _flush_loop(self) -> None:
        while await self._tick(self._settings.flush_seconds):
            try:
                await self.flush_usage()
            except Exception:
                log.exception("usage write-behind failed; retrying")
            if self._limits.unsettled:  # what a Redis outage left open, squared once it is back
                try:
                    await self._limits.reconcile()
                except Exception:  # Redis errors wait inside reconcile; anything else must not end the timer
                    log.exception("reconciling with Redis failed; retrying")
