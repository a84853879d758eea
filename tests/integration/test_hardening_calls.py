"""Issue 10, the proxied call's own path, against real servers: items 5, 14, 17 (the charge), 18 and 20.

Every error after authentication is SPEC's JSON with the metering headers; a call without
`stream` gets JSON from the clients that mean "absent is false"; a fallback's answer is charged
at the model that answered, with Redis-shared limits too.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from typing import Any

import aiohttp
import orjson
import pytest

from clexproxy import relay
from clexproxy.demo.recorder import DemoRecorder
from clexproxy.handlers import proxy
from tests.metrics_samples import sample_total
from tests.redis_server import RedisServer

from .conftest import GatewayFactory, RunningGateway
from .test_metrics import scrape

LARGE = "meta/llama-3.3-70b-instruct"  # 3 credits
CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit: the fallback
EMBED = "nvidia/nv-embedqa-e5-v5"
HELLO = [{"role": "user", "content": "Hello!"}]
METERING = ("X-Clex-Credits-Remaining", "X-Clex-Credits-Limit", "X-Clex-Credits-Reset",
            "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
VERCEL = "ai-sdk/openai-compatible/1.0.19 ai-sdk/provider-utils/3.0.10 runtime/node.js/22"


async def post(gw: RunningGateway, key: str, body: Any, path: str = "/v1/chat/completions",
               **headers: str) -> tuple[int, bytes, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession() as session, session.post(gw.base_url + path, data=data,
                                                               headers=hdrs) as resp:
        return resp.status, await resp.read(), resp.headers


def error_of(raw: bytes, status: int, code: str) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(raw)["error"]
    assert error["status"] == status and error["code"] == code, error
    return error


def metered(headers: Any, remaining: int | None = None) -> None:
    for name in METERING:
        assert name in headers, f"{name} missing from {dict(headers)}"
    if remaining is not None:
        assert headers["X-Clex-Credits-Remaining"] == str(remaining)


async def remaining(gw: RunningGateway, key: str) -> int:
    """Credits left, read from a call that charges nothing (a 400)."""
    status, _, headers = await post(gw, key, {"model": CHEAP})
    assert status == 400
    return int(headers["X-Clex-Credits-Remaining"])


def access_lines(gw: RunningGateway, sink: io.BytesIO) -> list[dict[str, Any]]:
    gw.gateway.access_log.flush()
    return [orjson.loads(line) for line in sink.getvalue().splitlines()]


def fallback_knobs(tag: str) -> dict[str, str]:
    """The demo upstream fails the call's first request (503, overloaded), so the fallback model answers."""
    return {"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": tag}


# 5: errors, not 500s ------------------------------------------------------------------------------


def _deep_body(depth: int) -> bytes:
    """A chat body with an extra field nested so that the whole body is `depth` containers deep."""
    head = orjson.dumps({"model": LARGE, "messages": HELLO, "stream": False})[:-1]
    return head + b',"metadata":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


async def test_json_nested_deeper_than_orjson_writes_is_a_400(gw: RunningGateway, key: str,
                                                             recorder: DemoRecorder) -> None:
    for depth in (255, 300, 1024):  # orjson reads up to 1,024 levels, and writes up to 254
        status, raw, headers = await post(gw, key, _deep_body(depth))
        error = error_of(raw, 400, "invalid_request_error")
        assert "nested" in error["message"] and "254" in error["message"]
        metered(headers, 2000)  # authenticated: the metering headers, and nothing charged
    status, raw, _ = await post(gw, key, _deep_body(254))
    assert status == 200, raw
    assert orjson.dumps(recorder.requests[-1].body["metadata"]) == b"[" * 253 + b"]" * 253  # sent whole
    assert await remaining(gw, key) == 1997


