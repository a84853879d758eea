"""Run the gateway: the event loop, the listening socket, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import redis
from aiohttp import web

from clexproxy.app import build_app
from clexproxy.config import Settings
from clexproxy.demo.provision import ensure_demo_key, ensure_demo_owner
from clexproxy.fastpath import USING_EXTENSION
from clexproxy.handlers import health
from clexproxy.handlers.common import GATEWAY
from clexproxy.observability.logsetup import configure_logging
from clexproxy.observability.snapshots import reset_metrics_dir
from clexproxy.server.fdlimit import raise_open_file_limit, upstream_connection_cap
from clexproxy.server.ports import CannotListen, PortClaim, claim_port
from clexproxy.server.proxy_connection import GatewayRunner
from clexproxy.server.shutdown import CUT_SECONDS, drain
from clexproxy.server.supervisor import Supervisor, worker_settings
from clexproxy.signals import STOP_SIGNALS, wait_for_stop_signal
from clexproxy.store.datadir import usable_data_dir

log = logging.getLogger("clexproxy.server.worker")

def banner(settings: Settings, demo_key: str | None, console_line: str | None = None) -> str:
    """What a start prints to stdout (never to a log): the address and, in demo mode, the key, a curl line and
    the console's one-time link (`ensure_demo_owner`)."""
    base = f"http://{settings.server.host}:{settings.server.port}"
    lines = [
        f"clexproxy listening on {base} ({'compiled' if USING_EXTENSION else 'pure-Python'} fastpath, "
        f"data in {settings.server.data_dir}{', demo upstream' if settings.server.demo else ''})",
    ]
    if demo_key:
        lines += [
            "",
            f"Demo key (account '{settings.demo.account}', plan {settings.demo.plan}): {demo_key}",
            "Try it:",
            "",
            f"curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {demo_key}' "
            "-H 'Content-Type: application/json' "
            "-d '{\"model\": \"meta/llama-3.3-70b-instruct\", "
            "\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
            "",
            f"OpenAI SDK: OpenAI(base_url='{base}/v1', api_key='{demo_key}')",
        ]
    if console_line:
        lines += ["", console_line]
    return "\n".join(lines)


def fit_open_file_limit(settings: Settings) -> Settings:
    """The settings with upstream connections capped to what the open-file limit can hold."""
    limit = raise_open_file_limit()
    cap = upstream_connection_cap(settings.upstream.max_connections, limit)
    if cap < settings.upstream.max_connections:  # normal on most hosts: information, not a problem to fix
        log.info("upstream connections capped at %d (open-file limit %d, two sockets per call); "
                 "calls beyond it wait for a connection", cap, limit)
        settings = settings.replace(upstream_max_connections=cap)
    return settings


async def serve(settings: Settings, worker: int | None = None) -> None:
    """Run one gateway until SIGINT/SIGTERM; as worker `worker` of several, the parent did the one-time setup."""
    settings = fit_open_file_limit(settings)
    demo_key = console_line = None
    if worker is None and settings.server.demo:
        demo_key = await ensure_demo_key(settings)
        console_line = await ensure_demo_owner(settings) if settings.console.enabled else None
    if worker is None:
        reset_metrics_dir(settings.metrics.dir)
    app = build_app(settings)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=CUT_SECONDS)
    await runner.setup()
    _settle_heap()
    shared = worker is not None  # every worker binds the port itself (SO_REUSEPORT)
    await _listen(runner, settings.server.host, settings.server.port, shared)
    metrics_runner = await _start_metrics_port(app, settings, shared) if settings.metrics.port else None
    if worker is None:
        print(banner(settings, demo_key, console_line), flush=True)
    try:
        await wait_for_stop_signal()
        if worker is not None:
            # Ctrl-C in a terminal signals every process of the group, then the parent passes SIGTERM
            # on: a second signal must not cut the drain short (the parent's deadline still holds).
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        # aiohttp's own shutdown (in cleanup) then finds every call done: its timeout is only a backstop.
        runners = [runner] if metrics_runner is None else [runner, metrics_runner]
        await drain(runners, app[GATEWAY], settings.server.shutdown_grace_seconds)
    finally:
        log.info("shutting down")
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()


def _settle_heap() -> None:
    """Move everything built at startup (catalog, key table, accounts, imports) out of the collector's sight.

    The request path allocates short-lived objects quickly, so the cyclic collector runs often;
    each full collection would otherwise walk every long-lived object too.
    """
    gc.collect()
    gc.freeze()


