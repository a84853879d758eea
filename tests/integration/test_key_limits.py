"""A key's own limits on the request path of real gateways; usage by key and model in the store; the Explorer signed in.

Keys are created through the store with `KeyLimits` (what the console's "Create key" stores) and
made live as the console does (`sync_store(force=True)`).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from clexproxy.clock import ManualClock, utc_day
from clexproxy.demo.upstream import DemoServer
from clexproxy.store.base import KeyLimits
from clexproxy.web.session import CSRF_HEADER, SESSION_COOKIE, SESSIONS
from tests.redis_server import RedisServer

from .conftest import NOON, GatewayFactory, RunningGateway
from .test_hardening_upstream import BACKUP, MODEL, start

CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit
PREMIUM = "moonshotai/kimi-k2.5"  # 5 credits
HELLO = [{"role": "user", "content": "Hello!"}]
REMAINING, LIMIT = "X-Clex-Credits-Remaining", "X-Clex-Credits-Limit"


async def limited_key(gw: RunningGateway, account: str = "acme", plan: str = "pro", **limits: Any) -> tuple[int, str]:
    store = gw.gateway.store
    if await store.get_account(account) is None:
        await store.create_account(account, plan)
    max_keys = {p.name: p.max_keys for p in gw.settings.catalog.plans.values()}
    row, key = await store.create_key(account, plan, max_keys, KeyLimits(**limits))
    await gw.gateway.sync.sync_store(force=True)
    return row.id, key


async def post(gw: RunningGateway, model: str, headers: dict[str, str], path: str = "/v1/chat/completions",
               stream: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"model": model, "messages": HELLO, "stream": stream}
    async with aiohttp.ClientSession() as session, session.post(gw.base_url + path, json=body,
                                                                headers=headers) as resp:
        raw = await resp.read()
        doc = json.loads(raw) if resp.content_type == "application/json" else {"raw": raw.decode()}
        return resp.status, doc, dict(resp.headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_an_expired_key_is_a_401_before_it_counts(gw: RunningGateway, clock: ManualClock) -> None:
    _, key = await limited_key(gw, expires_at=NOON + 60)
    status, _, headers = await post(gw, CHEAP, bearer(key))
    assert status == 200
    rpm_left = headers["x-ratelimit-remaining-requests"]
    clock.advance(60)
    status, doc, headers = await post(gw, CHEAP, bearer(key))
    assert status == 401 and doc["error"]["code"] == "authentication_error"
    assert doc["error"]["message"] == "This API key expired at 2026-11-25T12:01:00Z."
    assert REMAINING not in headers
    _, account = gw.gateway.directory.authenticate(f"Bearer {key}")
    assert gw.gateway.limits.peek_headers(account)["x-ratelimit-remaining-requests"] >= rpm_left  # not counted
    status, doc, _ = await _get(gw, "/api/key", bearer(key))
    assert status == 401 and "expired" in doc["error"]["message"]


async def test_a_model_outside_the_allow_list_is_a_403_charging_nothing(gw: RunningGateway, key: str) -> None:
    _, limited = await limited_key(gw, models=(CHEAP,))
    status, doc, headers = await post(gw, PREMIUM, bearer(limited))
    assert status == 403, doc
    error = doc["error"]
    assert (error["type"], error["code"], error["reason"], error["param"]) == (
        "permission_error", "permission_error", "model_not_allowed", "model")
    assert PREMIUM in error["message"] and headers[REMAINING] == "2000"  # nothing reserved
    assert (await post(gw, CHEAP, bearer(limited)))[0] == 200
    assert (await post(gw, PREMIUM, bearer(key)))[0] == 200  # the account's other key has no allow-list


async def test_a_daily_cap_is_a_429_and_the_headers_show_the_tighter_budget(gw: RunningGateway, key: str) -> None:
    _, capped = await limited_key(gw, daily_cap=12)
    status, _, headers = await post(gw, PREMIUM, bearer(capped))
    assert status == 200 and (headers[REMAINING], headers[LIMIT]) == ("7", "12")
    status, _, headers = await post(gw, PREMIUM, bearer(capped))
    assert status == 200 and (headers[REMAINING], headers[LIMIT]) == ("2", "12")
    status, doc, headers = await post(gw, PREMIUM, bearer(capped))
    assert status == 429 and doc["error"]["limit"] == "daily_credits"
    assert "cap (12/day)" in doc["error"]["message"] and headers["Retry-After"]
    assert (headers[REMAINING], headers[LIMIT]) == ("2", "12")
    # A 400 after authentication reports the tighter budget too.
    status, _, headers = await post(gw, "no/such-model", bearer(capped))
    assert status == 404 and headers[REMAINING] == "2"
    # The account spent 10; its uncapped key sees the account's figures.
    status, _, headers = await post(gw, CHEAP, bearer(key))
    assert status == 200 and (headers[REMAINING], headers[LIMIT]) == ("1989", "2000")
    status, doc, _ = await _get(gw, "/api/key", bearer(capped))
    assert status == 200
    assert doc["credits"]["applies"] == "key" and doc["credits"]["limit"] == 12
    assert (doc["credits"]["used"], doc["credits"]["remaining"]) == (10, 2)
    assert doc["key"]["daily_cap"] == 12


async def test_a_cap_holds_across_two_workers_on_redis(make_gateway: GatewayFactory,
                                                       redis_server: RedisServer) -> None:
    first = await make_gateway(redis_url=redis_server.url, workers=2)
    second = await make_gateway(redis_url=redis_server.url, workers=2)
    _, capped = await limited_key(first, daily_cap=23)
    await second.gateway.sync.sync_store(force=True)
    statuses = [(await post((first, second)[i % 2], PREMIUM, bearer(capped)))[0] for i in range(8)]
    assert statuses.count(200) == 4 and statuses.count(429) == 4  # 4 x 5 credits within 23, never a fifth


async def test_a_fallback_and_a_refund_move_the_keys_budget_with_the_accounts(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    gw, _, _ = await start(make_gateway, upstream.url, {MODEL: ["up-answer"], BACKUP: ["up-backup"]},
                           pass_headers=True, upstream_retries=0)
    key_id, capped = await limited_key(gw, daily_cap=10)
    fell = {"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": "fb-cap"}
    status, doc, headers = await post(gw, MODEL, {**bearer(capped), **fell})
    assert status == 200, doc
    assert headers["X-Clex-Served-Model"] == BACKUP and headers[REMAINING] == "9"  # charged the fallback's 1
    status, _, headers = await post(gw, MODEL, {**bearer(capped), "x-demo-status": "500"})
    assert status >= 500
    assert headers[REMAINING] == "9"  # refunded from the key's budget and the account's
    _, account = gw.gateway.directory.authenticate(f"Bearer {capped}")
    assert gw.gateway.limits.peek_headers(account)[REMAINING] == str(account.plan.credits_per_day - 1)
    await gw.gateway.sync.flush_usage()
    rows = await gw.gateway.store.key_usage("acme", 0, key_id)
    assert [(row.model, row.credits, row.calls) for row in rows] == [(BACKUP, 1, 1)]


async def test_usage_by_key_and_model_lands_in_the_store(gw: RunningGateway, key: str) -> None:
    key_id, other = await limited_key(gw, name="ci")
    for k, model in ((key, CHEAP), (key, CHEAP), (key, PREMIUM), (other, CHEAP)):
        assert (await post(gw, model, bearer(k)))[0] == 200
    await gw.gateway.sync.flush_usage()
    rows = await gw.gateway.store.key_usage("acme")
    account_id = gw.gateway.directory.accounts[max(gw.gateway.directory.accounts)].id
    day = utc_day(NOON)
    main_id = next(iter({row.key_id for row in rows} - {key_id}))
    assert sorted((row.account_id, row.key_id, row.model, row.day, row.credits, row.calls) for row in rows) == sorted([
        (account_id, main_id, CHEAP, day, 2, 2),
        (account_id, main_id, PREMIUM, day, 5, 1),
        (account_id, key_id, CHEAP, day, 1, 1),
    ])
    assert all(row.prompt_tokens > 0 and row.completion_tokens > 0 for row in rows)
    # The account rows the usage report reads agree.
    (delta,) = await gw.gateway.store.usage("acme")
    assert (delta.credits, delta.calls) == (8, 4)


async def _get(gw: RunningGateway, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path, headers=headers) as resp:
        return resp.status, json.loads(await resp.read()), dict(resp.headers)


async def console_session(gw: RunningGateway, role: str = "owner", account: str | None = "acme") -> tuple[str, str]:
    """A signed-in console user's (session id, CSRF token), made as sign-in makes them."""
    store = gw.gateway.store
    if account is not None and await store.get_account(account) is None:
        await store.create_account(account, "pro")
    user = await store.create_user(f"{role}@acme.test", role, account)
    return await gw.runner.app[SESSIONS].start(user.id)