@pytest.mark.parametrize(("role", "kind"), [(["user"], "array"), ({"name": "user"}, "object")])
async def test_a_role_that_is_an_array_or_object_is_a_400(gw: RunningGateway, key: str, role: Any,
                                                          kind: str) -> None:
    _status, raw, headers = await post(gw, key, {"model": LARGE, "messages": [{"role": role, "content": "x"}]})
    error = error_of(raw, 400, "invalid_request_error")
    assert error["param"] == "messages[0].role" and f"got {kind}" in error["message"]
    metered(headers, 2000)


async def test_a_body_that_is_not_the_gzip_it_claims_is_a_400(gw: RunningGateway, key: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = orjson.dumps({"model": LARGE, "messages": HELLO, "stream": False})
    status, raw, headers = await post(gw, key, gzip.compress(body), **{"Content-Encoding": "gzip"})
    assert status == 200, raw  # real gzip is decoded
    for bad in (body, gzip.compress(body)[:20] + b"garbage-after-a-gzip-header"):
        status, raw, headers = await post(gw, key, bad, **{"Content-Encoding": "gzip"})
        error = error_of(raw, 400, "invalid_request_error")
        assert "Content-Encoding" in error["message"] and "gzip" in error["message"]
        assert error["param"] == "Content-Encoding"
        metered(headers, 1997)
        assert headers["Connection"] == "close"  # the parser stopped mid-body: this connection is done
    await asyncio.sleep(0.1)  # aiohttp's handling of the connection after the answer has run
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert await remaining(gw, key) == 1997


async def test_a_bug_after_admission_is_a_500_with_metering_headers_and_a_refund(
    gw: RunningGateway, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected where no input reaches (a bug cannot be produced on demand otherwise)."""

    async def broken(send: Any, call: Any) -> bytes:
        send.close()
        raise RuntimeError("a bug")

    monkeypatch.setattr(relay, "unary", broken)
    _status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False},
                                      **{"X-Request-Id": "bug-1"})
    error = error_of(raw, 500, "internal_server_error")
    assert "a bug" not in error["message"] and "Traceback" not in raw.decode()
    metered(headers, 2000)  # refunded, and said so
    assert headers["X-Request-Id"] == "bug-1"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR and "bug-1" in r.getMessage()]
    monkeypatch.undo()
    assert await remaining(gw, key) == 2000


async def test_a_bug_past_the_handler_is_a_500_with_metering_headers(
    gw: RunningGateway, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in settlement escapes the call's own handling and reaches the last catch-all."""

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gateway.limits, "settle", broken)
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False})
    error_of(raw, 500, "internal_server_error")
    metered(headers)
    status, raw, headers = await post(gw, "clex_" + "x" * 40, {"model": LARGE, "messages": HELLO})
    assert status == 401 and "X-Clex-Credits-Remaining" not in headers  # no account, no metering


async def test_a_bug_before_admission_is_a_500_with_metering_headers(
    gw: RunningGateway, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(body: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(proxy, "check_chat", broken)
    _status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False})
    error_of(raw, 500, "internal_server_error")
    metered(headers, 2000)
    monkeypatch.undo()
    assert await remaining(gw, key) == 2000


# 14: `stream` absent -------------------------------------------------------------------------------


async def test_the_vercel_ai_sdk_without_stream_gets_json(gw: RunningGateway, key: str,
                                                          recorder: DemoRecorder) -> None:
    """`generateText` sends `Accept: */*`, no `stream`, and fails on SSE with "Invalid JSON response"."""
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO},
                                      **{"Accept": "*/*", "User-Agent": VERCEL})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert orjson.loads(raw)["object"] == "chat.completion"
    assert recorder.requests[-1].body["stream"] is False
    # streamText says `stream: true`, and gets its stream
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": True},
                                      **{"Accept": "*/*", "User-Agent": VERCEL})
    assert headers["Content-Type"].startswith("text/event-stream") and raw.endswith(b"data: [DONE]\n\n")
    # curl and `requests` leave `stream` out and rely on SPEC's SSE default, which stays
    for user_agent in ("curl/8.5.0", "python-requests/2.32.3", ""):
        status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO},
                                          **{"Accept": "*/*", "User-Agent": user_agent})
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")