async def _start_metrics_port(app: web.Application, settings: Settings, shared: bool) -> web.AppRunner:
    """/metrics alone on its own port, so the scrape path can be firewalled apart from the API."""
    metrics_app = web.Application()
    metrics_app[GATEWAY] = app[GATEWAY]  # the same handler as the main port's /metrics, reading the same state
    metrics_app.router.add_get("/metrics", health.metrics)
    runner = web.AppRunner(metrics_app, access_log=None, keepalive_timeout=settings.client.keepalive_timeout)
    await runner.setup()
    await _listen(runner, settings.server.host, settings.metrics.port, shared)
    return runner


async def _listen(runner: web.AppRunner, host: str, port: int, shared: bool = False) -> None:
    """Bind or exit with a message a person can act on (the port is taken, the address is not ours)."""
    try:
        # The kernel caps the backlog at somaxconn.
        await web.TCPSite(runner, host, port, backlog=16384, reuse_address=True, reuse_port=shared or None).start()
    except OSError as exc:
        await runner.cleanup()
        # uvloop's OSError carries the errno but no strerror (its message names the address again)
        raise CannotListen(host, port, os.strerror(exc.errno) if exc.errno else str(exc)) from None


def run(settings: Settings) -> None:
    """`clexproxy serve`: claim the ports, check the data dir, then one gateway or a supervisor of N."""
    configure_logging(settings.server.log_level, "json" if settings.server.log_format == "json" else "text")
    claims = [claim_port(settings.server.host, settings.server.port)]  # first: a taken port is the likeliest mistake
    try:
        claims.append(claim_port(settings.server.host, settings.metrics.port))
        if _uses_data_dir(settings):
            usable_data_dir(settings.server.data_dir)  # one line naming the path and the fix, before anything starts
        warn_missing_credentials(settings)
        if settings.server.workers > 1:
            _run_supervisor(settings)
        else:
            _run_loop(serve(settings))
    finally:
        _release(claims)
    sys.stdout.flush()


def _release(claims: list[PortClaim | None]) -> None:
    for claim in claims:
        if claim is not None:
            claim.release()


def _uses_data_dir(settings: Settings) -> bool:
    """The SQLite store, the demo key or the workers' metrics snapshots live in the data dir."""
    server = settings.server
    return not settings.database.url or server.demo or (server.workers > 1 and not settings.metrics.dir)


def warn_missing_credentials(settings: Settings) -> None:
    """One warning per provider that serves a catalog model and whose credential variable is unset.

    Without it the gateway starts cleanly and every call to that provider fails later, with the
    provider's 401 turned into an error the caller cannot act on. `--demo` needs no credential.
    """
    if settings.server.demo:
        return
    catalog = settings.catalog
    served: dict[str, int] = {}
    for model in catalog.models.values():
        for name in {deployment.provider for deployment in model.deployments}:
            served[name] = served.get(name, 0) + 1
    for name, count in served.items():
        variable = catalog.providers[name].api_key_env
        if variable and name not in settings.credentials:
            log.warning("%s is not set: calls to provider '%s' (%d catalog model%s) go without a credential "
                        "and its models will fail", variable, name, count, "" if count == 1 else "s")


def run_worker(settings: Settings, slot: int) -> None:
    """A forked worker's life (the `Supervisor`'s target): one gateway on the shared port."""
    _run_loop(serve(settings, worker=slot))


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency everywhere but Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


def _run_supervisor(settings: Settings) -> None:
    """The parent of `settings.server.workers` workers: one-time setup, a check that Redis answers, then watch."""
    settings = worker_settings(settings)
    demo_key = asyncio.run(ensure_demo_key(settings)) if settings.server.demo else None
    console_line = None
    if settings.server.demo and settings.console.enabled:
        console_line = asyncio.run(ensure_demo_owner(settings))
    reset_metrics_dir(settings.metrics.dir)
    try:
        redis.Redis.from_url(settings.redis.url, socket_connect_timeout=5, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"clexproxy: Redis at {settings.redis.url} does not answer ({exc}); "
                         f"{settings.server.workers} workers cannot share limits without it") from None
    workers = settings.server.workers
    text = banner(settings, demo_key, console_line).replace(" listening on ", f" listening on (x{workers} workers) ", 1)
    raise SystemExit(Supervisor(settings, text, target=run_worker).run())
