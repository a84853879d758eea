"""Every metric moves as real requests flow; one scrape reports several processes; the access log.

The exposition is parsed with prometheus-client's own text parser, as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import aiohttp
import openai
import pytest

from clexproxy.clock import ManualClock
from clexproxy.demo.recorder import DemoRecorder
from tests.metrics_samples import Samples, parse_samples, sample_total

from .conftest import GatewayFactory, RunningGateway

LARGE = "meta/llama-3.3-70b-instruct"  # 3 credits, tier large
CHEAP = "meta/llama-3.1-8b-instruct"
HELLO = [{"role": "user", "content": "a secret prompt about penguins"}]
CHAT = "/chat/completions"

async def scrape(gw: RunningGateway) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse_samples(await resp.text())


async def post(gw: RunningGateway, key: str, body: dict[str, object], **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    ) as resp:
        return resp.status, await resp.read()


async def test_success_non_stream(gw: RunningGateway, key: str) -> None:
    before = await scrape(gw)
    await gw.client(key).chat.completions.create(model=LARGE, messages=HELLO, stream=False)
    after = await scrape(gw)

    def moved(name: str, **labels: str) -> float:
        return sample_total(after, name, **labels) - sample_total(before, name, **labels)

    assert moved("clexproxy_requests_total", endpoint=CHAT, api="chat", model=LARGE, plan="pro",
                 status_class="2xx") == 1
    assert moved("clexproxy_request_duration_seconds_count", endpoint=CHAT, api="chat", stream="false") == 1
    assert moved("clexproxy_gateway_overhead_seconds_count", endpoint=CHAT, api="chat", stream="false") == 1
    assert moved("clexproxy_upstream_ttfb_seconds_count", provider="demo") == 1
    assert moved("clexproxy_tokens_total", model=LARGE, kind="completion", api="chat") == 8
    assert moved("clexproxy_tokens_total", model=LARGE, kind="prompt") > 0
    assert moved("clexproxy_credits_charged_total", plan="pro", tier="large") == 3
    assert moved("clexproxy_credits_refunded_total") == 0
    assert sample_total(after, "clexproxy_in_flight_requests") == 0


async def test_stream(gw: RunningGateway, key: str) -> None:
    before = await scrape(gw)
    stream = await gw.client(key).chat.completions.create(
        model=LARGE, messages=HELLO, stream=True, extra_headers={"x-demo-tokens": "20", "x-demo-delay-ms": "2"}
    )
    async for _ in stream:
        pass
    after = await scrape(gw)
    assert sample_total(after, "clexproxy_stream_ttft_seconds_count", model=LARGE, api="chat") - sample_total(
        before, "clexproxy_stream_ttft_seconds_count", model=LARGE, api="chat") == 1
    assert sample_total(after, "clexproxy_stream_tokens_per_second_count", model=LARGE) - sample_total(
        before, "clexproxy_stream_tokens_per_second_count", model=LARGE) == 1
    assert sample_total(after, "clexproxy_request_duration_seconds_count", stream="true") == 1
    assert sample_total(after, "clexproxy_tokens_total", model=LARGE, kind="completion") == 20
    assert sample_total(after, "clexproxy_open_streams") == 0


async def test_gauges_while_a_stream_is_open(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": LARGE, "messages": HELLO},
            headers={"Authorization": f"Bearer {key}", "x-demo-tokens": "50", "x-demo-delay-ms": "40"},
        )
        await resp.content.readuntil(b"\n\n")
        during = await scrape(gw)
        await resp.read()
        resp.release()
    after = await scrape(gw)
    assert sample_total(during, "clexproxy_open_streams") == 1
    assert sample_total(during, "clexproxy_in_flight_requests", endpoint=CHAT) == 1
    assert sample_total(after, "clexproxy_open_streams") == 0
    assert sample_total(after, "clexproxy_in_flight_requests", endpoint=CHAT) == 0


async def test_4xx_and_429(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock)
    key = await gw.add_key("small", "free")  # 40 rpm, 100 credits
    await post(gw, key, {"model": LARGE, "messages": HELLO, "temperature": 5})
    await post(gw, "clex_" + "z" * 40, {"model": LARGE, "messages": HELLO})
    await post(gw, key, {"model": "no/such-model", "messages": HELLO})
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_requests_total", plan="free", status_class="4xx") == 2
    assert sample_total(samples, "clexproxy_requests_total", plan="-", status_class="4xx") == 1
    assert sample_total(samples, "clexproxy_requests_total", model="-", status_class="4xx") == 3

    premium = "moonshotai/kimi-k2.5"
    client = gw.client(key)
    for _ in range(20):
        await client.chat.completions.create(model=premium, messages=HELLO, stream=False)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=premium, messages=HELLO, stream=False)
    for _ in range(40):
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_rate_limited_total", plan="free", limit="daily_credits") >= 1
    assert sample_total(samples, "clexproxy_rate_limited_total", plan="free", limit="requests_per_minute") >= 1
    assert sample_total(samples, "clexproxy_rate_limited_total", plan="free") == 41
    assert sample_total(samples, "clexproxy_credits_charged_total", plan="free", tier="premium") == 100


async def test_upstream_failure_refund_retry_and_fallback(gw: RunningGateway, key: str) -> None:
    await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False}, **{"x-demo-status": "500"})
    samples = await scrape(gw)
    # The model's deployment failed, then the fallback's did too: two failed attempts, one retry.
    assert sample_total(samples, "clexproxy_upstream_errors_total", provider="demo", kind="5xx") == 2
    assert sample_total(samples, "clexproxy_upstream_retries_total") == 1
    assert sample_total(samples, "clexproxy_upstream_ttfb_seconds_count", provider="demo") == 2  # error answers too
    assert sample_total(samples, "clexproxy_credits_refunded_total", plan="pro", tier="large") == 3
    assert sample_total(samples, "clexproxy_requests_total", model=LARGE, status_class="5xx") == 1

    status, _ = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False},
                           **{"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": "m1"})
    assert status == 200
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_fallbacks_total", model=LARGE) == 1
    assert sample_total(samples, "clexproxy_upstream_errors_total", provider="demo", kind="5xx") == 3


async def test_unreachable_upstream_counts_connect_errors(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(demo_upstream_url="http://127.0.0.1:9/v1")
    key = await gw.add_key("nowhere", "pro")
    status, _ = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False})
    assert status == 503
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_upstream_errors_total", provider="demo", kind="connect") == 2


async def test_midstream_drop_and_disconnects(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    await post(gw, key, {"model": LARGE, "messages": HELLO}, **{"x-demo-drop-after": "2", "x-demo-tokens": "9"})
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_upstream_errors_total", provider="demo", kind="midstream_drop") == 1

    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": LARGE, "messages": HELLO, "stream": False},
            headers={"Authorization": f"Bearer {key}", "x-demo-ttft-ms": "30000", "X-Request-Id": "gone"},
        ))
        seen = await recorder.wait_for(lambda r: r.request_id == "gone")
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(seen.finished.wait(), 5)
    for _ in range(100):  # bounded: the handler's settlement runs right after the cancellation
        samples = await scrape(gw)
        if sample_total(samples, "clexproxy_client_disconnects_total", endpoint=CHAT, phase="before_answer") == 1:
            break
        await asyncio.sleep(0.02)
    assert sample_total(samples, "clexproxy_client_disconnects_total", endpoint=CHAT, phase="before_answer") == 1
    assert sample_total(samples, "clexproxy_in_flight_requests") == 0


async def test_build_and_config_info(gw: RunningGateway) -> None:
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_build_info", fastpath="compiled") + sample_total(
        samples, "clexproxy_build_info", fastpath="pure") == 1
    assert sample_total(samples, "clexproxy_config_info", demo="true", models="20") == 1
    assert sample_total(samples, "clexproxy_workers") == 1


async def test_no_account_or_key_labels(gw: RunningGateway, key: str) -> None:
    await gw.client(key).chat.completions.create(model=LARGE, messages=HELLO, stream=False)
    samples = await scrape(gw)
    for _, labels in samples:
        names = {k for k, _ in labels}
        assert not names & {"account", "account_id", "key", "key_id"}
        assert all(key not in v for _, v in labels)


async def test_one_scrape_reports_every_process_and_survives_a_restart(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Two gateways sharing a metrics directory stand in for two workers of one host."""
    shared = str(tmp_path / "metrics")
    data = tmp_path / "data"
    first = await make_gateway(data_dir=data, metrics_dir=shared, metrics_flush_seconds=0.05)
    second = await make_gateway(data_dir=data, metrics_dir=shared, metrics_flush_seconds=0.05)
    key = await first.add_key("shared", "pro")
    await second.gateway.sync.sync_store(force=True)
    for gw, n in ((first, 3), (second, 2)):
        for _ in range(n):
            await gw.client(key).chat.completions.create(model=CHEAP, messages=HELLO, stream=False)

    async def settled(gw: RunningGateway, expected: float, workers: float) -> Samples:
        for _ in range(100):  # bounded: snapshots refresh every 50 ms
            samples = await scrape(gw)
            total = sample_total(samples, "clexproxy_requests_total", status_class="2xx")
            if total == expected and sample_total(samples, "clexproxy_workers") == workers:
                return samples
            await asyncio.sleep(0.05)
        raise AssertionError(f"scrape shows {total} requests, expected {expected}")

    await settled(first, 5, 2)
    await settled(second, 5, 2)
    await second.stop()  # the "worker" goes; its counts stay, its gauges leave
    samples = await settled(first, 5, 1)
    assert sample_total(samples, "clexproxy_credits_charged_total", plan="pro", tier="cheap") == 5
    replacement = await make_gateway(data_dir=data, metrics_dir=shared, metrics_flush_seconds=0.05)
    await replacement.client(key).chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    await settled(first, 6, 2)


