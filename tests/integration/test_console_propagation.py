"""A key created or revoked on the console of one gateway works or stops on another (issue 12 item 3).

The keys page writes to the store, applies the change to its own memory and announces it
(`StoreSync.sync_store(force=True)`, `StoreSync.announce_key_change`); every other worker learns of
it by its store poll or, with Redis, at once by the announcement. These tests run two real
gateways side by side and watch the second one with real calls: bounded (a few seconds, a fixed
number of tries), never asserting how long it took. The delay each saw is printed (`pytest -s`);
the benchmark `key_propagation` measures it over many rounds on real `serve` processes.

With Redis the poll is set far beyond the bound, so only the announcement can make the change
arrive in time: that is what the Redis cases prove. Without Redis the poll is the shipped default.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from clexproxy.config import StoreSettings
from tests.redis_server import RedisServer

from .conftest import GatewayFactory, RunningGateway
from .test_console_keys import SECRET, api_status, chat_status, keys_of, sign_in_as

PAUSE = 0.02  # between tries on the watching gateway
TRIES = 250  # ~5 s at most, whatever the machine's speed
SLOW_POLL = 60.0  # with Redis: no poll within the bound, so only the announcement can deliver


async def until_status(gw: RunningGateway, key: str, want: int, since: float) -> float:
    """Call `GET /api/key` on `gw` with `key` until it answers `want`; the seconds since `since`."""
    async with aiohttp.ClientSession() as http:
        seen: list[int] = []
        for _ in range(TRIES):
            async with http.get(gw.base_url + "/api/key", headers={"Authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                if resp.status == want:
                    return time.monotonic() - since
                seen.append(resp.status)
            await asyncio.sleep(PAUSE)
    pytest.fail(f"{gw.base_url} never answered {want} within {TRIES} tries (last: {seen[-5:]})")


async def wait_for_subscribers(redis_url: str, channel: str, count: int) -> None:
    """Until `count` workers listen for key changes: an announcement before that would reach no one."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(TRIES):
            [(_, listening)] = await client.pubsub_numsub(channel)
            if listening >= count:
                return
            await asyncio.sleep(PAUSE)
    finally:
        await client.aclose()
    pytest.fail(f"{count} workers never subscribed to {channel}")


async def create_and_revoke_across(first: RunningGateway, second: RunningGateway, label: str) -> None:
    """An owner creates a key on `first`'s console, it works on `second`; revoked on `first`, `second` says 401."""
    owner = await sign_in_as(first, "owner")
    status, html, _ = await owner.post("/console/keys", [("name", "propagation")])
    assert status == 200, html
    found = SECRET.search(html)
    assert found is not None
    secret = found.group(1)
    created = time.monotonic()
    live_after = await until_status(second, secret, 200, created)
    assert (await chat_status(second, secret))[0] == 200  # a real call is served and charged there
    assert await api_status(first, secret) == 200
    [row] = [k for k in await keys_of(first) if k.name == "propagation"]

    status, _, _ = await owner.post(f"/console/keys/{row.id}/revoke")
    assert status == 303
    revoked = time.monotonic()
    stopped_after = await until_status(second, secret, 401, revoked)
    assert (await chat_status(second, secret))[0] == 401
    assert await api_status(first, secret) == 401
    print(f"\n[{label}] created on A -> works on B after {live_after * 1000:.0f} ms; "
          f"revoked on A -> 401 on B after {stopped_after * 1000:.0f} ms")


async def test_sqlite_two_gateways_one_data_dir_by_the_poll(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    poll = StoreSettings().poll_seconds  # the shipped default, not the fixture's quicker one
    first = await make_gateway(data_dir=tmp_path / "shared", store_poll_seconds=poll)
    second = await make_gateway(data_dir=tmp_path / "shared", store_poll_seconds=poll)
    await create_and_revoke_across(first, second, f"SQLite, poll {poll} s, no Redis")


async def test_sqlite_two_gateways_with_redis_by_the_announcement(make_gateway: GatewayFactory, tmp_path: Path,
                                                                   redis_server: RedisServer) -> None:
    options = {"data_dir": tmp_path / "shared", "redis_url": redis_server.url, "workers": 2,
               "store_poll_seconds": SLOW_POLL}
    first = await make_gateway(**options)
    second = await make_gateway(**options)
    assert second.gateway.redis is not None
    await wait_for_subscribers(redis_server.url, second.gateway.redis.keys_channel, 2)
    await create_and_revoke_across(first, second, f"SQLite + Redis, poll {SLOW_POLL:.0f} s")


async def test_postgres_two_hosts_with_redis_by_the_announcement(dsn: str, make_gateway: GatewayFactory,
                                                                 tmp_path: Path, redis_server: RedisServer) -> None:
    # `dsn` first: its database is dropped after the gateways on it have stopped
    options = {"database_url": dsn, "redis_url": redis_server.url, "workers": 2, "store_poll_seconds": SLOW_POLL}
    first = await make_gateway(data_dir=tmp_path / "host-a", **options)
    second = await make_gateway(data_dir=tmp_path / "host-b", **options)
    assert second.gateway.redis is not None
    await wait_for_subscribers(redis_server.url, second.gateway.redis.keys_channel, 2)
    await create_and_revoke_across(first, second, f"PostgreSQL hosts + Redis, poll {SLOW_POLL:.0f} s")


def test_the_key_propagation_benchmark_runs(redis_server: RedisServer) -> None:
    """benchmarks/key_propagation.py, run as people run it (tiny): real `serve` processes agree on a key."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "key_propagation.py"), "--rounds", "2", "--instances", "2",
         "--redis", redis_server.url, "--json"],
        capture_output=True, text=True, timeout=240, check=True,
    )
    results = json.loads(out.stdout)
    assert [r["mode"] for r in results] == ["poll", "redis"]
    assert all(r["rounds"] == 2 and r["create_ms"]["max"] > 0 and r["revoke_ms"]["max"] > 0 for r in results)
