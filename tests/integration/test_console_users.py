"""The console's users page on a real gateway: the list, inviting a user, a new link, and who may.

Users and sessions are made through the store (`sign_in_as`); requests carry the session cookie like a
browser. A link shown on the page is followed on the same gateway (`/console/set-password`), so "the
link works" and "the old link is dead" are what a browser would see.
"""

from __future__ import annotations

import io
import logging
import re
from html import unescape
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from clexproxy.store.base import UserRow

from .conftest import GatewayFactory, RunningGateway
from .test_console_keys import Console, sign_in_as

LINK = re.compile(r'id="new-user-link"[^>]*value="([^"]+)"')


def user_rows(html: str) -> dict[int, str]:
    """User id -> the text of its row."""
    rows = re.findall(r'<tr data-user-id="(\d+)"[^>]*>(.*?)</tr>', html, re.S)
    return {int(k): re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body))).strip() for k, body in rows}


def shown_link(html: str) -> str:
    found = LINK.search(html)
    assert found is not None, html
    return unescape(found.group(1))


async def open_link(gw: RunningGateway, link: str) -> tuple[int, str]:
    """GET a set-password link's path and query on this gateway, as the invited user's browser would."""
    parts = urlsplit(link)
    assert parts.path == "/console/set-password" and parts.query.startswith("token=")
    async with aiohttp.ClientSession() as session, session.get(
        f"{gw.base_url}{parts.path}?{parts.query}", allow_redirects=False
    ) as resp:
        return resp.status, await resp.text()


async def users_of(gw: RunningGateway, account: str = "acme") -> list[UserRow]:
    return await gw.gateway.store.list_users(account)


@pytest.fixture
async def owner(gw: RunningGateway) -> Console:
    return await sign_in_as(gw, "owner", email="boss@acme.test")


async def test_the_owner_sees_every_user_of_the_account_and_the_invite_form(gw: RunningGateway,
                                                                           owner: Console) -> None:
    member = await sign_in_as(gw, "member", email="dev@acme.test")
    other = await sign_in_as(gw, "owner", account="globex", email="boss@globex.test")
    status, html, headers = await owner.get("/console/users")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert "<title>Users: acme: CLEX</title>" in html and "<h1>Users</h1>" in html
    rows = {text.split(" ")[0]: text for text in user_rows(html).values()}
    assert set(rows) == {owner.email, member.email}
    assert other.email not in html
    assert "owner" in rows[owner.email] and "member" in rows[member.email]
    assert all("invited" in text for text in rows.values())  # made through the store: no password yet
    assert '<label for="user-email">Email</label>' in html and "Invite user</button>" in html
    assert 'aria-current="page">Users</a>' in html and "new-user-link" not in html


async def test_a_member_sees_the_list_but_no_invite_form_and_may_not_post(gw: RunningGateway,
                                                                         owner: Console) -> None:
    member = await sign_in_as(gw, "member", email="dev@acme.test")
    status, html, _ = await member.get("/console/users")
    assert status == 200
    assert {t.split(" ")[0] for t in user_rows(html).values()} == {owner.email, member.email}
    assert "Invite user</button>" not in html and "/reset" not in html
    assert "Only the account's owners invite users" in html
    before = len(await users_of(gw))
    status, body, _ = await member.post("/console/users", [("email", "new@acme.test"), ("role", "owner")])
    assert status == 403
    error = orjson.loads(body)["error"]
    assert (error["code"], error["reason"]) == ("permission_error", "role")
    [target] = [u for u in await users_of(gw) if u.email == owner.email]
    status, body, _ = await member.post(f"/console/users/{target.id}/reset")
    assert status == 403 and orjson.loads(body)["error"]["reason"] == "role"
    assert len(await users_of(gw)) == before


