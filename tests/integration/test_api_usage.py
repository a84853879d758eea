"""`GET /api/usage` on a real gateway: a key's daily usage by model, or a console session's account's."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from clexproxy.clock import SECONDS_PER_DAY, ManualClock
from clexproxy.web.session import SESSION_COOKIE

from .conftest import RunningGateway
from .test_key_limits import CHEAP, PREMIUM, bearer, console_session, limited_key, post


async def usage(gw: RunningGateway, query: str = "", **headers: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.base_url}/api/usage{query}",
                                                               headers=headers) as resp:
        return resp.status, json.loads(await resp.read()), dict(resp.headers)


async def test_a_keys_usage_by_day_and_model_newest_first(gw: RunningGateway, key: str, clock: ManualClock) -> None:
    _, other = await limited_key(gw, name="ci")
    assert (await post(gw, PREMIUM, bearer(key)))[0] == 200
    clock.advance(SECONDS_PER_DAY)  # 2026-11-26
    for model in (CHEAP, CHEAP, PREMIUM):
        assert (await post(gw, model, bearer(key)))[0] == 200
    assert (await post(gw, CHEAP, bearer(other)))[0] == 200  # another key's call: not in this key's answer
    status, doc, headers = await usage(gw, **bearer(key))  # no flush awaited: the endpoint writes first
    assert status == 200, doc
    assert headers["Cache-Control"] == "no-store" and headers["X-Clex-Credits-Remaining"]
    assert doc["object"] == "usage" and doc["account"] == "acme"
    assert doc["key"]["name"] == "" and doc["key"]["hint"] == key[:9] + "..." + key[-4:]
    days = doc["days"]
    assert [day["date"] for day in days] == ["2026-11-26", "2026-11-25"]
    today = days[0]
    assert (today["credits"], today["calls"]) == (7, 3)
    assert [(m["model"], m["credits"], m["calls"]) for m in today["models"]] == [(PREMIUM, 5, 1), (CHEAP, 2, 2)]
    assert today["prompt_tokens"] == sum(m["prompt_tokens"] for m in today["models"]) > 0
    assert today["completion_tokens"] > 0
    assert [(m["model"], m["credits"]) for m in days[1]["models"]] == [(PREMIUM, 5)]
    status, doc, _ = await usage(gw, "?days=1", **bearer(key))
    assert [day["date"] for day in doc["days"]] == ["2026-11-26"]
    status, doc, _ = await usage(gw, **bearer(other))
    assert doc["key"]["name"] == "ci" and [(d["date"], d["credits"]) for d in doc["days"]] == [("2026-11-26", 1)]


@pytest.mark.parametrize("days", ["0", "91", "abc", "1.5", "-3", ""])
async def test_days_out_of_range_is_a_400_naming_days(gw: RunningGateway, key: str, days: str) -> None:
    status, doc, _ = await usage(gw, f"?days={days}", **bearer(key))
    assert status == 400 and doc["error"]["param"] == "days" and "'days'" in doc["error"]["message"]


async def test_asking_is_free_and_throttled_on_its_own(gw: RunningGateway, key: str) -> None:
    _, _, before = await post(gw, CHEAP, bearer(key))
    for _ in range(60):
        status, _, headers = await usage(gw, **bearer(key))
        assert status == 200
    assert headers["X-Clex-Credits-Remaining"] == before["X-Clex-Credits-Remaining"]  # no credits
    status, doc, headers = await usage(gw, **bearer(key))
    assert status == 429 and doc["error"]["limit"] == "api_usage_requests_per_minute" and headers["Retry-After"]
    status, _, after = await post(gw, CHEAP, bearer(key))  # the plan's per-minute limit was not touched
    assert status == 200 and int(after["x-ratelimit-remaining-requests"]) >= int(
        before["x-ratelimit-remaining-requests"]) - 1
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/api/key", headers=bearer(key)) as r:
        assert r.status == 200  # GET /api/key keeps its own throttle


async def test_without_a_key_or_a_session_it_is_the_keys_401(gw: RunningGateway) -> None:
    status, doc, _ = await usage(gw)
    assert status == 401 and doc["error"]["code"] == "authentication_error"


async def test_the_key_form_answers_other_origins(gw: RunningGateway, key: str) -> None:
    status, _, headers = await usage(gw, **bearer(key), Origin="https://app.example")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"


async def test_a_members_session_sees_the_accounts_usage_without_cors(gw: RunningGateway, key: str) -> None:
    _, other = await limited_key(gw, name="ci")
    assert (await post(gw, CHEAP, bearer(key)))[0] == 200
    assert (await post(gw, CHEAP, bearer(other)))[0] == 200
    session_id, _ = await console_session(gw, "member")
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_id}", "Origin": "https://app.example"}
    status, doc, headers = await usage(gw, **cookie)
    assert status == 200, doc
    assert "Access-Control-Allow-Origin" not in headers
    assert doc["key"] is None and doc["account"] == "acme"
    (day,) = doc["days"]
    assert (day["credits"], day["calls"]) == (2, 2) and [m["model"] for m in day["models"]] == [CHEAP]
    status, doc, headers = await usage(gw, "?account=other", **cookie)  # another account: 404
    assert status == 404 and "Access-Control-Allow-Origin" not in headers
    status, doc, headers = await usage(gw, **{"Cookie": f"{SESSION_COOKIE}=ended"})
    assert status == 401


async def test_an_operator_names_the_account(gw: RunningGateway, key: str) -> None:
    assert (await post(gw, CHEAP, bearer(key)))[0] == 200
    session_id, _ = await console_session(gw, "operator", None)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_id}"}
    status, doc, _ = await usage(gw, **cookie)
    assert status == 403 and doc["error"]["reason"] == "role"
    status, doc, _ = await usage(gw, "?account=acme", **cookie)
    assert status == 200 and doc["account"] == "acme" and doc["days"][0]["calls"] == 1
    status, doc, _ = await usage(gw, "?account=nobody", **cookie)
    assert status == 404