async def test_metrics_can_be_switched_off(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(metrics_enabled=False)
    key = await gw.add_key("quiet", "pro")
    await gw.client(key).chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    samples = await scrape(gw)
    assert sample_total(samples, "clexproxy_requests_total") == 0
    assert sample_total(samples, "clexproxy_build_info") == 1


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_access_log_lines(make_gateway: GatewayFactory, fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")  # the level `serve` sets by default
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format=fmt)
    key = await gw.add_key("logged", "pro")
    await gw.client(key).chat.completions.create(
        model=LARGE, messages=HELLO, stream=False, extra_headers={"X-Request-Id": "log-me"}
    )
    await post(gw, key, {"model": LARGE, "messages": HELLO, "temperature": 9}, **{"X-Request-Id": "bad-one"})
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/v1/models") as resp:
        await resp.read()
    gw.gateway.access_log.flush()
    text = sink.getvalue().decode()
    assert text.count("\n") == 3
    assert key not in text and "penguins" not in text
    if fmt == "text":
        line = next(ln for ln in text.splitlines() if "request_id=log-me" in ln)
        assert " INFO clexproxy.access " in line and "status=200" in line and "credits=3" in line
        assert " endpoint=/chat/completions api=chat model=" in line
        return
    lines = [json.loads(ln) for ln in text.splitlines()]
    ok = next(line for line in lines if line.get("request_id") == "log-me")
    assert ok["status"] == 200 and ok["credits"] == 3 and ok["model"] == LARGE and ok["provider"] == "demo"
    assert ok["endpoint"] == "/chat/completions" and ok["api"] == "chat"
    assert ok["account_id"] and ok["key_id"] and ok["completion_tokens"] == 8
    assert ok["overhead_ms"] >= 0 and ok["upstream_ms"] >= 0 and ok["level"] == "info"
    bad = next(line for line in lines if line.get("request_id") == "bad-one")
    assert bad["status"] == 400 and bad["credits"] == 0 and bad["error"] == "invalid_request_error"
    assert any(line.get("path") == "/v1/models" and line["status"] == 200 for line in lines)