async def test_the_explorer_signed_in_is_charged_to_the_account_under_key_0(gw: RunningGateway, key: str) -> None:
    session_id, csrf = await console_session(gw)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_id}", "Origin": gw.base_url}
    status, doc, headers = await post(gw, PREMIUM, {**cookie, CSRF_HEADER: csrf}, path="/api/chat")
    assert status == 200, doc
    assert headers[REMAINING] == "1995" and "Access-Control-Allow-Origin" not in headers
    # Without the CSRF header, or from another origin: 403; a dead session: 401; no cookie: the key's 401.
    status, doc, _ = await post(gw, PREMIUM, cookie, path="/api/chat")
    assert status == 403 and doc["error"]["reason"] == "csrf"
    status, doc, _ = await post(gw, PREMIUM, {**cookie, CSRF_HEADER: csrf, "Origin": "https://evil.test"},
                                path="/api/chat")
    assert status == 403 and doc["error"]["reason"] == "origin"
    status, doc, _ = await post(gw, PREMIUM, {"Cookie": f"{SESSION_COOKIE}=gone", "Origin": gw.base_url,
                                              CSRF_HEADER: csrf}, path="/api/chat")
    assert status == 401
    status, doc, _ = await post(gw, PREMIUM, {}, path="/api/chat")
    assert status == 401 and doc["error"]["message"] == "Missing API key. Send it as 'Authorization: Bearer clex_...'."
    # Right after that refusal (which the screen must not remember), the signed-in call still works, streamed too.
    status, doc, headers = await post(gw, CHEAP, {**cookie, CSRF_HEADER: csrf}, path="/api/chat", stream=True)
    assert status == 200 and "data: [DONE]" in doc["raw"]
    # The session is only for /api/chat: the OpenAI path still wants a key.
    status, _, _ = await post(gw, CHEAP, {**cookie, CSRF_HEADER: csrf})
    assert status == 401
    await gw.gateway.sync.flush_usage()
    rows = await gw.gateway.store.key_usage("acme", 0, 0)
    assert sorted((row.model, row.credits, row.calls) for row in rows) == [(CHEAP, 1, 1), (PREMIUM, 5, 1)]


