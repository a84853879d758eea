"""The gateway's runtime state and the background work that keeps it in step with the store.

The request path reads only what is here, in memory. Two timers do the rest: one applies the
store's change feed (keys created or revoked by the CLI, plan changes) and one writes usage
behind, so a hard crash loses at most `store_flush_seconds` of usage. With Redis
(`redis_url`), limits are shared with every other worker (clexproxy/limits/shared.py), a
change announced on Redis is applied at once instead of at the next poll, and the leases
still held at shutdown go back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import BinaryIO

from clexproxy.auth import Directory
from clexproxy.catalog import Catalog
from clexproxy.clock import Clock
from clexproxy.config import Settings
from clexproxy.keepalive import KeepAlives
from clexproxy.limits.local import Meter
from clexproxy.limits.refusals import RecentRefusals
from clexproxy.limits.shared import SharedLimits
from clexproxy.observability.accesslog import AccessLog
from clexproxy.observability.metrics import Metrics, NullMetrics
from clexproxy.store.base import Store, UsageRow
from clexproxy.sync.redis import RedisError, RedisSync
from clexproxy.upstream.pool import UpstreamPool

log = logging.getLogger("clexproxy.gateway")

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


def _metrics(settings: Settings) -> Metrics:
    catalog = settings.catalog
    info = {
        "demo": str(settings.server.demo).lower(),
        "models": str(len(catalog.models)),
        "plans": ",".join(catalog.plans),
        "providers": ",".join(sorted(catalog.providers)),
    }
    cls = Metrics if settings.metrics.enabled else NullMetrics
    return cls(info=info, metrics_dir=settings.metrics.dir, flush_seconds=settings.metrics.flush_seconds)


class Gateway:
    def __init__(self, settings: Settings, clock: Clock, store: Store, access_stream: BinaryIO | None = None) -> None:
        self.settings = settings
        self.catalog: Catalog = settings.catalog
        self.clock = clock
        self.store = store
        self.directory = Directory(self.catalog)
        self.meter = Meter(clock, shared=bool(settings.redis.url))
        self.metrics = _metrics(settings)
        self.redis: RedisSync | None = None
        if settings.redis.url:
            self.redis = RedisSync(settings.redis.url, observer=self.metrics)
            self.meter.share(SharedLimits(self.redis, self.meter.ledger, settings.server.workers, self._stored_spend,
                                          observer=self.metrics))
        self.upstream = UpstreamPool(settings.upstream, self.catalog, settings.credentials)
        self.access_log = AccessLog(access_stream, settings.server.log_format)
        self.keepalives = KeepAlives(settings.sse.keepalive_seconds)
        self.refusals = RecentRefusals()
        self.ready = False
        self._seq = 0
        self._data_version = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._unflushed: list[UsageRow] = []
        self._flushing = asyncio.Lock()

    async def start(self) -> None:
        """Load accounts, keys and today's usage, then start the sync timers."""
        accounts, keys, self._seq = await self.store.changes_since(0)
        spent = await self.store.credits_spent(self.meter.today())
        for account in self.directory.apply(accounts, keys):
            self.meter.track(account, spent.get(account.id, 0))
        self._data_version = await self.store.change_marker()
        self.metrics.start()
        self.access_log.start()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="clexproxy-store-poll"),
            asyncio.create_task(self._flush_loop(), name="clexproxy-usage-flush"),
        ]
        if self.redis is not None:  # waits on Redis, not on a timer: cancelled at stop, which loses nothing
            self._listener = asyncio.create_task(self._key_change_loop(), name="clexproxy-key-changes")
        self.ready = True
        log.info("loaded %d accounts and %d keys", len(self.directory.accounts), len(self.directory.keys))

    async def _stored_spend(self, account_id: int, day: int) -> int:
        """What the store holds as spent by the account on `day`, this process's usage written first.

        Redis asks for it once per account and day (the day's first lease anywhere).
        """
        await self.flush_usage()
        spent = await self.store.credits_spent(day)
        return spent.get(account_id, 0)

    async def stop(self) -> None:
        self.ready = False
        # The timers are told to stop, not cancelled: a cancelled write-behind could drop usage.
        self._stopping.set()
        if self._listener is not None:
            await _cancel(self._listener, LISTENER_STOP_SECONDS)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.meter.shared is not None and self.redis is not None:
            returned = await self.meter.shared.give_back(self.meter.today())
            log.info("returned %d leased credits to Redis", returned)
            await self.redis.close()
        await self.flush_usage()
        await self.metrics.stop()
        await self.access_log.stop()
        self.keepalives.close()
        await self.upstream.close()
        await self.store.close()

    async def sync_store(self, force: bool = False) -> None:
        """Apply what was written to the store since the last look.

        `data_version` only moves for other connections' commits, so our own writes (admin API) pass `force`.
        """
        version = await self.store.change_marker()
        if version == self._data_version and not force:
            return
        self._data_version = version
        accounts, keys, self._seq = await self.store.changes_since(self._seq)
        for account in self.directory.apply(accounts, keys):
            self.meter.track(account)

    async def flush_usage(self) -> None:
        """Write usage behind; a failed write keeps its deltas for the next try, so nothing is lost.

        One write at a time: a caller that drains nothing while the timer's write is still in flight
        must not return before that write lands, or it reads the store short (Redis seeding a day from
        `_stored_spend`, the admin usage report, a test's totals).
        """
        async with self._flushing:
            deltas, self._unflushed = self._unflushed + self.meter.drain(), []
            if not deltas:
                return
            try:
                await self.store.add_usage(deltas)
            except BaseException:
                self._unflushed = deltas + self._unflushed
                raise

    async def _tick(self, seconds: float) -> bool:
        """Sleep `seconds`; False once the gateway is stopping."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _poll_loop(self) -> None:
        while await self._tick(self.settings.store.poll_seconds):
            try:
                await self.sync_store()
            except Exception:  # the loop must outlive a locked or briefly unreadable database
                log.exception("store sync failed; retrying")

    async def _key_change_loop(self) -> None:
        """Re-read the store at once when a key or plan change is announced on Redis (polling is the backstop)."""
        assert self.redis is not None
        wait = 0.1
        while not self._stopping.is_set():
            changes = self.redis.key_changes()
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

    async def announce_key_change(self) -> None:
        """After a write to keys or accounts: every worker on every host re-reads now, not at its next poll."""
        if self.redis is not None:
            try:
                await self.redis.announce_key_change()
            except RedisError as exc:
                log.warning("could not announce a key change (%s); workers pick it up at their next poll", exc)

    async def _flush_loop(self) -> None:
        while await self._tick(self.settings.store.flush_seconds):
            try:
                await self.flush_usage()
            except Exception:
                log.exception("usage write-behind failed; retrying")
            shared = self.meter.shared
            if shared is not None and shared.unsettled:  # what a Redis outage left open, squared once it is back
                try:
                    await shared.settle()
                except Exception:  # Redis errors wait inside settle; anything else must not end the timer
                    log.exception("settling with Redis failed; retrying")