async def test_the_user_agent_list_is_configurable(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(sse_json_user_agents="my-batch-tool/")
    key = await gw.add_key("ua", "pro")
    _, _, mine = await post(gw, key, {"model": LARGE, "messages": HELLO}, **{"User-Agent": "my-batch-tool/2.1"})
    _, _, vercel = await post(gw, key, {"model": LARGE, "messages": HELLO}, **{"User-Agent": VERCEL})
    assert mine["Content-Type"].startswith("application/json")
    assert vercel["Content-Type"].startswith("text/event-stream")  # the list replaced the default


async def test_a_plan_may_answer_json_by_default(make_gateway: GatewayFactory, recorder: DemoRecorder) -> None:
    gw = await make_gateway(config="[plans.batch]\ncredits_per_day = 100\nrequests_per_minute = 100\n"
                                   "max_keys = 1\ndefault_stream = false\n")
    key = await gw.add_key("batcher", "batch")
    status, _raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO}, **{"User-Agent": "curl/8.5.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert recorder.requests[-1].body["stream"] is False
    _, _, asked = await post(gw, key, {"model": LARGE, "messages": HELLO}, **{"Accept": "text/event-stream"})
    _, _, explicit = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": True})
    assert asked["Content-Type"].startswith("text/event-stream")
    assert explicit["Content-Type"].startswith("text/event-stream")


# 17: a fallback's answer, charged at the model that answered -----------------------------------------


async def test_a_fallback_answer_is_charged_at_the_served_model(make_gateway: GatewayFactory,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")  # the level `serve` sets by default
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format="json")
    key = await gw.add_key("fb", "pro")
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False},
                                      **fallback_knobs("fb-json"), **{"X-Request-Id": "fb-json"})
    assert status == 200, raw
    assert headers["X-Clex-Served-Model"] == CHEAP
    assert headers["X-Clex-Credits-Remaining"] == "1999"  # 1 credit, not 3
    assert await remaining(gw, key) == 1999
    status, _, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False})
    assert status == 200 and "X-Clex-Served-Model" not in headers and headers["X-Clex-Credits-Remaining"] == "1996"
    line = next(ln for ln in access_lines(gw, sink) if ln.get("request_id") == "fb-json")
    assert line["credits"] == 1 and line["model"] == LARGE
    assert sample_total(await scrape(gw), "clexproxy_credits_charged_total", plan="pro") == 4  # 1, then 3
    await gw.gateway.sync.flush_usage()
    spent = await gw.gateway.store.credits_spent(gw.gateway.limits.today())
    assert spent[gw.gateway.directory.accounts[max(gw.gateway.directory.accounts)].id] == 4


async def test_a_streamed_fallback_answer_is_charged_at_the_served_model(make_gateway: GatewayFactory,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format="json")
    key = await gw.add_key("fb-stream", "pro")
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": True},
                                      **fallback_knobs("fb-sse"), **{"X-Request-Id": "fb-sse"})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n"), raw
    assert headers["X-Clex-Served-Model"] == CHEAP and headers["X-Clex-Credits-Remaining"] == "1999"
    assert await remaining(gw, key) == 1999
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": True})
    assert "X-Clex-Served-Model" not in headers and headers["X-Clex-Credits-Remaining"] == "1996"
    line = next(ln for ln in access_lines(gw, sink) if ln.get("request_id") == "fb-sse")
    assert line["credits"] == 1 and line["stream"] is True


async def test_a_streamed_fallback_cut_mid_answer_is_charged_at_the_served_model(
    gw: RunningGateway, key: str
) -> None:
    """The fallback's answer started, then its connection dropped: the call is charged, at 1 credit, not 3."""
    knobs = {**fallback_knobs("fb-drop"), "x-demo-drop-after": "1"}
    status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": True}, **knobs)
    assert status == 200 and headers["X-Clex-Served-Model"] == CHEAP
    assert b'data: {"error"' in raw and raw.endswith(b"data: [DONE]\n\n")
    assert await remaining(gw, key) == 1999


