"""Credits, the per-minute limit, refunds, disconnects and persistence, against real servers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from clexproxy.clock import ManualClock
from clexproxy.demo.recorder import DemoRecorder

from .conftest import GatewayFactory, RunningGateway

PREMIUM = "moonshotai/kimi-k2.5"  # 5 credits
CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit
LARGE = "meta/llama-3.3-70b-instruct"  # 3 credits
HELLO = [{"role": "user", "content": "Hello!"}]


async def test_daily_credits_exhaust_exactly(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("freebie", "free")  # 100 credits, 40 rpm
    client = gw.client(key)
    seen = []
    for _ in range(20):
        raw = await client.chat.completions.with_raw_response.create(model=PREMIUM, messages=HELLO, stream=False)
        seen.append(int(raw.headers["X-Clex-Credits-Remaining"]))
    assert seen == list(range(95, -1, -5))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    response = info.value.response
    error = response.json()["error"]
    assert error["limit"] == "daily_credits" and error["code"] == "rate_limit_exceeded" and error["status"] == 429
    assert response.headers["x-should-retry"] == "false"
    assert int(response.headers["Retry-After"]) == 12 * 3600
    assert response.headers["X-Clex-Credits-Remaining"] == "0"
    # A cheaper model does not fit either: nothing is left.
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)


async def test_budget_resets_at_utc_midnight(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("nightly", "free")
    client = gw.client(key)
    for _ in range(20):
        await client.chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    clock.advance(12 * 3600 - 1)  # 23:59:59 UTC: still the same day
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    assert info.value.response.headers["X-Clex-Credits-Reset"] == "1"
    clock.advance(1)  # 00:00:00 UTC
    raw = await client.chat.completions.with_raw_response.create(model=PREMIUM, messages=HELLO, stream=False)
    assert raw.headers["X-Clex-Credits-Remaining"] == "95"
    assert raw.headers["X-Clex-Credits-Reset"] == str(24 * 3600)


async def test_requests_per_minute(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("bursty", "free")  # 40 rpm
    client = gw.client(key)
    remaining_requests = []
    for _ in range(40):
        raw = await client.chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO, stream=False)
        remaining_requests.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining_requests == list(range(39, -1, -1))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    response = info.value.response
    assert response.json()["error"]["limit"] == "requests_per_minute"
    assert response.headers["Retry-After"] == "2"  # 1.5 s for one token at 40/min, rounded up
    assert response.headers["retry-after-ms"] == "1500"
    assert "x-should-retry" not in response.headers
    assert response.headers["X-Clex-Credits-Remaining"] == "60"  # the refused call reserved nothing
    clock.advance(1.5)  # 40/min refills one request every 1.5 s
    await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)


async def test_refund_on_upstream_error(gw: RunningGateway, key: str) -> None:
    client = gw.client(key, default_headers={"x-demo-status": "500"})
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=LARGE, messages=HELLO, stream=stream)
    assert await gw.credits_remaining(key, CHEAP) == 2000


async def stream_events(gw: RunningGateway, key: str, **knobs: str) -> tuple[bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": LARGE, "messages": HELLO},
        headers={"Authorization": f"Bearer {key}", **knobs},
    ) as resp:
        return await resp.read(), dict(resp.headers)


@pytest.mark.parametrize("delay_ms", ["30", "0"])
async def test_stream_cut_short_ends_with_error_event_and_is_charged(
    gw: RunningGateway, key: str, delay_ms: str
) -> None:
    """What the upstream sent before the drop reaches the client, even when it came in the same read as the drop."""
    knobs = {"x-demo-drop-after": "3", "x-demo-tokens": "10", "x-demo-delay-ms": delay_ms}
    body, _ = await stream_events(gw, key, **knobs)
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 1 + 3 + 2  # the role chunk, three tokens, the error, [DONE]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][len(b"data: "):])["error"]
    assert error["code"] == "service_unavailable" and error["status"] == 503
    assert await gw.credits_remaining(key, CHEAP) == 1997  # the answer had started: charged


async def test_stream_cut_before_any_event_is_refunded(make_gateway: GatewayFactory) -> None:
    """An upstream that answers 200 with SSE headers and then hangs up: no answer started, nothing charged.

    Such a 200 is a failed attempt like a 5xx (issue 10, item 7): retried on the fallback (which
    hangs up too), then SPEC's 503 JSON with Retry-After, not a 200 whose headers went out first.
    """

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await make_gateway(demo_upstream_url=f"http://127.0.0.1:{port}/v1")
        key = await gw.add_key("cut", "pro")
        body, headers = await stream_events(gw, key)
        assert headers["Content-Type"].startswith("application/json") and int(headers["Retry-After"]) >= 1
        assert orjson.loads(body)["error"]["code"] == "service_unavailable"
        assert headers["X-Clex-Credits-Remaining"] == "2000"
        assert await gw.credits_remaining(key, CHEAP) == 2000
    finally:
        server.close()
        await server.wait_closed()


async def test_stream_cut_after_the_role_chunk_is_charged(gw: RunningGateway, key: str) -> None:
    """The role chunk is the first byte of the answer: from there on the call is charged."""
    body, _ = await stream_events(gw, key, **{"x-demo-drop-after": "0"})
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 3 and b'"role":"assistant"' in events[0]
    assert await gw.credits_remaining(key, CHEAP) == 1997


async def test_openai_client_sees_a_cut_stream_as_an_error(gw: RunningGateway, key: str) -> None:
    client = gw.client(key, default_headers={"x-demo-drop-after": "2", "x-demo-tokens": "10", "x-demo-delay-ms": "30"})
    stream = await client.chat.completions.create(model=LARGE, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_before_first_token_cancels_upstream_and_refunds(
    gw: RunningGateway, key: str, recorder: DemoRecorder, stream: bool
) -> None:
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": LARGE, "messages": HELLO, "stream": stream},
                headers={"Authorization": f"Bearer {key}", "x-demo-ttft-ms": "30000", "X-Request-Id": "leaver"},
            )
        )
        seen = await recorder.wait_for(lambda r: r.request_id == "leaver", timeout=5)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(seen.finished.wait(), 5)
    assert seen.disconnected and not seen.completed
    await asyncio.sleep(0.05)
    assert await gw.credits_remaining(key, CHEAP) == 2000


async def test_disconnect_mid_stream_cancels_upstream_and_charges(
    gw: RunningGateway, key: str, recorder: DemoRecorder
) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": LARGE, "messages": HELLO},
            headers={"Authorization": f"Bearer {key}", "x-demo-tokens": "1000", "x-demo-delay-ms": "20",
                     "X-Request-Id": "mid"},
        )
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: {")
        resp.close()
    seen = await recorder.wait_for(lambda r: r.request_id == "mid", timeout=5)
    await asyncio.wait_for(seen.finished.wait(), 5)
    assert seen.disconnected and not seen.completed
    assert await gw.credits_remaining(key, CHEAP) == 1997


async def test_restart_keeps_usage(make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path) -> None:
    data = tmp_path / "persist"
    gw = await make_gateway(clock=clock, data_dir=data)
    key = await gw.add_key("durable", "starter")  # 500/day
    client = gw.client(key)
    for _ in range(4):
        await client.chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    await gw.stop()
    again = await make_gateway(clock=clock, data_dir=data)
    assert await again.credits_remaining(key, CHEAP) == 480
    raw = await again.client(key).chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO, stream=False)
    assert raw.headers["X-Clex-Credits-Remaining"] == "479"


async def test_a_flush_waits_for_the_write_already_in_flight(
    make_gateway: GatewayFactory, clock: ManualClock, tmp_path: Path
) -> None:
    """A flush that finds nothing to drain still returns only after the earlier write lands.

    Without that, a caller reading the store right after its flush (the admin usage report, Redis
    seeding a day's spend) reads it short while the timer's write waits on a locked database.
    """
    data = tmp_path / "locked"
    gw = await make_gateway(clock=clock, data_dir=data, store_flush_seconds=3600.0)  # only this test flushes
    key = await gw.add_key("inflight", "starter")
    await gw.client(key).chat.completions.create(model=PREMIUM, messages=HELLO, stream=False)
    other = sqlite3.connect(data / "clexproxy.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        first = asyncio.create_task(gw.gateway.sync.flush_usage())  # drains the 5 credits, then waits on the lock
        await asyncio.sleep(0)
        second = asyncio.create_task(gw.gateway.sync.flush_usage())  # nothing left to drain
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await second
    account = await gw.gateway.store.get_account("inflight")
    assert account is not None
    spent = await gw.gateway.store.credits_spent(gw.gateway.limits.today())
    assert spent[account.id] == 5
    await first


def cli(data_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clexproxy", *args, "--data-dir", data_dir],
        capture_output=True, text=True, timeout=60, env={**os.environ, "CLEX_CONFIG": ""},
    )


async def eventually_status(gw: RunningGateway, key: str, status: int, within: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": CHEAP, "messages": HELLO, "stream": False},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                if resp.status == status:
                    return
            assert loop.time() < deadline, f"still {resp.status} after {within}s"
            await asyncio.sleep(0.02)


async def test_cli_keys_take_effect_in_a_running_server(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    data = tmp_path / "shared"
    gw = await make_gateway(data_dir=data, store_poll_seconds=0.25)
    created = await asyncio.to_thread(cli, str(data), "keys", "create", "--account", "cli-user", "--plan", "starter")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("clex_") and len(key) >= 37
    await eventually_status(gw, key, 200)
    listing = await asyncio.to_thread(cli, str(data), "keys", "list", "--account", "cli-user")
    assert key not in listing.stdout and "cli-user" in listing.stdout
    key_id = listing.stdout.strip().splitlines()[-1].split()[0]
    revoked = await asyncio.to_thread(cli, str(data), "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    await eventually_status(gw, key, 401)


async def test_cli_plan_change_applies_to_a_running_server(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    data = tmp_path / "plans"
    gw = await make_gateway(data_dir=data, store_poll_seconds=0.25)
    key = await gw.add_key("upgrader", "free")
    assert (await gw.credits_remaining(key, CHEAP)) == 100
    changed = await asyncio.to_thread(cli, str(data), "accounts", "set-plan", "upgrader", "pro")
    assert changed.returncode == 0, changed.stderr
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while await gw.credits_remaining(key, CHEAP) != 2000:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)


async def test_cli_refuses_past_the_plan_key_limit(tmp_path: Path) -> None:
    data = str(tmp_path / "limits")
    first = await asyncio.to_thread(cli, data, "keys", "create", "--account", "solo", "--plan", "free")
    assert first.returncode == 0
    second = await asyncio.to_thread(cli, data, "keys", "create", "--account", "solo")
    assert second.returncode != 0 and "allows 1" in second.stderr
    accounts = await asyncio.to_thread(cli, data, "accounts", "list")
    assert "solo" in accounts.stdout and "free" in accounts.stdout
