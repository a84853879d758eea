"""Issue 10, items 3, 19 and 20 end to end: Redis metrics, unforgeable access lines, 405/OPTIONS, the usage report.

Real gateways, a real redis-server (killed for real), scrapes parsed with prometheus-client's own text parser.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from clexproxy.clock import ManualClock
from clexproxy.observability.metrics import Metrics
from tests.metrics_samples import Samples, parse_samples, sample_total
from tests.redis_server import RedisServer

from .conftest import GatewayFactory, RunningGateway

CHEAP = "meta/llama-3.1-8b-instruct"
HELLO = [{"role": "user", "content": "Hello!"}]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

async def scrape(gw: RunningGateway) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/metrics") as resp:
        assert resp.status == 200
        return parse_samples(await resp.text())


def present(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


async def call(gw: RunningGateway, key: str) -> int:
    try:
        await gw.client(key).chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


# -- item 19: the Redis metrics the alerts and the dashboard watch ---------------------------------------------------


async def test_redis_up_drops_to_0_when_redis_dies_and_comes_back(make_gateway: GatewayFactory,
                                                                  redis_server: RedisServer) -> None:
    gw = await make_gateway(redis_url=redis_server.url)
    key = await gw.add_key("watched", "pro")
    assert await call(gw, key) == 200  # a per-minute batch and a credit lease, both from Redis
    up = await scrape(gw)
    assert sample_total(up, "clexproxy_redis_up") == 1
    assert sample_total(up, "clexproxy_redis_errors_total") == 0  # a held subscription is not a failing one
    assert sample_total(up, "clexproxy_lease_grants_total", plan="pro") >= 1
    assert sample_total(up, "clexproxy_redis_sync_seconds_count", operation="take_credits") >= 1
    assert sample_total(up, "clexproxy_redis_sync_seconds_count", operation="take_slots") >= 1
    assert sample_total(up, "clexproxy_redis_sync_seconds_bucket", operation="take_credits", le="+Inf") >= 1

    redis_server.kill()
    fresh = await gw.add_key("fresh", "pro")  # a new account: its first call must ask Redis for slots and credits
    assert await call(gw, fresh) == 503  # credits fail closed
    down = await scrape(gw)
    assert sample_total(down, "clexproxy_redis_up") == 0
    assert sample_total(down, "clexproxy_redis_errors_total") > sample_total(up, "clexproxy_redis_errors_total")
    assert sample_total(down, "clexproxy_redis_errors_total", operation="take_slots") >= 1

    redis_server.start()
    for _ in range(100):  # the circuit tries Redis again after a pause that doubles up to 5 s
        if await call(gw, fresh) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the gateway did not lease again after Redis came back")
    assert sample_total(await scrape(gw), "clexproxy_redis_up") == 1


async def test_no_redis_series_without_redis(gw: RunningGateway, key: str) -> None:
    assert await call(gw, key) == 200
    samples = await scrape(gw)
    for name in ("clexproxy_redis_up", "clexproxy_redis_errors_total", "clexproxy_lease_grants_total",
                 "clexproxy_redis_sync_seconds_count"):
        assert not present(samples, name), name


def test_a_host_shows_redis_down_when_one_worker_is_cut_off(tmp_path: Path) -> None:
    """Two workers of a host: redis_up is the lowest of them, not the sum; errors and trips add up."""
    reaching = Metrics(metrics_dir=str(tmp_path))
    cut_off = Metrics(metrics_dir=str(tmp_path))
    reaching.redis_call("take_slots", 0.002)
    cut_off.redis_call("take_slots", 0.003)
    cut_off.redis_failed("take_credits")
    cut_off.write_snapshot()
    samples = parse_samples(reaching.render().decode())
    assert sample_total(samples, "clexproxy_redis_up") == 0
    assert sample_total(samples, "clexproxy_redis_errors_total", operation="take_credits") == 1
    assert sample_total(samples, "clexproxy_redis_sync_seconds_count", operation="take_slots") == 2
    cut_off.redis_call("take_credits", 0.001)  # it reaches Redis again
    cut_off.write_snapshot()
    assert sample_total(parse_samples(reaching.render().decode()), "clexproxy_redis_up") == 1


def test_every_metric_the_alerts_and_the_dashboard_watch_is_exported() -> None:
    exported = {f.name + "_total" if f.kind == "counter" else f.name for f in Metrics()._families}
    for path in (DEPLOY / "alerts.yml", DEPLOY / "grafana" / "clexproxy.json"):
        watched = {re.sub(r"_(bucket|sum|count)$", "", name)
                   for name in re.findall(r"clexproxy_[a-z_]+", path.read_text(encoding="utf-8"))}
        assert watched, path.name
        assert watched <= exported, f"{path.name} watches metrics nothing exports: {sorted(watched - exported)}"


# -- item 3: access lines a client cannot forge ----------------------------------------------------------------------

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)')


def pairs(line: str) -> list[tuple[str, str]]:
    """key=value pairs of a text access line (after its timestamp, level and logger), quoted values decoded.

    The whole line must be made of pairs: anything a pair cannot explain fails the test.
    """
    body = line.split(" clexproxy.access ", 1)[1]
    found, at = [], 0
    while at < len(body):
        match = _PAIR.match(body, at)
        assert match is not None, f"not a key=value pair at {body[at:]!r}"
        key, raw = match.groups()
        found.append((key, codecs.decode(raw[1:-1], "unicode_escape") if raw.startswith('"') else raw))
        at = match.end()
    return found


async def raw_get(gw: RunningGateway, target: bytes, headers: bytes = b"") -> bytes:
    host, port = gw.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_path_is_logged_as_sent_and_cannot_forge_a_line(make_gateway: GatewayFactory,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format="text")
    forged = b"/v1/nothing%20status=200%0d%1b[2K2026-11-30%2000:00:00,000%20INFO%20clexproxy.access%20request_id=x"
    answer = await raw_get(gw, forged + b"?key=sk-in-a-query")
    assert answer.startswith(b"HTTP/1.1 404")
    gw.gateway.access_log.flush()
    text = sink.getvalue().decode("ascii")
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text
    assert "sk-in-a-query" not in text  # the query string is never logged
    fields = pairs(text.rstrip("\n"))
    assert [k for k, _ in fields] == ["request_id", "method", "path", "status", "duration_ms"]
    assert dict(fields)["path"] == forged.decode()  # percent-encoded, as the client wrote it


async def test_a_client_request_id_cannot_add_fields(make_gateway: GatewayFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format="text")
    key = await gw.add_key("forger", "pro")
    forged = 'abc account_id=999 credits=0 "x\\'
    await gw.client(key).chat.completions.create(model=CHEAP, messages=HELLO, stream=False,
                                                 extra_headers={"X-Request-Id": forged})
    await raw_get(gw, b"/v1/models", b"X-Request-Id: " + forged.encode() + b"\r\n")
    gw.gateway.access_log.flush()
    lines = sink.getvalue().decode("ascii").splitlines()
    assert len(lines) == 2
    for line in lines:
        keys = [k for k, _ in pairs(line)]
        assert len(keys) == len(set(keys)), line  # no field twice: nothing was added
        rid = dict(pairs(line))["request_id"]
        assert rid == forged or rid.startswith("req_")  # the client's, whole, or one of ours if it was refused
    call_line = dict(pairs(lines[0]))
    assert call_line["credits"] == "1" and call_line["account_id"] != "999"


# -- item 20: the 405 and OPTIONS answers, the usage report's day ----------------------------------------------------


async def request(gw: RunningGateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, gw.base_url + path, **kwargs) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None, resp.headers


async def test_options_answers_with_the_methods_a_path_takes(gw: RunningGateway) -> None:
    for path, allow in (("/v1/chat/completions", "POST, OPTIONS"), ("/v1/embeddings", "POST, OPTIONS"),
                        ("/v1/models", "GET, HEAD, OPTIONS")):
        status, body, headers = await request(gw, "OPTIONS", path)
        assert (status, body) == (204, None), path
        assert headers["Allow"] == allow
        assert headers["X-Request-Id"]


async def test_a_wrong_method_is_told_only_the_methods_that_work(gw: RunningGateway) -> None:
    status, doc, headers = await request(gw, "PUT", "/v1/chat/completions")
    assert status == 405 and doc["error"]["code"] == "method_not_allowed"
    assert headers["Allow"] == "POST, OPTIONS"  # a GET there is refused too: it is no way in
    assert doc["error"]["message"] == "/v1/chat/completions does not take PUT; use POST."
    status, doc, headers = await request(gw, "DELETE", "/v1/models")
    assert status == 405 and doc["error"]["message"] == "/v1/models does not take DELETE; use GET."
    assert headers["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(("path", "field"), [("/v1/chat/completions", "messages"), ("/api/chat", "messages"),
                                             ("/v1/embeddings", "input")])
async def test_a_get_on_an_api_endpoint_says_to_post_json(gw: RunningGateway, path: str, field: str) -> None:
    status, doc, headers = await request(gw, "GET", path)
    assert status == 405 and doc["error"]["code"] == "method_not_allowed"
    assert headers["Allow"] == "POST, OPTIONS"
    message = doc["error"]["message"]
    assert "POST" in message and "application/json" in message and "Authorization: Bearer" in message
    example = orjson.loads(message[message.index("{"):message.rindex("}") + 1])
    assert example["model"] in gw.settings.catalog.models and field in example


async def test_the_usage_report_gives_the_day_as_a_date(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    token = "admin-" + "x" * 24
    gw = await make_gateway(clock=clock, admin_token=token)  # NOON: 2026-11-25 12:00 UTC
    key = await gw.add_key("dated", "pro")
    assert await call(gw, key) == 200
    status, doc, _ = await request(gw, "GET", "/admin/accounts/dated/usage", headers={"X-Admin-Token": token})
    assert status == 200
    assert [row["day"] for row in doc["usage"]] == ["2026-11-25"]
