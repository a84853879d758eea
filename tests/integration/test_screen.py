"""Refused calls answered by the screen (`Screen`): same answer, same counts, in order.

Requests go over raw sockets so the tests control what shares a connection: a request whose
Authorization header was refused a moment ago, and whose body came with its head, is screened
once every request before it on its connection is answered; one sent with `Connection: close`
always takes the full path, which is what the screened answer is compared with.
"""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest

from clexproxy.clock import ManualClock
from clexproxy.server.proxy_connection import ProxyServer
from tests.metrics_samples import sample_total

from .conftest import GatewayFactory, RunningGateway
from .test_metrics import scrape

CHEAP = "meta/llama-3.1-8b-instruct"
BODY = orjson.dumps({"model": CHEAP, "messages": [{"role": "user", "content": "Hello!"}], "stream": False})
VARYING = {"date", "connection", "keep-alive"}


def request(key: str, *, rid: str = "screen-test", close: bool = False, extra: str = "", body: bytes = BODY) -> bytes:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nX-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n{extra}")
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += chunk[:-2]


async def connect(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def spent_and_fine(gw: RunningGateway, name: str) -> tuple[str, str]:
    """A key whose per-minute limit is spent, and one on a plan with room."""
    flooder = await gw.add_key(f"spent-{name}", "free")
    fine = await gw.add_key(f"fine-{name}", "pro")
    await spend_rpm(gw, flooder)
    return flooder, fine


async def exchange(gw: RunningGateway, *raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `raw` requests on one connection, back to back, and read as many answers."""
    reader, writer = await connect(gw)
    try:
        writer.write(b"".join(raw))
        await writer.drain()
        return [await read_response(reader) for _ in raw]
    finally:
        writer.close()


async def spend_rpm(gw: RunningGateway, key: str) -> None:
    """Use up the free plan's 40 requests (the manual clock never refills the bucket)."""
    client = gw.client(key)
    for _ in range(40):
        await client.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}], stream=False)


def screened(gw: RunningGateway) -> int:
    server = gw.runner.server
    assert isinstance(server, ProxyServer)
    return server.screened


def comparable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in VARYING}


async def raw_answer(gw: RunningGateway, raw: bytes) -> bytes:
    """The answer to `raw` as it came off the socket, less the header lines that may differ between two answers."""
    reader, writer = await connect(gw)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
    finally:
        writer.close()
    kept = [ln for ln in head.split(b"\r\n") if ln.split(b":")[0].lower().decode() not in VARYING]
    return b"\r\n".join(kept) + body


