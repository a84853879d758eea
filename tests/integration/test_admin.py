"""The admin API: off without a token, guarded by the admin token (never a user key), effective immediately."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from clexproxy.clock import ManualClock
from clexproxy.fastpath.keys import hash_key
from clexproxy.store.base import (
    AccountExists,
    AccountNotFound,
    KeyAlreadyRevoked,
    KeyLimitReached,
    KeyNotFound,
    StoreError,
)

from .conftest import GatewayFactory, RunningGateway

TOKEN = "t0ken"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit
LARGE = "meta/llama-3.3-70b-instruct"  # 3 credits
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


async def call(
    gw: RunningGateway, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.base_url + path, json=body, headers=ADMIN if headers is None else headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


def assert_error(status: int, doc: Any, expected: int) -> dict[str, Any]:
    assert status == expected, doc
    error: dict[str, Any] = doc["error"]
    assert set(error) >= {"message", "type", "code", "status"} and error["status"] == expected
    return error


@pytest.fixture
async def admin(make_gateway: GatewayFactory, clock: ManualClock) -> RunningGateway:
    """A manual clock keeps every call on one UTC day, so usage has exactly one row."""
    return await make_gateway(clock=clock, admin_token=TOKEN)


async def create_key(gw: RunningGateway, account: str, plan: str = "starter") -> dict[str, Any]:
    status, doc, _ = await call(gw, "POST", "/admin/accounts", {"name": account, "plan": plan})
    assert status == 201, doc
    status, doc, _ = await call(gw, "POST", f"/admin/accounts/{account}/keys")
    assert status == 201, doc
    assert isinstance(doc, dict)
    return doc


async def test_disabled_without_a_token(gw: RunningGateway, key: str) -> None:
    """No admin token configured: every admin route is a JSON 404, whatever credentials are sent."""
    for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer "}):
        status, doc, resp_headers = await call(gw, "GET", "/admin/accounts", headers=headers)
        error = assert_error(status, doc, 404)
        assert "disabled" in error["message"] and resp_headers["X-Request-Id"]
    status, doc, _ = await call(gw, "POST", "/admin/accounts", {"name": "x"}, headers={})
    assert_error(status, doc, 404)
    assert await gw.gateway.store.get_account("x") is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer t0ke"},
        {"Authorization": "Bearer t0ken1"},
        {"Authorization": TOKEN},
        {"X-Admin-Token": "nope"},
    ],
)
async def test_wrong_or_missing_token(admin: RunningGateway, headers: dict[str, str]) -> None:
    status, doc, _ = await call(admin, "GET", "/admin/accounts", headers=headers)
    assert assert_error(status, doc, 401)["code"] == "authentication_error"
    status, doc, _ = await call(admin, "POST", "/admin/accounts", {"name": "sneaky"}, headers=headers)
    assert_error(status, doc, 401)
    assert await admin.gateway.store.get_account("sneaky") is None


async def test_x_admin_token_header(admin: RunningGateway) -> None:
    status, doc, _ = await call(admin, "GET", "/admin/accounts", headers={"X-Admin-Token": TOKEN})
    assert status == 200 and doc["object"] == "list"


async def test_user_key_is_not_an_admin_token(admin: RunningGateway) -> None:
    user_key = await admin.add_key("user", "pro")
    for headers in ({"Authorization": f"Bearer {user_key}"}, {"X-Admin-Token": user_key}):
        status, doc, _ = await call(admin, "GET", "/admin/keys", headers=headers)
        assert_error(status, doc, 401)
        status, doc, _ = await call(admin, "POST", "/admin/accounts/user/keys", headers=headers)
        assert_error(status, doc, 401)
    assert len(await admin.gateway.store.list_keys("user")) == 1


async def test_create_account(admin: RunningGateway) -> None:
    status, doc, headers = await call(admin, "POST", "/admin/accounts", {"name": "acme", "plan": "starter"})
    assert status == 201 and headers["X-Request-Id"]
    assert doc["name"] == "acme" and doc["plan"] == "starter" and isinstance(doc["id"], int)
    status, doc, _ = await call(admin, "POST", "/admin/accounts", {"name": "acme", "plan": "pro"})
    assert "already exists" in assert_error(status, doc, 400)["message"]
    status, doc, _ = await call(admin, "POST", "/admin/accounts", {"name": "other", "plan": "platinum"})
    assert "plan" in assert_error(status, doc, 400)["message"]
    status, doc, _ = await call(admin, "POST", "/admin/accounts", {"plan": "pro"})
    assert "name" in assert_error(status, doc, 400)["message"]
    status, doc, _ = await call(admin, "POST", "/admin/accounts", {"name": "defaulted"})
    assert status == 201 and doc["plan"] == "free"
    status, doc, _ = await call(admin, "GET", "/admin/accounts")
    assert status == 200 and [(a["name"], a["plan"]) for a in doc["data"]] == [
        ("acme", "starter"),
        ("defaulted", "free"),
    ]


async def test_create_key_works_at_once(admin: RunningGateway) -> None:
    created = await create_key(admin, "acme", "starter")
    key = created["key"]
    assert key.startswith("clex_") and len(key) >= 37
    assert created["account"] == "acme" and created["active"] is True and key not in created["hint"]
    # No poll interval to wait for: this process applied its own write.
    async with admin.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(model=LARGE, messages=HELLO, stream=False)
    assert raw.parse().choices[0].message.content
    assert raw.headers["X-Clex-Credits-Limit"] == "500"
    assert raw.headers["X-Clex-Credits-Remaining"] == "497"


async def test_create_key_for_unknown_account_and_limit(admin: RunningGateway) -> None:
    status, doc, _ = await call(admin, "POST", "/admin/accounts/ghost/keys")
    assert_error(status, doc, 404)
    assert await admin.gateway.store.get_account("ghost") is None
    await create_key(admin, "solo", "free")
    status, doc, _ = await call(admin, "POST", "/admin/accounts/solo/keys")
    assert "allows 1" in assert_error(status, doc, 400)["message"]


async def test_list_keys_never_shows_the_key(admin: RunningGateway) -> None:
    first = await create_key(admin, "acme")
    status, second, _ = await call(admin, "POST", "/admin/accounts/acme/keys")
    assert status == 201
    await create_key(admin, "other")
    for path in ("/admin/keys", "/admin/keys?account=acme"):
        async with aiohttp.ClientSession() as session, session.get(admin.base_url + path, headers=ADMIN) as resp:
            assert resp.status == 200
            text = await resp.text()
            doc = await resp.json()
        for created in (first, second):
            assert created["key"] not in text
            digest = hash_key(created["key"])
            assert digest.hex() not in text.lower()
            assert created["key"][5:25] not in text
        for entry in doc["data"]:
            assert "key" not in entry and "key_hash" not in entry
    status, doc, _ = await call(admin, "GET", "/admin/keys?account=acme")
    assert [k["id"] for k in doc["data"]] == [first["id"], second["id"]]
    assert all(k["account"] == "acme" and k["active"] for k in doc["data"])


async def test_revoke_takes_effect_at_once(admin: RunningGateway) -> None:
    created = await create_key(admin, "acme")
    async with admin.client(created["key"]) as client:
        await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
        status, doc, _ = await call(admin, "DELETE", f"/admin/keys/{created['id']}")
        assert status == 200 and doc["active"] is False and doc["revoked_at"]
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
    status, doc, _ = await call(admin, "DELETE", f"/admin/keys/{created['id']}")
    assert "already revoked" in assert_error(status, doc, 400)["message"]
    status, doc, _ = await call(admin, "DELETE", "/admin/keys/4242")
    assert_error(status, doc, 404)
    status, doc, _ = await call(admin, "DELETE", "/admin/keys/abc")
    assert_error(status, doc, 400)


async def test_patch_plan_changes_the_next_call(admin: RunningGateway) -> None:
    created = await create_key(admin, "acme", "free")
    async with admin.client(created["key"]) as client:
        raw = await client.chat.completions.with_raw_response.create(model=LARGE, messages=HELLO, stream=False)
        assert raw.headers["X-Clex-Credits-Limit"] == "100" and raw.headers["x-ratelimit-limit-requests"] == "40"
        status, doc, _ = await call(admin, "PATCH", "/admin/accounts/acme", {"plan": "pro"})
        assert status == 200 and doc["plan"] == "pro"
        raw = await client.chat.completions.with_raw_response.create(model=LARGE, messages=HELLO, stream=False)
    assert raw.headers["X-Clex-Credits-Limit"] == "2000"
    assert raw.headers["x-ratelimit-limit-requests"] == "200"
    # What was spent today still counts after the upgrade.
    assert raw.headers["X-Clex-Credits-Remaining"] == "1994"
    status, doc, _ = await call(admin, "PATCH", "/admin/accounts/acme", {"plan": "gold"})
    assert_error(status, doc, 400)
    status, doc, _ = await call(admin, "PATCH", "/admin/accounts/ghost", {"plan": "pro"})
    assert_error(status, doc, 404)


async def test_patch_with_a_non_string_plan_is_a_400(admin: RunningGateway) -> None:
    """A malformed body is the caller's mistake (400 naming 'plan'), not a gateway failure (500)."""
    await create_key(admin, "acme", "free")
    for plan in (["pro"], {"name": "pro"}):
        status, doc, _ = await call(admin, "PATCH", "/admin/accounts/acme", {"plan": plan})
        assert "plan" in assert_error(status, doc, 400)["message"]