@pytest.mark.parametrize("role", ["operator"])
async def test_an_operators_session_is_refused_on_api_chat(gw: RunningGateway, role: str) -> None:
    session_id, csrf = await console_session(gw, role, None)
    headers = {"Cookie": f"{SESSION_COOKIE}={session_id}", "Origin": gw.base_url, CSRF_HEADER: csrf}
    status, doc, _ = await post(gw, CHEAP, headers, path="/api/chat")
    assert status == 403 and doc["error"]["reason"] == "role"
    assert "call with a key" in doc["error"]["message"]


async def detail_rows_land_and_a_restart_seeds_the_cap(make_gateway: GatewayFactory, **options: Any) -> None:
    """Usage by key lands in the store, and a gateway started later counts the key's spending today."""
    gw = await make_gateway(**options)
    key_id, capped = await limited_key(gw, daily_cap=12)
    assert (await post(gw, PREMIUM, bearer(capped)))[0] == 200
    await gw.stop()  # writes its usage behind
    again = await make_gateway(**options)
    rows = await again.gateway.store.key_usage("acme", 0, key_id)
    assert [(row.model, row.credits, row.calls) for row in rows] == [(PREMIUM, 5, 1)]
    status, _, headers = await post(again, PREMIUM, bearer(capped))
    assert status == 200 and headers[REMAINING] == "2"  # 12 - 5 stored - 5 now
    assert (await post(again, PREMIUM, bearer(capped)))[0] == 429


async def test_sqlite_keeps_usage_by_key_and_seeds_the_cap_at_start(make_gateway: GatewayFactory,
                                                                    clock: ManualClock) -> None:
    await detail_rows_land_and_a_restart_seeds_the_cap(make_gateway, clock=clock)


async def test_postgres_keeps_usage_by_key_and_seeds_the_cap_at_start(dsn: str, make_gateway: GatewayFactory,
                                                                      clock: ManualClock) -> None:
    # `dsn` first: its database is dropped after the gateways on it have stopped
    await detail_rows_land_and_a_restart_seeds_the_cap(make_gateway, clock=clock, database_url=dsn)