SHARED_PLAN = "[plans.tight]\ncredits_per_day = 20\nrequests_per_minute = 1000\nmax_keys = 1\n"


async def test_a_fallback_charge_with_limits_shared_through_redis(make_gateway: GatewayFactory,
                                                                 redis_server: RedisServer) -> None:
    """Two workers' worth of gateways on one Redis budget of 20: every fallback answer costs 1, none 3."""
    first = await make_gateway(redis_url=redis_server.url, workers=2, config=SHARED_PLAN)
    second = await make_gateway(redis_url=redis_server.url, workers=2, config=SHARED_PLAN)
    key = await first.add_key("shared-fb", "tight")
    await second.gateway.sync.sync_store(force=True)
    served = 0
    for i in range(30):
        gw = (first, second)[i % 2]
        status, raw, headers = await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False},
                                          **fallback_knobs(f"shared-{i}"))
        if status == 200:
            served += 1
            assert headers["X-Clex-Served-Model"] == CHEAP
        else:
            error_of(raw, 429, "rate_limit_exceeded")
    assert served >= 10  # a 3-credit reservation needs 3 in a lease: the last few credits may sit unused
    account_id = max(first.gateway.directory.accounts)
    day = first.gateway.limits.today()
    for gw in (first, second):
        await gw.gateway.sync.flush_usage()
    spent = (await first.gateway.store.credits_spent(day))[account_id]
    assert spent == served  # one credit per answer
    left_on_redis = await first.gateway.redis.credits_left(account_id, day) or 0  # type: ignore[union-attr]
    leases = sum(gw.gateway.limits.ledger.remaining(account_id, day) for gw in (first, second))
    assert spent + left_on_redis + leases == 20  # every credit is spent, leased or on Redis: none lost


# 18, 20 ----------------------------------------------------------------------------------------------


async def test_sampling_defaults_skip_models_that_reject_them(make_gateway: GatewayFactory,
                                                              recorder: DemoRecorder) -> None:
    gw = await make_gateway(config='[models."local/reasoner"]\ntier = "standard"\nsampling_defaults = false\n'
                                   'deployments = [{provider = "nvidia"}]\n')
    key = await gw.add_key("reasoning", "pro")
    status, raw, _ = await post(gw, key, {"model": "local/reasoner", "messages": HELLO, "stream": False})
    assert status == 200, raw
    sent = recorder.requests[-1].body
    assert "temperature" not in sent and "top_p" not in sent and sent["stream"] is False
    await post(gw, key, {"model": "local/reasoner", "messages": HELLO, "stream": False, "temperature": 1.0})
    assert recorder.requests[-1].body["temperature"] == 1.0 and "top_p" not in recorder.requests[-1].body
    await post(gw, key, {"model": "moonshotai/kimi-k2-thinking", "messages": HELLO, "stream": True})
    assert "temperature" not in recorder.requests[-1].body  # a shipped thinking model
    await post(gw, key, {"model": LARGE, "messages": HELLO, "stream": False})
    assert recorder.requests[-1].body["temperature"] == 0.7 and recorder.requests[-1].body["top_p"] == 0.9


async def test_wrong_endpoint_message_grammar(gw: RunningGateway, key: str) -> None:
    _, raw, _ = await post(gw, key, {"model": EMBED, "messages": HELLO})
    assert "is an embedding model; call it through /v1/embeddings" in error_of(raw, 400, "invalid_request_error")[
        "message"]
    _, raw, _ = await post(gw, key, {"model": LARGE, "input": "x"}, path="/v1/embeddings")
    assert "is a chat model; call it through /v1/chat/completions" in error_of(raw, 400, "invalid_request_error")[
        "message"]
