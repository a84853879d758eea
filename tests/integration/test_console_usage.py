"""The console's usage page, its CSV and the operator's accounts page, on a real gateway with real calls.

Today's figures are compared with what the API itself says at the same moment (`GET /api/key`, and
the X-Clex-Credits-Remaining of a real call); the history with rows written through the store.
"""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from typing import Any

import aiohttp

from clexproxy.clock import utc_day
from clexproxy.store.base import KeyUsageRow

from .conftest import NOON, RunningGateway
from .test_console_keys import Console, chat_status, keys_of, sign_in_as

TODAY = utc_day(NOON)  # 2026-11-25


def figure(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert found is not None, element_id
    return unescape(found.group(1)).strip()


def table_rows(html: str, table_id: str) -> list[list[str]]:
    found = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', html, re.S)
    assert found is not None, table_id
    body = found.group(1).split("<tbody>")[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)]
            for r in rows]


async def key_info(gw: RunningGateway, key: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
        gw.base_url + "/api/key", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_todays_numbers_are_what_the_api_says(gw: RunningGateway, key: str) -> None:
    owner = await sign_in_as(gw, "owner")
    status, headers = await chat_status(gw, key)
    assert status == 200
    remaining_after_call = int(headers["X-Clex-Credits-Remaining"])
    cost = gw.gateway.catalog.cost(gw.gateway.catalog.fallback_model or "")
    assert remaining_after_call == 2000 - cost
    status, html, page_headers = await owner.get("/console/usage")
    assert status == 200 and page_headers["Cache-Control"] == "no-store"
    info = await key_info(gw, key)
    assert int(figure(html, "credits-used")) == info["credits"]["used"] == cost
    assert int(figure(html, "credits-remaining")) == info["credits"]["remaining"] == remaining_after_call
    assert int(figure(html, "credits-limit")) == info["credits"]["limit"] == 2000
    assert figure(html, "credits-reset") == "in 12 h 0 min (00:00 UTC)"  # noon on the manual clock
    assert figure(html, "rpm").endswith("of 200 left this minute")
    assert "<title>Usage: acme: CLEX</title>" in html and "<h1>Usage</h1>" in html
    # the call is in the chart's last bar, the table's first row and today's breakdown at once (flushed first)
    bars = re.findall(r'<rect class="chart-bar" data-day="([^"]+)" data-credits="(\d+)"', html)
    assert len(bars) == 30 and bars[-1] == ("2026-11-25", str(cost)) and bars[0][0] == "2026-10-27"
    assert re.search(r'<svg id="usage-chart" class="chart" role="img"[^>]*aria-label="Credits used per day', html)
    days = table_rows(html, "usage-days")
    assert len(days) == 30 and days[0][:3] == ["2026-11-25", str(cost), "1"]
    [row] = await keys_of(gw)
    assert table_rows(html, "by-model") == [[gw.gateway.catalog.fallback_model, str(cost), "1", days[0][3]]]
    assert table_rows(html, "by-key")[0][0] == f"{row.hint}"
    assert 'href="/console/usage.csv?days=30"' in html and "Download CSV</a>" in html
    assert '<label for="day">Day</label>' in html


async def test_a_past_day_by_model_and_by_key_and_the_console_key(gw: RunningGateway) -> None:
    owner = await sign_in_as(gw, "owner")
    store = gw.gateway.store
    [row] = await keys_of(gw)
    account = await store.get_account("acme")
    assert account is not None
    day = TODAY - 3
    await store.add_usage([(account.id, day, 70, 4, 100, 50)], [
        KeyUsageRow(account.id, row.id, "m/a", day, 40, 2, 60, 30),
        KeyUsageRow(account.id, row.id, "m/b", day, 10, 1, 20, 10),
        KeyUsageRow(account.id, 0, "m/a", day, 20, 1, 20, 10),
    ])
    status, html, _ = await owner.get("/console/usage?day=2026-11-22")
    assert status == 200
    assert "One day: 2026-11-22" in html
    assert table_rows(html, "by-model") == [["m/a", "60", "3", "120"], ["m/b", "10", "1", "30"]]
    assert table_rows(html, "by-key") == [[row.hint, "50", "3", "120"], ["Console (API Explorer)", "20", "1", "30"]]
    assert ["2026-11-22", "70", "4", "150"] in table_rows(html, "usage-days")
    status, html, _ = await owner.get("/console/usage?day=2026-11-21")
    assert status == 200 and "No calls on 2026-11-21." in html
    for bad in ("yesterday", "2026-11-26", "2026-02-30"):
        status, html, _ = await owner.get(f"/console/usage?day={bad}")
        assert status == 400
        assert figure(html, "day-error") == "Pick a day as YYYY-MM-DD, today (2026-11-25) or before."


async def test_the_csv_has_every_row_and_quotes_formulas(gw: RunningGateway) -> None:
    owner = await sign_in_as(gw, "owner")
    store = gw.gateway.store
    status, _, _ = await owner.post("/console/keys", [("name", '=HYPERLINK("http://evil.test","x")')])
    assert status == 200
    keys = {k.name: k for k in await keys_of(gw)}
    evil = keys['=HYPERLINK("http://evil.test","x")']
    plain = keys[""]
    account = await store.get_account("acme")
    assert account is not None
    await store.add_usage([(account.id, TODAY, 9, 3, 0, 0), (account.id, TODAY - 40, 1, 1, 0, 0)], [
        KeyUsageRow(account.id, evil.id, "-m/neg", TODAY, 5, 2, 11, 7),
        KeyUsageRow(account.id, plain.id, "@m/at", TODAY, 3, 1, 1, 2),
        KeyUsageRow(account.id, 0, "+m/plus", TODAY, 1, 1, 0, 0),
        KeyUsageRow(account.id, plain.id, "m/old", TODAY - 40, 1, 1, 0, 0),
    ])
    async with aiohttp.ClientSession() as session, session.get(
        gw.base_url + "/console/usage.csv?days=30", headers={"Cookie": f"clex_session={owner.session_id}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="clex-usage-acme-2026-11-25.csv"'
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["date", "key_id", "key_name", "model", "credits", "calls", "prompt_tokens",
                       "completion_tokens"]
    assert sorted(rows[1:]) == sorted([
        ["2026-11-25", str(evil.id), '\'=HYPERLINK("http://evil.test","x")', "'-m/neg", "5", "2", "11", "7"],
        ["2026-11-25", str(plain.id), plain.hint, "'@m/at", "3", "1", "1", "2"],
        ["2026-11-25", "0", "Console (API Explorer)", "'+m/plus", "1", "1", "0", "0"],
    ])  # the row 40 days old is outside 30 days
    status, body, _ = await owner.get("/console/usage.csv?days=90")
    assert status == 200 and "m/old" in body
    for bad in ("0", "91", "x", "-1"):
        status, body, _ = await owner.get(f"/console/usage.csv?days={bad}")
        assert status == 400 and "from 1 to 90" in body


async def test_a_member_sees_usage_of_their_account_only(gw: RunningGateway) -> None:
    member = await sign_in_as(gw, "member")
    status, html, _ = await member.get("/console/usage")
    assert status == 200 and figure(html, "credits-used") == "0"
    await sign_in_as(gw, "owner", account="other")
    assert (await member.get("/console/usage?account=other"))[0] == 404
    assert (await member.get("/console/usage.csv?account=other"))[0] == 404


async def test_the_operator_sees_every_account_and_others_get_404(gw: RunningGateway, key: str) -> None:
    await gw.add_key("beta", "starter")
    assert (await chat_status(gw, key))[0] == 200
    cost = gw.gateway.catalog.cost(gw.gateway.catalog.fallback_model or "")
    operator = await sign_in_as(gw, "operator", account=None)
    status, html, headers = await operator.get("/console/accounts")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert "<h1>Accounts</h1>" in html
    rows = {r[0]: r for r in table_rows(html, "accounts")}
    assert rows["acme"][:4] == ["acme", "pro", "1 of 20", f"{cost} of 2,000"]
    assert rows["beta"][:4] == ["beta", "starter", "1 of 5", "0 of 500"]
    assert 'href="/console/keys?account=beta"' in html and 'href="/console/usage?account=beta"' in html
    status, usage, _ = await operator.get("/console/usage?account=acme")
    assert status == 200 and int(figure(usage, "credits-used")) == cost
    assert "Account in view: <strong>acme</strong>" in usage
    assert '<input type="hidden" name="account" value="acme">' in usage  # the day picker keeps the account
    assert 'href="/console/usage.csv?account=acme&amp;days=30"' in usage
    status, _, headers = await operator.get("/console/usage")
    assert status == 303 and headers["Location"] == "/console/accounts"
    assert (await operator.get("/console/usage?account=nobody"))[0] == 404
    for role in ("owner", "member"):
        user: Console = await sign_in_as(gw, role)
        status, body, _ = await user.get("/console/accounts")
        assert status == 404 and '"code":"not_found"' in body
