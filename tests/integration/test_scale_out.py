"""`serve --workers 4 --redis URL`, twice, as real processes sharing one Redis: the limits hold across all eight.

Each instance is the real command in a subprocess, with four forked workers on one port; the
two instances share the data dir (one host) and Redis. Calls are spread over both ports, and
the kernel spreads each port's connections over its workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from clexproxy.clock import utc_day
from clexproxy.demo.upstream import DemoServer
from clexproxy.store.postgres import PostgresStore
from clexproxy.store.sqlite import SQLiteStore
from clexproxy.sync.redis import RedisSync
from tests.redis_server import RedisServer, free_port

PREMIUM = "moonshotai/kimi-k2.5"  # 5 credits
CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit
WORKERS = 4


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def start(tmp_path: Path, upstream: DemoServer, redis_server: RedisServer) -> AsyncIterator[Start]:
    instances: list[Instance] = []

    async def starter(name: str, data: str = "data", database: str = "", config: Path | None = None) -> Instance:
        """One instance (a host's gateway) of WORKERS workers; `data` is its data dir, `database` its key store."""
        port = free_port()
        log = tmp_path / f"{name}.log"
        env = {**os.environ, "CLEX_DEMO_UPSTREAM_URL": upstream.url, "CLEX_METRICS_DIR": str(tmp_path / f"m-{name}"),
               "CLEX_STORE_POLL_SECONDS": "0.1", "CLEX_STORE_FLUSH_SECONDS": "0.1"}
        extra = (["--database", database] if database else []) + (["--config", str(config)] if config else [])
        proc = subprocess.Popen(
            [sys.executable, "-m", "clexproxy", "serve", "--demo", "--port", str(port), "--workers", str(WORKERS),
             "--redis", redis_server.url, "--data-dir", str(tmp_path / data), *extra],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
        )
        instance = Instance(proc, port, log)
        instances.append(instance)
        await wait_for_workers(instance, WORKERS)
        return instance

    try:
        yield starter
    finally:
        for instance in instances:
            instance.stop()


async def wait_for_workers(instance: Instance, count: int, without: int = 0) -> None:
    """Until `count` workers serve (and `without`, a killed one, has been replaced)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if instance.proc.poll() is not None:
                pytest.fail(f"the gateway exited:\n{instance.log.read_text()[-3000:]}")
            try:
                async with http.get(instance.url + "/metrics") as response:
                    text = await response.text()
                workers = instance.workers()
                if f"clexproxy_workers {float(count)}" in text and len(workers) == count and without not in workers:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"{count} workers did not come up:\n{instance.log.read_text()[-3000:]}")


def cli(data_dir: Path, *args: str, database: str = "", config: Path | None = None) -> str:
    where = (["--database", database] if database else []) + (["--config", str(config)] if config else [])
    done = subprocess.run([sys.executable, "-m", "clexproxy", *args, "--data-dir", str(data_dir), *where],
                          capture_output=True, text=True, check=True)
    return done.stdout


def new_key(data_dir: Path, account: str, plan: str, database: str = "", config: Path | None = None) -> str:
    out = cli(data_dir, "keys", "create", "--account", account, "--plan", plan, database=database, config=config)
    return out.strip().splitlines()[-1]


async def chat(http: aiohttp.ClientSession, base: str, key: str, model: str) -> int:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": False})
    try:
        async with http.post(base + "/v1/chat/completions", data=body,
                             headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return -1


async def flood(instances: list[Instance], key: str, model: str, calls: int) -> Counter[int]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # new connections: spread over every worker
    async with aiohttp.ClientSession(connector=connector) as http:
        statuses = await asyncio.gather(*(chat(http, instances[i % len(instances)].url, key, model)
                                          for i in range(calls)))
    return Counter(statuses)


async def key_is_live(instances: list[Instance], key: str) -> None:
    """Wait until every instance's workers have loaded `key` from the store (they poll it).

    The probe asks for a model that does not exist: a live key gets a 404, and no credits.
    """
    for _ in range(100):
        statuses = await flood(instances, key, "no/such-model", 2 * WORKERS * len(instances))
        if 401 not in statuses:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the key never became live")


async def test_a_free_account_gets_exactly_its_budget_across_eight_workers(start: Start, tmp_path: Path) -> None:
    first, second = await start("a"), await start("b")
    key = new_key(tmp_path / "data", "free-flood", "free")  # 100 credits, 40 calls a minute
    await asyncio.sleep(1.0)  # every worker polls the store every 0.1 s: ten polls, for a loaded machine
    statuses = await flood([first, second], key, PREMIUM, 300)
    assert statuses == Counter({200: 20, 429: 280})


async def test_the_per_minute_rate_holds_across_eight_workers(start: Start, tmp_path: Path) -> None:
    first, second = await start("a"), await start("b")
    key = new_key(tmp_path / "data", "pro-flood", "pro")  # 2,000 credits, 200 calls a minute
    await asyncio.sleep(1.0)
    started = time.monotonic()
    statuses = await flood([first, second], key, CHEAP, 1000)
    elapsed = time.monotonic() - started
    refill = 200 * elapsed / 60
    print(f"\nrpm 200 across 8 workers: {statuses[200]} of 1000 admitted in {elapsed:.2f} s (refill {refill:.1f})")
    assert set(statuses) == {200, 429}
    # The documented bound: the plan's rpm, plus what refills meanwhile, plus 5 %.
    assert statuses[200] <= 200 + refill + 0.05 * 200, (statuses, elapsed)
    assert statuses[200] >= 200, (statuses, elapsed)  # and never fewer: no slot is stranded in a worker


FLOODS = 20
FLOOD_CALLS = 120  # three times the free plan's 40 a minute, at once


async def test_every_flood_gets_the_plans_rpm_never_fewer(start: Start, tmp_path: Path) -> None:
    """Both bounds, flood after flood: 120 calls at once from a free account (40 a minute) over eight workers.

    Each flood is a fresh account, so each starts from the plan's whole burst. The lower bound is
    the plan's rpm: a slot that Redis hands to a worker is used by a call waiting for it, so none
    is stranded in a worker whose calls have stopped while another worker refuses its own.
    """
    first, second = await start("a"), await start("b")
    keys = [new_key(tmp_path / "data", f"burst-{n}", "free") for n in range(FLOODS)]
    await asyncio.sleep(1.0)
    runs: list[tuple[int, float, Counter[int]]] = []
    for key in keys:
        started = time.monotonic()
        statuses = await flood([first, second], key, CHEAP, FLOOD_CALLS)
        runs.append((statuses[200], time.monotonic() - started, statuses))
    answered = Counter(count for count, _, _ in runs)
    print(f"\nanswered of {FLOOD_CALLS} at rpm 40 over {FLOODS} floods: "
          + ", ".join(f"{count}: {times}x" for count, times in sorted(answered.items())))
    for count, elapsed, statuses in runs:
        assert set(statuses) == {200, 429}, statuses
        assert 40 <= count <= 40 + 40 * elapsed / 60 + 0.05 * 40, (count, elapsed, statuses)


async def test_a_key_works_and_stops_on_every_worker_within_a_second(start: Start, tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    first, second = await start("a"), await start("b")
    data = tmp_path / "data"
    key = new_key(data, "revoked", "pro")
    await asyncio.sleep(1.0)
    created = await flood([first, second], key, CHEAP, 8 * WORKERS)
    assert created == Counter({200: 8 * WORKERS})  # new connections: every worker of both instances serves it
    key_id = next(line.split()[0] for line in cli(data, "keys", "list", "--account", "revoked").splitlines()[1:])
    cli(data, "keys", "revoke", key_id, "--redis", redis_server.url)  # announced: no worker waits for its poll
    await asyncio.sleep(1.0)
    statuses = await flood([first, second], key, CHEAP, 8 * WORKERS)
    assert statuses == Counter({401: 8 * WORKERS})


async def test_a_killed_worker_loses_at_most_its_lease_and_is_replaced(start: Start, tmp_path: Path,
                                                                      redis_server: RedisServer) -> None:
    first, second = await start("a"), await start("b")
    data = tmp_path / "data"
    key = new_key(data, "killed", "starter")  # 500 credits, 80 calls a minute
    await asyncio.sleep(1.0)
    victim = first.workers()[0]

    async def kill_soon() -> None:
        await asyncio.sleep(0.2)
        os.kill(victim, signal.SIGKILL)

    flooded, _ = await asyncio.gather(flood([first, second], key, PREMIUM, 400), kill_soon())
    answered = flooded[200]
    assert answered * 5 <= 500
    await wait_for_workers(first, WORKERS, without=victim)
    first.stop()
    second.stop()  # the live workers give their leases back
    account = SQLiteStore.in_data_dir(data).get_account("killed")
    assert account is not None
    sync = RedisSync(redis_server.url)
    try:
        left = await sync.credits_left(account.id, utc_day(time.time())) or 0
        # Every lease is recorded in Redis under an id that starts with the taker's pid.
        leases = [key async for key in sync._redis.scan_iter(f"clex:{{{account.id}}}:lease:{victim}-*")]
        leased_by_victim = sum([int(await sync._redis.get(key) or 0) for key in leases])
    finally:
        await sync.close()
    lost = 500 - answered * 5 - left
    print(f"\nkill -9 mid-flood: {answered} answered, {left} credits left in Redis, {lost} lost with the dead "
          f"worker, which had leased {leased_by_victim} in {len(leases)} leases")
    # What is lost is what the dead worker held: its leases, less what it spent on answered calls
    # (including calls in flight when it died, whose credits were reserved). Nothing else is lost.
    assert 0 <= lost <= leased_by_victim


RESTART_PLAN = """
[plans.restarts]
credits_per_day = 50000
requests_per_minute = 1000000
max_keys = 1
"""
RESTART_BUDGET = 50_000  # more than the flood can spend: leases are still being taken at every crash


async def test_redis_restarts_mid_flood_lose_nothing(start: Start, tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis crashes and restarts twice while calls are in flight on eight workers: each credit spent once or held.

    A lease trip cut by a crash may have been granted on Redis with its reply lost; the worker
    asks for it again by id once Redis is back, so nothing is stranded.
    """
    config = tmp_path / "restarts.toml"
    config.write_text(RESTART_PLAN)
    first, second = await start("a", config=config), await start("b", config=config)
    data = tmp_path / "data"
    key = new_key(data, "restart", "restarts", config=config)
    await key_is_live([first, second], key)
    statuses: Counter[int] = Counter()
    crashing = True

    async def caller(http: aiohttp.ClientSession, instance: Instance) -> None:
        for _ in range(2_000):  # bounded; ends once the crashes are over
            if not crashing:
                return
            statuses[await chat(http, instance.url, key, CHEAP)] += 1

    async def crash_twice() -> None:
        """One crash at a time (a second start while the first is under way would orphan a redis-server)."""
        nonlocal crashing
        for _ in range(2):
            await asyncio.sleep(0.4)  # calls flow, leases are taken and spent
            redis_server.kill()
            await asyncio.sleep(0.3)  # calls meet the outage
            await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(0.4)
        crashing = False

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(crash_twice(), *(caller(http, (first, second)[i % 2]) for i in range(32)))
        assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
        probes: Counter[int] = Counter()
        for _ in range(100):  # Redis decides calls again once the circuit lets a worker try it
            probes[status := await chat(http, first.url, key, CHEAP)] += 1
            if status != 503:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"calls still got 503 after Redis came back: {probes}\n{first.log.read_text()[-3000:]}")
        assert status == 200, probes
        statuses[status] += 1
    first.stop()
    second.stop()
    store = SQLiteStore.in_data_dir(data)
    account = store.get_account("restart")
    assert account is not None
    day = utc_day(time.time())
    spent = store.credits_spent(day).get(account.id, 0)
    sync = RedisSync(redis_server.url)
    try:
        left = await sync.credits_left(account.id, day) or 0
    finally:
        await sync.close()
    assert spent == statuses[200]  # every answer charged once (1 credit each), in the store
    assert spent + left == RESTART_BUDGET  # and every credit either spent or back in Redis: none lost, none twice


