"""The console's keys page on a real gateway: listing, "Create key" with its limits, revoking, and who may.

Users and sessions are made through the store, as the session module reads them (the cookie's id ->
sha256 -> `get_session`); requests carry that cookie like a browser. What a page says is checked in
its HTML, and what it did in the store and on the API (`/api/key`, `/v1/chat/completions`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from typing import Any

import aiohttp
import pytest

from clexproxy.clock import SECONDS_PER_DAY
from clexproxy.store.base import KeyRow

from .conftest import NOON, GatewayFactory, RunningGateway

SECRET = re.compile(r'id="new-key-secret"[^>]*value="(clex_[^"]+)"')


@dataclass
class Console:
    """A signed-in browser: the session cookie, and the CSRF token its pages carry."""

    gw: RunningGateway
    session_id: str
    csrf: str
    email: str

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Cookie": f"clex_session={self.session_id}", **(extra or {})}

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
            self.gw.base_url + path, headers=self._headers(), allow_redirects=False
        ) as resp:
            return resp.status, await resp.text(), resp.headers

    async def post(self, path: str, data: list[tuple[str, str]] | None = None, csrf: bool = True,
                   headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
        form = list(data or [])
        if csrf:
            form.append(("csrf_token", self.csrf))
        async with aiohttp.ClientSession() as session, session.post(
            self.gw.base_url + path, data=form, headers=self._headers(headers), allow_redirects=False
        ) as resp:
            return resp.status, await resp.text(), resp.headers


async def sign_in_as(gw: RunningGateway, role: str, account: str | None = "acme", email: str | None = None) -> Console:
    """A console user of `role` with a live session, made through the store (no password needed)."""
    store = gw.gateway.store
    if account is not None and await store.get_account(account) is None:
        await store.create_account(account, "pro")
    user = await store.create_user(email or f"{role}-{secrets.token_hex(3)}@{account or 'ops'}.test", role, account)
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await store.create_session(hashlib.sha256(session_id.encode()).digest(), user.id, csrf,
                               gw.gateway.clock.time())
    return Console(gw, session_id, csrf, user.email)


async def api_status(gw: RunningGateway, key: str, path: str = "/api/key") -> int:
    async with aiohttp.ClientSession() as session, session.get(
        gw.base_url + path, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status


async def chat_status(gw: RunningGateway, key: str, model: str | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": model or gw.gateway.catalog.fallback_model, "stream": False,
              "messages": [{"role": "user", "content": "Hi"}]},
    ) as resp:
        await resp.read()
        return resp.status, resp.headers


def key_rows(html: str) -> dict[int, str]:
    """Key id -> the text of its row."""
    rows = re.findall(r'<tr data-key-id="(\d+)"[^>]*>(.*?)</tr>', html, re.S)
    return {int(k): re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body))).strip() for k, body in rows}


async def keys_of(gw: RunningGateway, account: str = "acme") -> list[KeyRow]:
    return await gw.gateway.store.list_keys(account)


@pytest.fixture
async def owner(gw: RunningGateway) -> Console:
    return await sign_in_as(gw, "owner")


async def test_the_page_lists_every_key_with_its_figures_and_the_create_form(gw: RunningGateway,
                                                                            owner: Console) -> None:
    status, html, headers = await owner.get("/console/keys")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert "<title>API keys: acme: CLEX</title>" in html and "<h1>API keys</h1>" in html
    [row] = await keys_of(gw)
    text = key_rows(html)[row.id]
    assert row.hint in text and "active" in text and "never" in text and "plan's 2,000/day" in text and "all" in text
    assert time.strftime("%Y-%m-%d", time.gmtime(row.created_at)) in text  # the store's wall time
    for label, target in (("Name", "key-name"), ("Expires on (optional)", "key-expires"),
                          ("Daily credit cap (optional)", "key-cap")):
        assert f'<label for="{target}">{label}</label>' in html
    assert "Create key</button>" in html and 'name="csrf_token"' in html and owner.csrf in html
    assert "new-key-secret" not in html
    # every model of the catalog can be ticked, each one labelled by its checkbox's label
    assert len(re.findall(r'<label class="check"><input type="checkbox" name="models"', html)) == len(
        gw.gateway.catalog.models)


async def test_signed_out_goes_to_sign_in(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/console/keys", "/console/usage", "/console/accounts"):
            async with session.get(gw.base_url + path, allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"].startswith("/console/sign-in?next=")


async def test_create_with_every_limit_shows_the_secret_once(make_gateway: GatewayFactory, clock: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    log = io.BytesIO()
    gw = await make_gateway(clock=clock, access_stream=log, log_format="text")
    owner = await sign_in_as(gw, "owner")
    models = sorted(gw.gateway.catalog.models)[:2]
    status, html, headers = await owner.post("/console/keys", [
        ("name", "ci runner"), ("expires_on", "2026-12-31"), ("daily_cap", "150"),
        ("models", models[0]), ("models", models[1]),
    ])
    assert status == 200, html
    assert headers["Cache-Control"] == "no-store"
    found = SECRET.search(html)
    assert found is not None
    secret = found.group(1)
    assert "it will not be shown again" in html
    assert 'data-copy-target="new-key-secret"' in html and ">Copy</button>" in html
    [row] = await keys_of(gw)
    assert (row.name, row.daily_cap, row.models) == ("ci runner", 150, tuple(models))
    assert row.expires_at == datetime(2026, 12, 31, tzinfo=UTC).timestamp()  # 00:00 UTC that day
    assert row.hint == secret[:9] + "..." + secret[-4:]
    text = key_rows(html)[row.id]
    assert "150/day" in text and "2026-12-31" in text and ", ".join(models) in text
    assert await api_status(gw, secret) == 200  # live at once on this gateway
    # a reload shows the hint only; the secret is in no log line
    _, again, _ = await owner.get("/console/keys")
    assert secret not in again and row.hint in again and "new-key-secret" not in again
    gw.gateway.access_log.flush()
    assert b"/console/keys" in log.getvalue()
    assert secret.encode() not in log.getvalue()
    assert owner.session_id.encode() not in log.getvalue()


async def test_a_key_without_limits(gw: RunningGateway, owner: Console) -> None:
    status, html, _ = await owner.post("/console/keys", [("name", "plain")])
    assert status == 200 and SECRET.search(html)
    row = max(await keys_of(gw), key=lambda k: k.id)
    assert (row.name, row.expires_at, row.daily_cap, row.models) == ("plain", None, None, None)


@pytest.mark.parametrize(("fields", "field_id", "message"), [
    ([("name", "")], "key-name-error", "Give the key a name."),
    ([("name", "x" * 65)], "key-name-error", "Use at most 64 characters (65 given)."),
    ([("name", "tab\there")], "key-name-error", "Use printable characters only"),
    ([("name", "k"), ("expires_on", "2026-11-25")], "key-expires-error", "Pick a date after today (2026-11-25 UTC)."),
    ([("name", "k"), ("expires_on", "2020-01-01")], "key-expires-error", "Pick a date after today"),
    ([("name", "k"), ("expires_on", "31/12/2026")], "key-expires-error", "Give the date as YYYY-MM-DD"),
    ([("name", "k"), ("expires_on", "2026-02-30")], "key-expires-error", "Give the date as YYYY-MM-DD"),
    ([("name", "k"), ("daily_cap", "0")], "key-cap-error", "The pro plan allows 2,000 credits per day"),
    ([("name", "k"), ("daily_cap", "2001")], "key-cap-error", "from 1 to 2,000"),
    ([("name", "k"), ("daily_cap", "1.5")], "key-cap-error", "a whole number"),
    ([("name", "k"), ("models", "no/such-model")], "key-models-error", "Not a model of this gateway: no/such-model."),
])
async def test_each_validation_error_is_shown_by_its_field(
    gw: RunningGateway, owner: Console, fields: list[tuple[str, str]], field_id: str, message: str
) -> None:
    before = await keys_of(gw)
    status, html, _ = await owner.post("/console/keys", fields)
    assert status == 400
    found = re.search(rf'<p class="field-error" id="{field_id}">([^<]*)</p>', html)
    assert found is not None, html
    assert message in unescape(found.group(1))
    assert "new-key-secret" not in html
    assert await keys_of(gw) == before
    # what was typed is kept
    name = dict(fields)["name"]
    if name and "\t" not in name:
        assert f'value="{name}"' in html


async def test_the_plans_key_limit_is_refused_in_its_words(make_gateway: GatewayFactory, clock: Any) -> None:
    gw = await make_gateway(clock=clock)
    await gw.add_key("tiny", "free")  # the free plan allows one key
    owner = await sign_in_as(gw, "owner", account="tiny")
    status, html, _ = await owner.post("/console/keys", [("name", "second")])
    assert status == 400
    found = re.search(r'<p class="form-error" role="alert" id="form-error">([^<]*)</p>', html)
    assert found is not None and "free" in found.group(1), html
    assert len(await keys_of(gw, "tiny")) == 1


async def test_key_names_render_inert(gw: RunningGateway, owner: Console) -> None:
    evil = '<script>alert("x")</script>'
    status, html, _ = await owner.post("/console/keys", [("name", evil)])
    assert status == 200
    assert evil not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    _, html, _ = await owner.get("/console/keys")
    assert evil not in html
    row = max(await keys_of(gw), key=lambda k: k.id)
    _, confirm, _ = await owner.get(f"/console/keys/{row.id}/revoke")
    assert evil not in confirm and "&lt;script&gt;" in confirm


async def test_revoke_confirms_then_stops_the_key_at_once(gw: RunningGateway, owner: Console, key: str) -> None:
    assert (await chat_status(gw, key))[0] == 200
    [row] = await keys_of(gw)
    _, html, _ = await owner.get("/console/keys")
    assert f'href="/console/keys/{row.id}/revoke"' in html
    status, confirm, _ = await owner.get(f"/console/keys/{row.id}/revoke")
    assert status == 200
    assert "Revoke key</button>" in confirm and f'action="/console/keys/{row.id}/revoke"' in confirm
    assert row.hint in confirm
    assert (await keys_of(gw))[0].active  # asking revokes nothing
    status, _, headers = await owner.post(f"/console/keys/{row.id}/revoke")
    assert status == 303
    assert headers["Location"] == f"/console/keys?revoked={row.id}"
    assert (await chat_status(gw, key))[0] == 401
    assert await api_status(gw, key) == 401
    _, html, _ = await owner.get(headers["Location"])
    assert f"Key Key {row.id} revoked." in html  # a key made without a name is called by its id
    assert "revoked" in key_rows(html)[row.id]
    # a second POST (another tab) is still a 303
    assert (await owner.post(f"/console/keys/{row.id}/revoke"))[0] == 303


async def test_a_member_sees_the_keys_but_cannot_create_or_revoke(gw: RunningGateway) -> None:
    member = await sign_in_as(gw, "member")
    [row] = await keys_of(gw)
    status, html, _ = await member.get("/console/keys")
    assert status == 200 and row.hint in html
    assert "Only the account's owners create and revoke keys." in html
    assert 'action="/console/keys"' not in html and "/revoke" not in html
    status, body, _ = await member.post("/console/keys", [("name", "mine")])
    assert status == 403 and '"reason":"role"' in body
    status, body, _ = await member.post(f"/console/keys/{row.id}/revoke")
    assert status == 403 and '"reason":"role"' in body
    assert (await keys_of(gw))[0].active and len(await keys_of(gw)) == 1


async def test_another_accounts_key_is_not_found(gw: RunningGateway, owner: Console) -> None:
    await gw.add_key("other", "pro")
    [theirs] = await keys_of(gw, "other")
    assert (await owner.get(f"/console/keys/{theirs.id}/revoke"))[0] == 404
    assert (await owner.post(f"/console/keys/{theirs.id}/revoke"))[0] == 404
    assert (await owner.get("/console/keys/999999/revoke"))[0] == 404
    assert (await owner.get("/console/keys?account=other"))[0] == 404
    assert (await keys_of(gw, "other"))[0].active


async def test_a_post_without_its_csrf_token_is_refused(gw: RunningGateway, owner: Console) -> None:
    [row] = await keys_of(gw)
    for data in ([("name", "x")], [("name", "x"), ("csrf_token", "wrong")]):
        status, body, _ = await owner.post("/console/keys", data, csrf=False)
        assert status == 403 and '"reason":"csrf"' in body
    status, body, _ = await owner.post(f"/console/keys/{row.id}/revoke", csrf=False)
    assert status == 403 and '"reason":"csrf"' in body
    # the right token from another site's page: refused by its Origin
    status, body, _ = await owner.post("/console/keys", [("name", "x")], headers={"Origin": "https://evil.test"})
    assert status == 403
    assert len(await keys_of(gw)) == 1 and (await keys_of(gw))[0].active


async def test_an_operator_picks_an_account_then_does_what_an_owner_does(gw: RunningGateway) -> None:
    await gw.add_key("other", "starter")
    operator = await sign_in_as(gw, "operator", account=None)
    status, _, headers = await operator.get("/console/keys")
    assert status == 303 and headers["Location"] == "/console/accounts"
    status, html, _ = await operator.get("/console/keys?account=other")
    assert status == 200
    [theirs] = await keys_of(gw, "other")
    assert theirs.hint in key_rows(html)[theirs.id]
    assert "Account in view: <strong>other</strong>" in html
    assert '<label for="account-switch">Switch account</label>' in html
    assert '<option value="acme">' in html and '<option value="other" selected>' in html
    assert 'action="/console/keys?account=other"' in html
    status, html, _ = await operator.post("/console/keys?account=other", [("name", "ops made")])
    assert status == 200 and SECRET.search(html)
    assert {k.name for k in await keys_of(gw, "other")} == {"", "ops made"}
    status, _, headers = await operator.post(f"/console/keys/{theirs.id}/revoke?account=other")
    assert status == 303 and headers["Location"] == f"/console/keys?account=other&revoked={theirs.id}"
    assert not next(k for k in await keys_of(gw, "other") if k.id == theirs.id).active
    assert (await operator.get("/console/keys?account=nobody"))[0] == 404
    # an id of another account than the one in view is still unknown
    [acme] = await keys_of(gw, "acme")
    assert (await operator.post(f"/console/keys/{acme.id}/revoke?account=other"))[0] == 404


async def test_an_expired_key_shows_as_expired(gw: RunningGateway, owner: Console, clock: Any) -> None:
    status, _, _ = await owner.post("/console/keys", [("name", "short"), ("expires_on", "2026-11-26")])
    assert status == 200
    clock.advance(SECONDS_PER_DAY)
    assert gw.gateway.clock.time() == NOON + SECONDS_PER_DAY
    owner = await sign_in_as(gw, "owner")  # the first session went idle over the day
    _, html, _ = await owner.get("/console/keys")
    row = max(await keys_of(gw), key=lambda k: k.id)
    assert "expired" in key_rows(html)[row.id]
