"""Gateways sharing one account's limits through a real Redis (`SharedLimits`), in one process.

Each gateway here is what one worker is: its own limits, its own Redis connection, the same
store. The multi-process and multi-host versions of these floods are in test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from clexproxy.gateway import Gateway
from clexproxy.limits.shared import SharedLimits
from tests.redis_server import RedisServer
from tests.reply_cutter import ReplyCutter

from .conftest import GatewayFactory, RunningGateway

PREMIUM = "moonshotai/kimi-k2.5"  # 5 credits
CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit
HELLO = [{"role": "user", "content": "Hello!"}]


async def call(gw: RunningGateway, key: str, model: str) -> int:
    try:
        await gw.client(key).chat.completions.create(model=model, messages=HELLO, stream=False)
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


async def flood(gateways: list[RunningGateway], key: str, model: str, calls: int) -> Counter[int]:
    statuses = await asyncio.gather(*(call(gateways[i % len(gateways)], key, model) for i in range(calls)))
    return Counter(statuses)


async def totals_once_settled(gateway: Gateway, what: str) -> tuple[int, int, int]:
    """The newest account's credits (spent in the store, held in the ledger, left on Redis), once an outage is squared.

    The write-behind timer settles with Redis once it answers again (after the circuit's pause).
    """
    shared = gateway.limits
    assert isinstance(shared, SharedLimits) and gateway.redis is not None
    for _ in range(200):
        if not shared.unsettled:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"{what} was never squared with Redis")
    await gateway.sync.flush_usage()
    account = gateway.directory.accounts[max(gateway.directory.accounts)]
    day = shared.today()
    spent = (await gateway.store.credits_spent(day))[account.id]
    left = await gateway.redis.credits_left(account.id, day) or 0
    return spent, shared.ledger.remaining(account.id, day), left


async def test_workers_spend_one_budget_exactly(make_gateway: GatewayFactory, redis_server: RedisServer) -> None:
    first = await make_gateway(redis_url=redis_server.url, workers=2)
    second = await make_gateway(redis_url=redis_server.url, workers=2)
    key = await first.add_key("free-flood", "free")  # 100 credits a day
    await second.gateway.sync.sync_store(force=True)
    statuses = await flood([first, second], key, PREMIUM, 60)
    assert statuses == Counter({200: 20, 429: 40})  # 20 calls of 5 credits, never 21
    for gw in (first, second):
        await gw.gateway.sync.flush_usage()
    spent = await first.gateway.store.credits_spent(first.gateway.limits.today())
    account = first.gateway.directory.accounts[max(first.gateway.directory.accounts)]
    assert spent[account.id] == 100


SLOW_PLAN = """
[plans.slow]
credits_per_day = 1000
requests_per_minute = 6
max_keys = 1
"""


async def test_workers_share_one_per_minute_rate(make_gateway: GatewayFactory, redis_server: RedisServer) -> None:
    first = await make_gateway(redis_url=redis_server.url, config=SLOW_PLAN)
    second = await make_gateway(redis_url=redis_server.url, config=SLOW_PLAN)
    key = await first.add_key("slow", "slow")  # 6 calls a minute: one slot frees every 10 s
    await second.gateway.sync.sync_store(force=True)
    started = time.monotonic()
    statuses = [await call(first, key, CHEAP)]
    statuses += [await call(second, key, CHEAP) for _ in range(8)]
    statuses += [await call(first, key, CHEAP) for _ in range(4)]
    refilled = int((time.monotonic() - started) / 10) + 1
    assert 6 <= statuses.count(200) <= 6 + refilled  # the burst, shared: never 6 per worker
    assert statuses[0] == 200 and statuses[-1] == 429


async def test_leases_go_back_when_a_worker_stops(make_gateway: GatewayFactory, redis_server: RedisServer) -> None:
    first = await make_gateway(redis_url=redis_server.url)
    key = await first.add_key("returns", "pro")  # 2,000 credits a day
    assert await call(first, key, PREMIUM) == 200
    gateway = first.gateway
    assert gateway.redis is not None
    account = gateway.directory.accounts[max(gateway.directory.accounts)]
    assert isinstance(gateway.limits, SharedLimits)
    day = gateway.limits.today()
    held = gateway.limits.ledger.remaining(account.id, day)
    assert held > 0
    left_before = await gateway.redis.credits_left(account.id, day)
    await first.stop()
    probe = RedisSyncProbe(redis_server.url)
    try:
        assert await probe.sync.credits_left(account.id, day) == (left_before or 0) + held
    finally:
        await probe.close()


async def test_a_lease_whose_reply_was_lost_is_recovered_not_stranded(make_gateway: GatewayFactory,
                                                                      redis_server: RedisServer) -> None:
    """Redis ran the lease script, the answer never came back: once Redis answers, the worker asks by id."""
    cutter = await ReplyCutter("127.0.0.1", redis_server.port).start()
    try:
        gw = await make_gateway(redis_url=cutter.url)
        key = await gw.add_key("cut", "pro")  # 2,000 credits a day
        assert await call(gw, key, PREMIUM) == 200
        gateway = gw.gateway
        shared = gateway.limits
        assert isinstance(shared, SharedLimits)
        cutter.cutting = b":lease:"  # the key of a credit lease's record: only lease trips lose their replies
        statuses: Counter[int] = Counter()
        for _ in range(500):  # until the lease in hand runs out and the next trip's answer is cut
            statuses[await call(gw, key, PREMIUM)] += 1
            if statuses[503]:
                break
        assert statuses[503] == 1 and cutter.cut > 0 and shared.unsettled
        cutter.cutting = None
        spent, held, left = await totals_once_settled(gateway, "the lost lease")
        assert spent == (statuses[200] + 1) * 5
        assert spent + held + left == 2000  # the lost lease is back in the ledger, not stranded in Redis
        assert await call(gw, key, PREMIUM) == 200
    finally:
        await cutter.close()


class RedisSyncProbe:
    def __init__(self, url: str) -> None:
        from clexproxy.sync.redis import RedisSync

        self.sync = RedisSync(url)

    async def close(self) -> None:
        await self.sync.close()


async def test_redis_down_fails_closed_beyond_the_lease(make_gateway: GatewayFactory,
                                                        redis_server: RedisServer) -> None:
    gw = await make_gateway(redis_url=redis_server.url)
    key = await gw.add_key("outage", "pro")
    assert await call(gw, key, PREMIUM) == 200  # a lease of a few calls is now in hand
    redis_server.kill()
    statuses = Counter([await call(gw, key, PREMIUM) for _ in range(30)])
    assert statuses[200] >= 1 and statuses[503] >= 1 and set(statuses) <= {200, 503}
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client(key).chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    assert info.value.status_code == 503
    assert info.value.response.headers["Retry-After"].isdigit()
    assert info.value.body["code"] == "service_unavailable"  # type: ignore[index]
    redis_server.start()
    for _ in range(100):  # the gateway tries Redis again after a pause that doubles up to 5 s
        if await call(gw, key, PREMIUM) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the gateway did not lease again after Redis came back")


async def test_a_revoke_announced_on_redis_bites_without_waiting_for_a_poll(
    make_gateway: GatewayFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    gw = await make_gateway(redis_url=redis_server.url, store_poll_seconds=3600.0)  # no poll will come
    key = await gw.add_key("announced", "pro")
    assert await call(gw, key, CHEAP) == 200
    keys = await gw.gateway.store.list_keys("announced")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clexproxy", "keys", "revoke", str(keys[0].id), "--data-dir", str(tmp_path / "data"),
         "--redis", redis_server.url],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    for _ in range(50):
        if await call(gw, key, CHEAP) == 401:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the announced revoke was not applied")


async def test_a_lease_lands_even_when_the_call_that_asked_for_it_leaves(make_gateway: GatewayFactory,
                                                                        redis_server: RedisServer) -> None:
    gw = await make_gateway(redis_url=redis_server.url)
    await gw.add_key("leaves", "pro")
    gateway = gw.gateway
    limits = gateway.limits
    assert isinstance(limits, SharedLimits) and gateway.redis is not None
    account = gateway.directory.accounts[max(gateway.directory.accounts)]
    day = limits.today()
    limits.track(account)
    bucket = await limits.count_request(account)
    asking = asyncio.ensure_future(limits.admit(account, 5, bucket))  # no lease in hand: a trip to Redis
    await asyncio.sleep(0)  # the trip to Redis has started
    asking.cancel()  # the client left
    for _ in range(100):
        if limits.ledger.remaining(account.id, day) > 0:
            break
        await asyncio.sleep(0.01)
    held = limits.ledger.remaining(account.id, day)
    assert held > 0
    assert (await gateway.redis.credits_left(account.id, day) or 0) + held == 2000  # nothing stranded in Redis


OPEN_PLAN = """
[plans.open]
credits_per_day = 1000
requests_per_minute = 10000
max_keys = 1
fail_open = true
"""


async def test_a_fail_open_plan_keeps_answering_and_is_charged_when_redis_returns(
    make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    gw = await make_gateway(redis_url=redis_server.url, config=OPEN_PLAN)
    key = await gw.add_key("open", "open")
    assert await call(gw, key, PREMIUM) == 200  # a lease from Redis
    redis_server.kill()
    during = Counter([await call(gw, key, PREMIUM) for _ in range(30)])
    assert during == Counter({200: 30})  # beyond the lease, on this worker's own count
    gateway = gw.gateway
    assert gateway.limits.unsettled
    redis_server.start()
    spent, held, left = await totals_once_settled(gateway, "the outage's spending")
    assert spent == 31 * 5
    assert left + held + spent == 1000  # nothing lost, nothing charged twice


async def test_a_fail_open_plan_stops_at_its_share_of_the_day(make_gateway: GatewayFactory,
                                                              redis_server: RedisServer) -> None:
    gw = await make_gateway(redis_url=redis_server.url, workers=4, config=OPEN_PLAN)
    key = await gw.add_key("open-capped", "open")
    redis_server.kill()
    statuses = Counter([await call(gw, key, PREMIUM) for _ in range(60)])
    assert statuses == Counter({200: 50, 429: 10})  # 1000 / 4 workers = 250 credits = 50 calls of 5