async def test_one_scrape_counts_every_worker_even_after_one_was_replaced(start: Start, tmp_path: Path) -> None:
    first = await start("a")
    key = new_key(tmp_path / "data", "metered", "pro")
    await key_is_live([first], key)

    async def total() -> float:
        async with aiohttp.ClientSession() as http, http.get(first.url + "/metrics") as response:
            text = await response.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("clexproxy_requests_total{") and 'plan="pro"' in line)

    await asyncio.sleep(0.6)  # every worker writes its metrics snapshot twice a second
    before = await total()
    statuses = await flood([first], key, CHEAP, 40)
    assert statuses[200] == 40
    await asyncio.sleep(0.6)
    assert await total() == before + 40
    victim = first.workers()[0]
    os.kill(victim, signal.SIGKILL)
    await wait_for_workers(first, WORKERS, without=victim)
    assert await total() == before + 40  # the dead worker's counts stay in the host's totals


# The free plan's budget without its per-minute limit, so the probes that wait for the key cannot
# use up the calls the flood is counted on.
HOSTS_PLAN = """
[plans.hosts]
credits_per_day = 100
requests_per_minute = 10000
max_keys = 1
"""


async def test_two_hosts_share_keys_and_budgets_through_postgres_and_redis(start: Start, tmp_path: Path,
                                                                          dsn: str) -> None:
    """Two hosts: separate data dirs, one PostgreSQL key store, one Redis; a key made on one works on both."""
    config = tmp_path / "hosts.toml"
    config.write_text(HOSTS_PLAN)
    first = await start("host-a", data="data-a", database=dsn, config=config)
    second = await start("host-b", data="data-b", database=dsn, config=config)
    key = new_key(tmp_path / "data-a", "two-hosts", "hosts", database=dsn, config=config)
    await key_is_live([first, second], key)
    statuses = await flood([first, second], key, PREMIUM, 300)
    first.stop()
    second.stop()
    store = await PostgresStore.connect(dsn)
    try:
        account = await store.get_account("two-hosts")
        assert account is not None
        spent = (await store.credits_spent(utc_day(time.time()))).get(account.id, 0)
    finally:
        await store.close()
    assert statuses == Counter({200: 20, 429: 280}) and spent == 100
