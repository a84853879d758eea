"""`GET /api/key` against a real gateway: what a key holder learns about their key, and what asking costs.

The figures are the limits' own: after a paid call, `credits.remaining` is that call's
X-Clex-Credits-Remaining. Asking charges no credits and takes no per-minute slot, however often
(more often than the plan's rpm), until the endpoint's own per-key throttle answers SPEC's 429.
A bad key is SPEC's 401; a page on another origin can read every answer (CORS).
"""

from __future__ import annotations

from typing import Any

import orjson

from clexproxy.clock import ManualClock
from clexproxy.handlers.key import KEY_INFO_PER_MINUTE, THROTTLE_LIMIT
from clexproxy.headers import CREDITS_REMAINING, RATELIMIT_REMAINING_REQUESTS

from .conftest import RunningGateway
from .test_cors import fetch, preflight, readable

STANDARD = "nvidia/nemotron-nano-3-30b-a3b"  # 2 credits: a drop of 2 is the call's cost, not a count
CHAT = {"model": STANDARD, "messages": [{"role": "user", "content": "Hello!"}], "stream": False}
METERING = (
    "X-Clex-Credits-Remaining", "X-Clex-Credits-Limit", "X-Clex-Credits-Reset",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
)


async def key_info(gw: RunningGateway, key: str | None, **headers: str) -> tuple[int, Any, Any]:
    """GET /api/key as a program would (no Origin): status, headers, the JSON body."""
    status, got, body = await fetch(gw, "GET", "/api/key", key=key, origin=None, **headers)
    return status, got, orjson.loads(body)


async def chat(gw: RunningGateway, key: str) -> tuple[int, Any]:
    status, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, origin=None, body=CHAT)
    return status, headers


def assert_error(status: int, doc: Any, expected: int, code: str) -> dict[str, Any]:
    assert status == expected, doc
    error: dict[str, Any] = doc["error"]
    assert error["status"] == expected and error["code"] == code and error["message"] and error["type"]
    return error


async def test_the_fields_describe_the_calling_key(gw: RunningGateway, key: str) -> None:
    (row,) = await gw.gateway.store.list_keys("acme")
    pro = gw.settings.catalog.plans["pro"]
    status, headers, doc = await key_info(gw, key, **{"X-Request-Id": "mine-1"})
    assert status == 200, doc
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Request-Id"] == "mine-1"
    assert headers["Cache-Control"] == "no-store"
    assert doc == {
        "object": "api_key",
        "account": {"name": "acme"},
        "plan": {"name": "pro", "credits_per_day": pro.credits_per_day,
                 "requests_per_minute": pro.requests_per_minute, "max_keys": pro.max_keys},
        "key": {"id": row.id, "name": "", "hint": row.hint,  # the hint `keys list` shows
                "daily_cap": None, "expires_at": None, "models": None},
        "credits": {"limit": 2000, "used": 0, "remaining": 2000, "applies": "account",
                    # the manual clock stands at noon UTC on 2026-11-25
                    "reset_seconds": 43_200, "reset_at": "2026-11-26T00:00:00Z"},
        "requests_per_minute": {"limit": 200, "remaining": 200, "reset": "0ms"},
    }
    assert key.startswith(row.hint[:9]) and key.endswith(row.hint[-4:])
    # The six metering headers, saying what the body says.
    assert [headers[name] for name in METERING] == ["2000", "2000", "43200", "200", "200", "0ms"]


async def test_a_paid_call_shows_in_the_next_answer(gw: RunningGateway, key: str) -> None:
    cost = gw.settings.catalog.cost(STANDARD)
    assert cost == 2
    status, headers = await chat(gw, key)
    assert status == 200
    after_call = int(headers[CREDITS_REMAINING])
    assert after_call == 2000 - cost
    status, got, doc = await key_info(gw, key)
    assert status == 200
    assert doc["credits"] == {**doc["credits"], "remaining": after_call, "used": cost, "limit": 2000}
    assert got[CREDITS_REMAINING] == str(after_call)
    # The call took one slot of the minute; asking took none.
    assert doc["requests_per_minute"]["remaining"] == int(headers[RATELIMIT_REMAINING_REQUESTS]) == 199