async def test_usage(admin: RunningGateway) -> None:
    created = await create_key(admin, "acme", "pro")
    async with admin.client(created["key"]) as client:
        await client.chat.completions.create(model=LARGE, messages=HELLO, stream=False)
        await client.chat.completions.create(model=CHEAP, messages=HELLO, stream=False)
        stream = await client.chat.completions.create(model=LARGE, messages=HELLO, stream=True)
        async for _ in stream:
            pass
        with pytest.raises(openai.InternalServerError):  # refunded: neither credits nor a call
            await client.chat.completions.create(
                model=LARGE, messages=HELLO, stream=False, extra_headers={"x-demo-status": "500"}
            )
    status, doc, _ = await call(admin, "GET", "/admin/accounts/acme/usage")
    assert status == 200 and doc["account"] == "acme"
    assert len(doc["usage"]) == 1
    day = doc["usage"][0]
    assert day["credits"] == 7 and day["calls"] == 3
    # The demo upstream answers 8 completion tokens per call; the stream's usage was read too.
    assert day["completion_tokens"] == 24
    assert day["prompt_tokens"] > 0
    status, doc, _ = await call(admin, "GET", "/admin/accounts/ghost/usage")
    assert_error(status, doc, 404)


async def test_each_store_refusal_maps_to_its_status(admin: RunningGateway) -> None:
    """A store's refusal is answered by its class, with the store's message: 404 for what is not there, else 400."""
    await create_key(admin, "solo", "free")  # the free plan's one key
    revoked = await create_key(admin, "acme", "pro")
    status, _, _ = await call(admin, "DELETE", f"/admin/keys/{revoked['id']}")
    assert status == 200
    store = admin.gateway.store
    limits = {p.name: p.max_keys for p in admin.gateway.catalog.plans.values()}
    # (the refusal, the store call that raises it, the admin call that makes the same mistake, its status)
    cases: list[tuple[type[StoreError], Callable[[], Awaitable[Any]], tuple[str, str, Any], int]] = [
        (AccountNotFound, lambda: store.set_plan("ghost", "pro"), ("PATCH", "/admin/accounts/ghost", {"plan": "pro"}),
         404),
        (KeyNotFound, lambda: store.revoke_key(4242), ("DELETE", "/admin/keys/4242", None), 404),
        (KeyLimitReached, lambda: store.create_key("solo", "free", limits), ("POST", "/admin/accounts/solo/keys", None),
         400),
        (AccountExists, lambda: store.create_account("acme", "pro"),
         ("POST", "/admin/accounts", {"name": "acme", "plan": "pro"}), 400),
        (KeyAlreadyRevoked, lambda: store.revoke_key(revoked["id"]), ("DELETE", f"/admin/keys/{revoked['id']}", None),
         400),
    ]
    for refusal, store_call, (method, path, body), expected in cases:
        with pytest.raises(refusal) as info:
            await store_call()
        status, doc, _ = await call(admin, method, path, body)
        error = assert_error(status, doc, expected)
        assert error["message"] == str(info.value), refusal