async def test_screened_429_is_the_full_paths_429(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("flooder", "free")
    await spend_rpm(gw, key)
    (f_status, f_headers, f_body), = await exchange(gw, request(key, close=True))
    assert screened(gw) == 0  # the first refusal takes the full path, and marks the key
    (s_status, s_headers, s_body), = await exchange(gw, request(key))
    assert screened(gw) == 1
    assert s_status == f_status == 429
    assert s_body == f_body and orjson.loads(s_body)["error"]["limit"] == "requests_per_minute"
    assert comparable(s_headers) == comparable(f_headers)
    assert await raw_answer(gw, request(key)) == await raw_answer(gw, request(key, close=True))
    assert s_headers["x-request-id"] == "screen-test" and s_headers["x-ratelimit-remaining-requests"] == "0"
    assert int(s_headers["retry-after"]) >= 1 and "x-clex-credits-remaining" in s_headers


ODD_PLANS = """
[plans.'odd "plan" 100% \\ \u00e9']
credits_per_day = 7
requests_per_minute = 1
max_keys = 1

[plans.closed]
credits_per_day = 50
requests_per_minute = 0
max_keys = 1
"""


@pytest.mark.parametrize("plan", ['odd "plan" 100% \\ \u00e9', "closed"])
async def test_screened_429_is_the_full_paths_429_on_any_plan(make_gateway: GatewayFactory, clock: ManualClock,
                                                              plan: str) -> None:
    """A name JSON must escape (and `%`, which the screen's template uses), and a plan that admits nothing."""
    gw = await make_gateway(clock=clock, config=ODD_PLANS)
    key = await gw.add_key("odd", plan)
    await exchange(gw, request(key, rid="spend"))  # the one call a minute (none on "closed")
    clock.advance(0.25)  # the answers' reset and retry times are not round numbers
    full = await raw_answer(gw, request(key, rid="100%25", close=True))
    assert screened(gw) == 0
    (s_status, s_headers, s_body), = await exchange(gw, request(key, rid="100%25"))
    assert screened(gw) == 1 and s_status == 429
    assert await raw_answer(gw, request(key, rid="100%25")) == full  # byte for byte, in the same order
    assert screened(gw) == 2
    assert orjson.loads(s_body)["error"]["message"].startswith(f"Rate limit reached: your {plan} plan")
    if plan == "closed":
        assert s_headers["retry-after"] == "86400" and "admits no requests" in s_body.decode()
    else:
        assert s_headers["x-clex-credits-remaining"] == "6"


async def test_screened_401_is_the_full_paths_401(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    bad = "clex_" + "0" * 48
    (f_status, f_headers, f_body), = await exchange(gw, request(bad, close=True))
    (s_status, s_headers, s_body), = await exchange(gw, request(bad))
    assert screened(gw) == 1
    assert s_status == f_status == 401
    assert s_body == f_body and comparable(s_headers) == comparable(f_headers)
    assert await raw_answer(gw, request(bad)) == await raw_answer(gw, request(bad, close=True))
    assert screened(gw) == 2


async def test_screened_calls_are_counted_and_logged(make_gateway: GatewayFactory, clock: ManualClock,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")  # the level `serve` sets by default
    sink = io.BytesIO()
    gw = await make_gateway(clock=clock, access_stream=sink, log_format="json")
    key = await gw.add_key("counted", "free")
    await spend_rpm(gw, key)
    bad = "clex_" + "1" * 48
    await exchange(gw, request(key, rid="warm-1"), request(bad, rid="warm-2"))  # full path: marks both
    before = await scrape(gw)
    answers = await exchange(gw, request(key, rid="s-1"))
    answers += await exchange(gw, request(bad, rid="s-2"))
    assert [a[0] for a in answers] == [429, 401] and screened(gw) == 2
    after = await scrape(gw)
    limited = "clexproxy_rate_limited_total"
    rpm = "requests_per_minute"
    assert sample_total(after, limited, limit=rpm) - sample_total(before, limited, limit=rpm) == 1
    requests = "clexproxy_requests_total"
    assert sample_total(after, requests, status_class="4xx") - sample_total(before, requests, status_class="4xx") == 2
    gw.gateway.access_log.flush()
    lines = [orjson.loads(line) for line in sink.getvalue().splitlines()]
    first = next(line for line in lines if line.get("request_id") == "s-1")
    assert first["status"] == 429 and first["limit"] == "requests_per_minute" and first["account_id"]
    second = next(line for line in lines if line.get("request_id") == "s-2")
    assert second["status"] == 401 and second["error"] == "authentication_error"


async def test_connection_stays_open_after_a_screened_answer(make_gateway: GatewayFactory,
                                                             clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    flooder, fine = await spent_and_fine(gw, "1")
    reader, writer = await connect(gw)
    try:
        statuses = []
        for key in (flooder, fine, flooder, fine):
            writer.write(request(key))
            statuses.append((await read_response(reader))[0])
        assert statuses == [429, 200, 429, 200] and screened(gw) == 1  # the first refusal marks the key
    finally:
        writer.close()


async def test_answers_keep_their_order_behind_a_call_in_flight(make_gateway: GatewayFactory,
                                                                 clock: ManualClock) -> None:
    """A refused call queued behind a slow admitted one on the same connection is answered after it."""
    gw = await make_gateway(clock=clock)
    flooder, fine = await spent_and_fine(gw, "2")
    await exchange(gw, request(flooder, close=True))  # marks the key: alone, its next call would be screened
    reader, writer = await connect(gw)
    try:
        writer.write(request(fine, rid="slow", extra="x-demo-headers-delay-ms: 400\r\n"))
        await writer.drain()
        await asyncio.sleep(0.1)  # the slow call is in flight when the refused one arrives
        writer.write(request(flooder, rid="refused"))
        first = await read_response(reader)
        second = await read_response(reader)
        assert (first[0], first[1]["x-request-id"]) == (200, "slow")
        assert (second[0], second[1]["x-request-id"]) == (429, "refused")
        assert screened(gw) == 1  # looked at once the slow call's answer was written, not before
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    flooder, fine = await spent_and_fine(gw, "3")
    await exchange(gw, request(flooder, close=True))
    answers = await exchange(gw, request(fine, rid="a"), request(flooder, rid="b"), request(fine, rid="c"))
    assert [(a[0], a[1]["x-request-id"]) for a in answers] == [(200, "a"), (429, "b"), (200, "c")]
    assert screened(gw) == 1  # "b", screened after "a" was answered; "c" waited for it


async def test_body_split_across_packets_takes_the_full_path(make_gateway: GatewayFactory,
                                                              clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    flooder = await gw.add_key("spent4", "free")
    await spend_rpm(gw, flooder)
    await exchange(gw, request(flooder, close=True))
    raw = request(flooder, rid="split")
    reader, writer = await connect(gw)
    try:
        writer.write(raw[:-10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(raw[-10:])
        status, headers, body = await read_response(reader)
        assert status == 429 and headers["x-request-id"] == "split" and screened(gw) == 0
        assert orjson.loads(body)["error"]["limit"] == "requests_per_minute"
    finally:
        writer.close()


async def test_a_refilled_key_passes_the_screen(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("refills", "free")
    await spend_rpm(gw, key)
    assert [a[0] for a in await exchange(gw, request(key, close=True))] == [429]
    assert [a[0] for a in await exchange(gw, request(key))] == [429] and screened(gw) == 1
    clock.advance(60)  # a minute later the bucket is full again
    assert [a[0] for a in await exchange(gw, request(key))] == [200]
    assert [a[0] for a in await exchange(gw, request(key))] == [200]
    assert screened(gw) == 1


async def test_bytes_that_continue_a_partial_request_are_not_screened(make_gateway: GatewayFactory,
                                                                       clock: ManualClock) -> None:
    """A read that looks like a whole refused call but continues a request aiohttp holds part of."""
    gw = await make_gateway(clock=clock)
    flooder, _ = await spent_and_fine(gw, "5")
    await exchange(gw, request(flooder, close=True))  # marks the key
    reader, writer = await connect(gw)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(request(flooder, rid="inside"))
        status, _, _ = await read_response(reader)
        assert status == 400 and screened(gw) == 0  # aiohttp's parser saw it all, and refused the mix
    finally:
        writer.close()