async def test_asking_charges_nothing_and_takes_no_rpm_slot(gw: RunningGateway, clock: ManualClock) -> None:
    """A free plan allows 40 calls a minute: asking 50 times leaves all 40, and every credit."""
    free = await gw.add_key("solo", "free")
    rpm = gw.settings.catalog.plans["free"].requests_per_minute
    asks = rpm + 10
    assert asks <= KEY_INFO_PER_MINUTE  # within the endpoint's own throttle
    for _ in range(asks):
        status, headers, doc = await key_info(gw, free)
        assert status == 200, doc
        assert doc["credits"]["remaining"] == 100 and doc["credits"]["used"] == 0
        assert doc["requests_per_minute"]["remaining"] == rpm
    status, headers = await chat(gw, free)
    assert status == 200
    assert headers[RATELIMIT_REMAINING_REQUESTS] == str(rpm - 1)
    assert headers[CREDITS_REMAINING] == str(100 - gw.settings.catalog.cost(STANDARD))
    status, _, doc = await key_info(gw, free)
    assert doc["credits"]["used"] == 2 and doc["requests_per_minute"]["remaining"] == rpm - 1


async def test_its_own_throttle_answers_429(gw: RunningGateway, key: str, clock: ManualClock) -> None:
    for _ in range(KEY_INFO_PER_MINUTE):
        status, _, doc = await key_info(gw, key)
        assert status == 200, doc
    status, headers, doc = await key_info(gw, key, **{"X-Request-Id": "too-many"})
    error = assert_error(status, doc, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error" and error["limit"] == THROTTLE_LIMIT
    assert "GET /api/key" in error["message"]
    assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert headers["X-Request-Id"] == "too-many"
    assert headers[CREDITS_REMAINING] == "2000"  # an authenticated answer: the metering headers too
    # The throttle is this endpoint's alone: the key's calls go on, another key asks on.
    status, headers = await chat(gw, key)
    assert status == 200 and headers[RATELIMIT_REMAINING_REQUESTS] == "199"
    other = await gw.add_key("globex", "pro")
    assert (await key_info(gw, other))[0] == 200
    # A token comes back each second (60 a minute).
    clock.advance(1.0)
    assert (await key_info(gw, key))[0] == 200
    assert (await key_info(gw, key))[0] == 429


async def test_a_bad_key_is_a_401(gw: RunningGateway, key: str) -> None:
    for sent in (None, "clex_" + "x" * 43, key + "x"):
        status, headers, doc = await key_info(gw, sent, **{"X-Request-Id": "bad-key"})
        assert_error(status, doc, 401, "authentication_error")
        assert headers["X-Request-Id"] == "bad-key"
        assert CREDITS_REMAINING not in headers
    status, _, doc = await key_info(gw, None, Authorization=f"Basic {key}")
    assert_error(status, doc, 401, "authentication_error")
    (row,) = await gw.gateway.store.list_keys("acme")
    await gw.gateway.store.revoke_key(row.id)
    await gw.gateway.sync.sync_store(force=True)
    status, _, doc = await key_info(gw, key)
    assert_error(status, doc, 401, "authentication_error")


async def test_a_page_on_another_origin_reads_it(gw: RunningGateway, key: str) -> None:
    status, headers, body = await preflight(gw, "/api/key", method="GET", requested="authorization")
    assert status == 204 and body == b""
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    status, headers, body = await fetch(gw, "GET", "/api/key", key=key)
    assert status == 200 and orjson.loads(body)["account"] == {"name": "acme"}
    readable(headers)
    status, headers, _ = await fetch(gw, "GET", "/api/key", key="clex_" + "x" * 43)
    assert status == 401
    readable(headers)
    for _ in range(KEY_INFO_PER_MINUTE):
        await fetch(gw, "GET", "/api/key", key=key)
    status, headers, _ = await fetch(gw, "GET", "/api/key", key=key)
    assert status == 429
    readable(headers)
    status, headers, _ = await fetch(gw, "POST", "/api/key", key=key)
    assert status == 405
    readable(headers)
