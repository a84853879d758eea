"""Real servers on loopback: the demo upstream, clexproxy itself, and the official openai client.

Every server binds 127.0.0.1 on a free port and is stopped by the fixture that started it.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp import web

from clexproxy.app import build_app
from clexproxy.clock import Clock, ManualClock
from clexproxy.config import Settings, load_settings
from clexproxy.demo.recorder import DemoRecorder
from clexproxy.demo.upstream import DemoServer
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY
from clexproxy.server.proxy_connection import GatewayRunner
from tests.pg_server import PgServer, PostgresNotInstalled, find_bindir, postgres_server

# 2026-11-25 12:00:00 UTC: twelve hours from either midnight.
NOON = 1_795_608_000.0


@dataclass
class RunningGateway:
    settings: Settings
    runner: web.AppRunner
    base_url: str
    keys: dict[str, str] = field(default_factory=dict)
    stopped: bool = False
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        return self.runner.app[GATEWAY]

    async def add_key(self, account: str, plan: str = "pro") -> str:
        """Create a key through the store, as the CLI would, and make it live at once."""
        limits = {p.name: p.max_keys for p in self.settings.catalog.plans.values()}
        _, key = await self.gateway.store.create_key(account, plan, limits)
        await self.gateway.sync.sync_store(force=True)
        self.keys[account] = key
        return key

    async def credits_remaining(self, key: str, model: str) -> int:
        """Credits left for `key`, read from a call on `model` that charges nothing (a 400: no messages)."""
        async with aiohttp.ClientSession() as session, session.post(
            self.base_url + "/v1/chat/completions", json={"model": model}, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 400
            return int(resp.headers["X-Clex-Credits-Remaining"])

    def client(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        """An official client for `key`; closed at `stop`, while its event loop still runs."""
        client = openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            for client in self.clients:
                await client.close()
            await self.runner.cleanup()


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def recorder(upstream: DemoServer) -> DemoRecorder:
    return upstream.recorder


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


async def start_gateway(
    settings: Settings, clock: Clock | None = None, access_stream: BinaryIO | None = None
) -> RunningGateway:
    runner = GatewayRunner(build_app(settings, clock, access_stream), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return RunningGateway(settings, runner, f"http://{host}:{port}")


@pytest.fixture
async def make_gateway(tmp_path: Path, upstream: DemoServer) -> AsyncIterator[GatewayFactory]:
    started: list[RunningGateway] = []

    async def factory(
        clock: Clock | None = None, data_dir: Path | None = None, access_stream: BinaryIO | None = None,
        config: str | None = None, env: dict[str, str] | None = None, **overrides: Any,
    ) -> RunningGateway:
        """A running gateway; `config` is the text of a TOML config file (plans, models...) to load.

        `env` is all the environment its settings see (provider credentials, say): none of the tests' own.
        """
        path = None
        if config is not None:
            path = tmp_path / f"gateway-{len(started)}.toml"
            path.write_text(config)
        values = {
            "demo": True,
            "demo_upstream_url": upstream.url,
            "data_dir": str(data_dir or tmp_path / "data"),
            "sse_keepalive_seconds": 5.0,
            "store_poll_seconds": 0.05,
            "store_flush_seconds": 0.05,
            **overrides,
        }
        settings = load_settings(path, env=env or {}, overrides=values)
        running = await start_gateway(settings, clock, access_stream or io.BytesIO())
        started.append(running)
        return running

    try:
        yield factory
    finally:
        for running in started:
            await running.stop()


@pytest.fixture
async def gw(make_gateway: GatewayFactory, clock: ManualClock) -> RunningGateway:
    """A gateway on a manual clock with one pro account ('acme') and its key."""
    running = await make_gateway(clock=clock)
    await running.add_key("acme", "pro")
    return running


@pytest.fixture
def key(gw: RunningGateway) -> str:
    return gw.keys["acme"]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    try:
        bindir = find_bindir()
    except PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with postgres_server(bindir) as server:
        yield server


@pytest.fixture
async def dsn(pg: PgServer) -> AsyncIterator[str]:
    """A database of its own: no test sees another's rows or sequence."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield pg.dsn_for(name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