async def test_an_operator_views_any_account_with_the_switcher(gw: RunningGateway) -> None:
    acme_owner = await sign_in_as(gw, "owner", email="boss@acme.test")
    globex_owner = await sign_in_as(gw, "owner", account="globex", email="boss@globex.test")
    operator = await sign_in_as(gw, "operator", account=None, email="ops@ops.test")
    status, _, headers = await operator.get("/console/users")
    assert status == 303 and headers["Location"] == "/console/accounts"  # pick an account first
    status, html, _ = await operator.get("/console/users?account=globex")
    assert status == 200
    assert globex_owner.email in html and acme_owner.email not in html and operator.email in html  # nav only
    assert 'id="account-switch"' in html and 'action="/console/users"' in html
    assert 'href="/console/users?account=globex"' in html  # the nav keeps the account in view
    assert 'action="/console/users?account=globex"' in html
    status, html, _ = await operator.post("/console/users?account=globex",
                                          [("email", "new@globex.test"), ("role", "member")])
    assert status == 200 and shown_link(html)
    assert "new@globex.test" in {u.email for u in await users_of(gw, "globex")}
    status, _, _ = await operator.get("/console/users?account=nope")
    assert status == 404


async def test_invite_makes_the_user_and_shows_the_link_once(make_gateway: GatewayFactory, clock: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    log = io.BytesIO()
    gw = await make_gateway(clock=clock, access_stream=log, log_format="text")
    owner = await sign_in_as(gw, "owner", email="boss@acme.test")
    status, html, headers = await owner.post("/console/users", [("email", " New.Dev@Acme.test "),
                                                                ("role", "member")])
    assert status == 200, html
    assert headers["Cache-Control"] == "no-store"
    [row] = [u for u in await users_of(gw) if u.email == "new.dev@acme.test"]
    assert (row.role, row.account, row.password_set) == ("member", "acme", False)
    link = shown_link(html)
    assert "it will not be shown again" in html and "send it to them yourself" in html
    assert 'data-copy-target="new-user-link"' in html and ">Copy</button>" in html
    assert re.search(r"until \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", html)
    assert "invited" in user_rows(html)[row.id]
    status, page_html = await open_link(gw, link)
    assert status == 200 and "new.dev@acme.test" in page_html
    # a reload does not show it again; it is in no access log line
    _, again, _ = await owner.get("/console/users")
    assert link not in again and "new-user-link" not in again
    gw.gateway.access_log.flush()
    logged = log.getvalue()
    assert b"/console/users" in logged
    token = urlsplit(link).query.removeprefix("token=")
    assert token.encode() not in logged and owner.session_id.encode() not in logged


async def test_an_owner_may_invite_an_owner_but_never_an_operator(gw: RunningGateway, owner: Console) -> None:
    status, html, _ = await owner.post("/console/users", [("email", "co@acme.test"), ("role", "owner")])
    assert status == 200 and shown_link(html)
    status, html, _ = await owner.post("/console/users", [("email", "ops@acme.test"), ("role", "operator")])
    assert status == 400 and "Pick owner or member." in html and "new-user-link" not in html
    assert {(u.email, u.role) for u in await users_of(gw)} == {(owner.email, "owner"), ("co@acme.test", "owner")}
    assert await gw.gateway.store.user_by_email("ops@acme.test") is None


@pytest.mark.parametrize(("email", "message"), [
    ("", "An email has 1 to 254 characters."),
    ("not-an-email", "is not an email address (one @, no spaces)"),
    ("two words@acme.test", "is not an email address (one @, no spaces)"),
    ("a@b@acme.test", "is not an email address (one @, no spaces)"),
])
async def test_a_bad_email_is_the_form_again(gw: RunningGateway, owner: Console, email: str, message: str) -> None:
    before = len(await users_of(gw))
    status, html, _ = await owner.post("/console/users", [("email", email), ("role", "member")])
    assert status == 400
    assert 'id="user-email-error"' in html and message in unescape(html)
    assert 'aria-invalid="true"' in html and "new-user-link" not in html
    assert len(await users_of(gw)) == before


async def test_a_duplicate_email_is_the_form_again(gw: RunningGateway, owner: Console) -> None:
    await sign_in_as(gw, "member", account="globex", email="taken@globex.test")
    for email in (owner.email, "TAKEN@globex.test"):  # this account's or another's: one user per email
        status, html, _ = await owner.post("/console/users", [("email", email), ("role", "member")])
        assert status == 400
        assert "A user with that email exists." in html and "new-user-link" not in html
        assert f'value="{email.lower()}"' in html  # the form keeps what was typed
    assert len(await users_of(gw)) == 1


async def test_without_the_csrf_token_nothing_changes(gw: RunningGateway, owner: Console) -> None:
    status, body, _ = await owner.post("/console/users", [("email", "new@acme.test"), ("role", "member")],
                                       csrf=False)
    assert status == 403 and orjson.loads(body)["error"]["reason"] == "csrf"
    status, body, _ = await owner.post("/console/users", [("email", "new@acme.test"), ("role", "member"),
                                                          ("csrf_token", "forged")], csrf=False)
    assert status == 403 and orjson.loads(body)["error"]["reason"] == "csrf"
    [me] = await users_of(gw)
    status, body, _ = await owner.post(f"/console/users/{me.id}/reset", csrf=False)
    assert status == 403 and orjson.loads(body)["error"]["reason"] == "csrf"
    status, body, _ = await owner.post("/console/users", [("email", "new@acme.test"), ("role", "member")],
                                       headers={"Origin": "https://evil.example"})
    assert status == 403 and orjson.loads(body)["error"]["reason"] == "origin"
    assert await gw.gateway.store.user_by_email("new@acme.test") is None


async def test_a_new_link_replaces_the_old_one(gw: RunningGateway, owner: Console) -> None:
    _, html, _ = await owner.post("/console/users", [("email", "new@acme.test"), ("role", "member")])
    first = shown_link(html)
    [row] = [u for u in await users_of(gw) if u.email == "new@acme.test"]
    assert f'action="/console/users/{row.id}/reset"' in html
    status, html, headers = await owner.post(f"/console/users/{row.id}/reset")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    second = shown_link(html)
    assert second != first
    assert "New link for new@acme.test" in html and "earlier links no longer work" in html
    assert (await open_link(gw, first))[0] == 410
    status, page_html = await open_link(gw, second)
    assert status == 200 and "new@acme.test" in page_html


async def test_another_accounts_user_is_a_404(gw: RunningGateway, owner: Console) -> None:
    stranger = await sign_in_as(gw, "owner", account="globex", email="boss@globex.test")
    [row] = await users_of(gw, "globex")
    for path in (f"/console/users/{row.id}/reset", "/console/users/999999/reset",
                 f"/console/users/{'9' * 40}/reset"):
        status, body, _ = await owner.post(path)
        assert status == 404, path
        assert orjson.loads(body)["error"]["code"] == "not_found"
    status, _, _ = await owner.get("/console/users?account=globex")
    assert status == 404
    status, _, _ = await owner.post("/console/users?account=globex", [("email", "x@acme.test"), ("role", "member")])
    assert status == 404
    assert stranger.email in {u.email for u in await users_of(gw, "globex")}
    assert await gw.gateway.store.user_by_email("x@acme.test") is None


async def test_emails_are_rendered_inert(gw: RunningGateway, owner: Console) -> None:
    # email_problem refuses markup characters: the form comes back, the address echoed escaped
    for weird in ("<script>alert(1)</script>@x.y", '"><img/src=x/onerror=alert(1)>@acme.test'):
        status, html, _ = await owner.post("/console/users", [("email", weird), ("role", "member")])
        assert status == 400, html
        assert "<script>alert" not in html and "<img/src" not in html
    # one written straight to the store (the store takes what it is given): the list escapes it
    await gw.gateway.store.create_user("<script>alert(1)</script>@x.y", "member", "acme")
    _, html, _ = await owner.get("/console/users")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@x.y" in html


async def test_signed_out_goes_to_sign_in(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/console/users", allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"].startswith("/console/sign-in?next=")
        async with session.post(gw.base_url + "/console/users", data={"email": "a@b.c"},
                                allow_redirects=False) as resp:
            assert resp.status == 303
