"""The gateway: the components one worker runs on, composed, and the order they start and stop in.

The request path reads only memory: the `Directory` (who is calling), the `Limits` (may they),
the `UpstreamPool` (the provider connections), and what records each call (`Metrics`,
`AccessLog`, `RecentRefusals`). `StoreSync` keeps the directory and the limits in step with the
store, off the path. With Redis (`redis_url`) the limits are shared with every other worker
(`SharedLimits`) and the leases still held at stop go back to it.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from clexproxy.auth import Directory
from clexproxy.catalog import Catalog
from clexproxy.clock import Clock
from clexproxy.config import Settings
from clexproxy.keepalive import KeepAlives
from clexproxy.limits.base import Limits
from clexproxy.limits.local import LocalLimits
from clexproxy.limits.refusals import RecentRefusals
from clexproxy.limits.shared import SharedLimits
from clexproxy.observability.accesslog import AccessLog
from clexproxy.observability.metrics import Metrics, NullMetrics
from clexproxy.store.base import Store
from clexproxy.sync.redis import RedisSync
from clexproxy.sync.store import StoreSync
from clexproxy.upstream.pool import UpstreamPool

log = logging.getLogger("clexproxy.gateway")


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
    """One worker's components; `start` and `stop` bring them up and down in order.

    `settings` is what it was built from (the server reads its client limits there); handlers
    read the components, never the settings.
    """

    def __init__(self, settings: Settings, clock: Clock, store: Store, access_stream: BinaryIO | None = None) -> None:
        self.settings = settings
        self.clock = clock  # the console's sessions and links expire by it
        self.catalog: Catalog = settings.catalog
        self.store = store
        self.directory = Directory(self.catalog)
        self.metrics = _metrics(settings)
        self.redis: RedisSync | None = None
        self.limits: Limits
        if settings.redis.url:
            self.redis = RedisSync(settings.redis.url, observer=self.metrics)
            # The day's first lease asks the store what was spent, this worker's usage written first:
            # the sync is built on these limits, so it is looked up when asked.
            self.limits = SharedLimits(clock, self.redis, settings.server.workers,
                                       lambda account_id, day: self.sync.stored_spend(account_id, day),
                                       observer=self.metrics)
        else:
            self.limits = LocalLimits(clock)
        self.sync = StoreSync(settings.store, store, self.directory, self.limits, self.redis)
        self.upstream = UpstreamPool(settings.upstream, self.catalog, settings.credentials)
        self.access_log = AccessLog(access_stream, settings.server.log_format)
        self.keepalives = KeepAlives(settings.sse.keepalive_seconds)
        self.refusals = RecentRefusals()
        self.ready = False

    async def start(self) -> None:
        """Load accounts, keys and today's usage, start the recorders, then the sync timers."""
        await self.sync.load()
        self.metrics.start()
        self.access_log.start()
        self.sync.start()
        self.ready = True
        log.info("loaded %d accounts and %d keys", len(self.directory.accounts), len(self.directory.keys))

    async def stop(self) -> None:
        """The reverse: timers first, leases back to Redis, the last usage written, then every connection closed."""
        self.ready = False
        await self.sync.stop()
        if self.redis is not None:
            returned = await self.limits.give_back()
            log.info("returned %d leased credits to Redis", returned)
            await self.redis.close()
        await self.sync.flush_usage()
        await self.metrics.stop()
        await self.access_log.stop()
        self.keepalives.close()
        await self.upstream.close()
        await self.store.close()
