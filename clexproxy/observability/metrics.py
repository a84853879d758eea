"""Prometheus metrics: cheap on the request path, aggregated across a host's workers at scrape time.

The request path touches only plain dicts (the families: `CounterVec`, `HistogramVec`, ...);
`call_finished` adds one row per call shape and `_fold` spreads the rows over the families at
snapshot time. prometheus-client renders the exposition from this custom collector. With a
metrics directory configured, each process's snapshot goes to a file and a scrape of any of them
merges them all (`SnapshotFiles`): one scrape reports the whole host, and `clexproxy_redis_up`
shows the host's lowest, so one worker cut off from Redis is enough to page.

With Redis configured, `RedisSync` reports each round trip (its duration, or its failure) and
`SharedLimits` each credit lease it is granted (`redis_call`, `redis_failed`, `lease_granted`):
a few dict updates after a trip that took a network round trip, never on a call that stays in
memory. Without Redis there are no Redis series at all, so its alerts stay silent.

Label sets are bounded: endpoint, api (the protocol the client spoke: one of five constants, so
every ingress is metered alike and told apart), model and tier (from the catalog), plan, provider,
status class, kind, limit, phase, Redis operation. Never an account or key id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import secrets
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clexproxy import __version__
from clexproxy.fastpath import USING_EXTENSION
from clexproxy.observability.families import (
    SEP,
    CounterVec,
    Family,
    GaugeVec,
    HistogramVec,
    LowestGauge,
    add_slots,
    render_family,
)
from clexproxy.observability.snapshots import SnapshotFiles, merge_into
from clexproxy.outcome import CallOutcome

log = logging.getLogger("clexproxy.observability.metrics")

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RATE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0)
# Redis round trips: sub-millisecond on a LAN, and the alert's 100 ms p99 threshold is a bound.
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# A per-call row: count, credits charged, prompt tokens, completion tokens, then the duration
# histogram's slots (one per bucket, +Inf, sum) and the overhead histogram's.
_DURATION = 4
_DURATION_SUM = _DURATION + len(LATENCY_BUCKETS) + 1
_OVERHEAD = _DURATION_SUM + 1
_OVERHEAD_SUM = _OVERHEAD + len(OVERHEAD_BUCKETS) + 1
_ROW_SIZE = _OVERHEAD_SUM + 1


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, info: dict[str, str] | None = None, metrics_dir: str = "", flush_seconds: float = 0.5):
        self.metrics_dir = Path(metrics_dir) if metrics_dir else None
        self.flush_seconds = flush_seconds
        # pid plus a random tag: unique even when a pid is reused, or when tests run several gateways in a process.
        self.instance = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self._rows: dict[tuple[str, str, str, str, int, bool, str], list[float]] = {}
        self._stopping = asyncio.Event()
        fam: list[Family] = []
        self._families = fam

        def add(f: Any) -> Any:
            fam.append(f)
            return f

        self.requests = add(CounterVec("clexproxy_requests", "Proxied API calls by endpoint, api, model, plan, status.",
                                       ("endpoint", "api", "model", "plan", "status_class")))
        self.duration = add(HistogramVec("clexproxy_request_duration_seconds", "Total time of a proxied call.",
                                         ("endpoint", "api", "stream"), LATENCY_BUCKETS))
        self.overhead = add(HistogramVec("clexproxy_gateway_overhead_seconds",
                                         "Time spent in the gateway: total time minus the upstream's share.",
                                         ("endpoint", "api", "stream"), OVERHEAD_BUCKETS))
        self.ttfb = add(HistogramVec("clexproxy_upstream_ttfb_seconds", "Time to the upstream's response headers.",
                                     ("provider",), LATENCY_BUCKETS))
        self.ttft = add(HistogramVec("clexproxy_stream_ttft_seconds",
                                     "From the request to the first streamed data event sent to the client.",
                                     ("model", "api"), LATENCY_BUCKETS))
        self.tokens_per_second = add(HistogramVec("clexproxy_stream_tokens_per_second",
                                                  "Completion tokens per second of a stream after its first token.",
                                                  ("model",), RATE_BUCKETS))
        self.tokens = add(CounterVec("clexproxy_tokens", "Tokens reported by upstreams.",
                                     ("model", "kind", "api")))
        self.charged = add(CounterVec("clexproxy_credits_charged", "Credits charged.", ("plan", "tier")))
        self.refunded = add(CounterVec("clexproxy_credits_refunded", "Credits reserved then refunded.",
                                       ("plan", "tier")))
        self.rate_limited = add(CounterVec("clexproxy_rate_limited", "Calls refused with 429, by the limit hit.",
                                           ("plan", "limit")))
        self.in_flight = add(GaugeVec("clexproxy_in_flight_requests", "Proxied calls in progress.", ("endpoint",)))
        self.open_streams = add(GaugeVec("clexproxy_open_streams", "SSE answers being relayed.", ()))
        self.upstream_errors = add(CounterVec("clexproxy_upstream_errors", "Failed upstream attempts by kind.",
                                              ("provider", "kind")))
        self.disconnects = add(CounterVec("clexproxy_client_disconnects", "Clients that left before the call ended.",
                                          ("endpoint", "phase")))
        self.retries = add(CounterVec("clexproxy_upstream_retries", "Upstream attempts beyond a call's first.",
                                      ("provider",)))
        self.fallbacks = add(CounterVec("clexproxy_fallbacks", "Calls answered by the fallback model.", ("model",)))
        self.build_info = add(GaugeVec("clexproxy_build_info", "Build of the running gateway.",
                                       ("version", "fastpath", "python", "aiohttp")))
        self.config_info = add(GaugeVec("clexproxy_config_info", "Shape of the running configuration.",
                                        tuple(sorted(info or {}))))
        self.workers = add(GaugeVec("clexproxy_workers", "Worker processes reporting into this scrape.", ()))
        # Scale-out (Redis): no series until a Redis trip is made, so a gateway without Redis exports none.
        self.redis_up = add(LowestGauge("clexproxy_redis_up",
                                        "1 when the last Redis round trip of every process succeeded, else 0.", ()))
        self.redis_sync = add(HistogramVec("clexproxy_redis_sync_seconds",
                                           "Duration of successful Redis round trips (leases, slots, key changes).",
                                           ("operation",), REDIS_BUCKETS))
        self.redis_errors = add(CounterVec("clexproxy_redis_errors", "Failed Redis round trips.", ("operation",)))
        self.lease_grants = add(CounterVec("clexproxy_lease_grants", "Credit leases Redis granted to a worker.",
                                           ("plan",)))
        self.build_info.set(
            (__version__, "compiled" if USING_EXTENSION else "pure", platform.python_version(), aiohttp.__version__), 1
        )
        self.config_info.set(tuple(v for _, v in sorted((info or {}).items())), 1)
        self.workers.set((), 1)
        self._gauge_names = frozenset(f.name for f in fam if f.kind == "gauge")
        self._lowest_names = frozenset(f.name for f in fam if isinstance(f, LowestGauge))
        self._files = (None if self.metrics_dir is None
                       else SnapshotFiles(self.metrics_dir, self.instance, self._gauge_names, self._lowest_names))
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    # request path -----------------------------------------------------------------------------

    def call_started(self, endpoint: str) -> None:
        in_flight = self.in_flight.values
        key = (endpoint,)
        in_flight[key] = in_flight.get(key, 0.0) + 1.0

    def stream_opened(self) -> None:
        self.open_streams.inc(())

    def stream_closed(self) -> None:
        self.open_streams.dec(())

    def call_finished(self, call: CallOutcome) -> None:
        """Everything a finished call contributes, in one pass.

        The common facts (count, credits, tokens, duration and overhead) go into one row per
        (endpoint, api, model, plan, status, stream, tier): one dict lookup and a few list additions.
        `_fold` spreads the rows over the families at snapshot time, off the request path.
        """
        endpoint = call.endpoint
        in_flight = self.in_flight.values
        in_flight[(endpoint,)] -= 1.0
        key = (endpoint, call.api, call.model, call.plan, call.status // 100, call.stream, call.tier)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0.0] * _ROW_SIZE
        row[0] += 1.0
        row[1] += call.credits_charged
        row[2] += call.prompt_tokens
        row[3] += call.completion_tokens
        if call.provider:  # it reached an upstream: its timings mean something
            total = call.finished_at - call.started
            row[_DURATION + bisect_left(LATENCY_BUCKETS, total)] += 1.0
            row[_DURATION_SUM] += total
            overhead = total - call.upstream_seconds
            if overhead < 0.0:
                overhead = 0.0
            row[_OVERHEAD + bisect_left(OVERHEAD_BUCKETS, overhead)] += 1.0
            row[_OVERHEAD_SUM] += overhead
            if call.stream and call.first_token_at is not None:
                self.ttft.observe((call.model, call.api), call.first_token_at - call.started)
                rate = call.tokens_per_second
                if rate is not None:
                    self.tokens_per_second.observe((call.model,), rate)
        for provider, seconds in call.upstream_ttfbs:
            self.ttfb.observe((provider,), seconds)
        if call.limit or call.disconnected or call.credits_refunded or call.upstream_failures or call.fallback:
            self._unusual(call)

    def _unusual(self, call: CallOutcome) -> None:
        """The rarer facts of a call: limits, disconnects, refunds, upstream failures, retries, fallbacks."""
        if call.limit:
            self.rate_limited.inc((call.plan, call.limit))
        if call.disconnected:
            self.disconnects.inc((call.endpoint, "during_answer" if call.answer_started else "before_answer"))
        if call.credits_refunded:
            self.refunded.inc((call.plan, call.tier), call.credits_refunded)
        for provider, kind in call.upstream_failures:
            self.upstream_errors.inc((provider, kind))
        if call.retries:
            self.retries.inc((call.provider or "-",), call.retries)
        if call.fallback:
            self.fallbacks.inc((call.model,))

    # Redis (RedisSync and SharedLimits call these after a round trip, never per request) --------

    def redis_call(self, operation: str, seconds: float) -> None:
        """A Redis round trip that succeeded: Redis is up, and how long it took."""
        self.redis_up.values[()] = 1.0
        self.redis_sync.observe((operation,), seconds)

    def redis_failed(self, operation: str) -> None:
        """A Redis round trip that failed (connection, timeout or an error reply): Redis is down until one succeeds."""
        self.redis_up.values[()] = 0.0
        self.redis_errors.inc((operation,))

    def lease_granted(self, plan: str) -> None:
        """Redis granted this worker a lease of an account's credits."""
        self.lease_grants.inc((plan,))

    def _fold(self) -> None:
        """Spread the per-call rows over the exposed families (at snapshot time, not per request)."""
        rows, self._rows = self._rows, {}
        for (endpoint, api, model, plan, status, stream, tier), row in rows.items():
            self.requests.inc((endpoint, api, model, plan, f"{status}xx"), row[0])
            if row[1]:
                self.charged.inc((plan, tier), row[1])
            if row[2]:
                self.tokens.inc((model, "prompt", api), row[2])
            if row[3]:
                self.tokens.inc((model, "completion", api), row[3])
            if row[_DURATION_SUM] or any(row[_DURATION:_DURATION_SUM]):
                labels = (endpoint, api, "true" if stream else "false")
                add_slots(self.duration, labels, row[_DURATION:_DURATION_SUM + 1])
                add_slots(self.overhead, labels, row[_OVERHEAD:_OVERHEAD_SUM + 1])

    # snapshots and the host-wide merge --------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        self._fold()
        return {f.name: {SEP.join(k): v for k, v in f.values.items()} for f in self._families}

    def write_snapshot(self, stopped: bool = False) -> None:
        if self._files is not None:
            self._files.write(self.snapshot(), stopped)

    def _merged(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        live_workers = 1
        if self._files is not None:
            live_workers += self._files.merge_others(merged)
        merge_into(merged, self.snapshot(), self._gauge_names, gauges=True, lowest=self._lowest_names)
        info = merged.get("clexproxy_workers", {})
        info[""] = float(live_workers)
        for name in ("clexproxy_build_info", "clexproxy_config_info"):
            merged[name] = {k: 1.0 for k in merged.get(name, {})}
        return merged

    def collect(self) -> Iterator[Metric]:
        merged = self._merged()
        for fam in self._families:
            series = merged.get(fam.name, {})
            yield from render_family(fam, series)

    def render(self) -> bytes:
        return generate_latest(self._registry)

    # lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.metrics_dir is not None and self._task is None:
            self.write_snapshot()
            self._task = asyncio.create_task(self._flush_loop(), name="clexproxy-metrics-flush")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self.metrics_dir is not None:
            # The last word of this process: its counters stay in the host's totals, its gauges leave them.
            self.write_snapshot(stopped=True)

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.flush_seconds)
            try:
                self.write_snapshot()
            except OSError:
                log.exception("could not write the metrics snapshot")


class NullMetrics(Metrics):
    """Metrics switched off: the request path calls cost one no-op method each (for A/B measurements)."""

    def call_started(self, endpoint: str) -> None:
        return None

    def stream_opened(self) -> None:
        return None

    def stream_closed(self) -> None:
        return None

    def call_finished(self, call: CallOutcome) -> None:
        return None

    def redis_call(self, operation: str, seconds: float) -> None:
        return None

    def redis_failed(self, operation: str) -> None:
        return None

    def lease_granted(self, plan: str) -> None:
        return None
