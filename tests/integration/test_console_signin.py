"""The console's way in: a set-password link, sign-in, the session cookie, sign-out, `/console`.

A real gateway (SQLite store, manual clock) and an aiohttp client with its own cookie jar, as a
browser would hold them; `Browser` is shared with the security tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from clexproxy.clock import ManualClock
from clexproxy.store.base import UserRow
from clexproxy.web.session import SESSION_COOKIE, public_url, token_hash
from tests.integration.conftest import GatewayFactory, RunningGateway
from tests.integration.test_serve import start

PASSWORD = "correct horse battery staple"
_HIDDEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Browser:
    """One browser: a cookie jar and the gateway (its base URL) it talks to."""

    base: str
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.base + path, allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.post(self.base + path, data=data, headers=headers,
                                  allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def form_token(self, path: str) -> str:
        status, html, _ = await self.get(path)
        found = _HIDDEN.search(html, html.find('class="auth-form"'))  # not the nav's sign-out form
        assert found, (status, html[:300])
        return found.group(1)

    async def sign_in(self, email: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        token = await self.form_token("/console/sign-in")
        _, _, response = await self.post("/console/sign-in", {"csrf_token": token, "email": email,
                                                               "password": password, "next": "/console/keys"})
        return response

    async def set_password(self, link: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        path = link[link.index("/console/"):]
        await self.get(path)
        token = await self.form_token("/console/sign-in")  # the same double-submit cookie; a dead link has no form
        _, _, response = await self.post("/console/set-password", {
            "csrf_token": token, "token": path.split("token=", 1)[1],
            "password": password, "password_confirm": password})
        return response

    def session_id(self) -> str | None:
        found = self.http.cookie_jar.filter_cookies(URL(self.base)).get(SESSION_COOKIE)
        return found.value if found else None

    async def who(self) -> str | None:
        """The email the page's nav shows, or None signed out."""
        _, html, _ = await self.get("/")
        found = re.search(r'class="user-email">([^<]+)<', html)
        return found.group(1) if found else None


async def browser(gw: RunningGateway) -> Browser:
    return Browser(gw.base_url, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))


async def make_user(gw: RunningGateway, email: str = "ann@acme.test", role: str = "owner",
                    account: str | None = "acme") -> tuple[UserRow, str]:
    """A console user and a fresh set-password link for them, made as the CLI makes them."""
    store = gw.gateway.store
    if account is not None and await store.get_account(account) is None:
        await store.create_account(account, "pro")
    user = await store.create_user(email, role, account)
    return user, await new_link(gw, user.id)


async def new_link(gw: RunningGateway, user_id: int) -> str:
    from clexproxy.web.session import issue_link

    g = gw.gateway
    link, _ = await issue_link(g.store, user_id, public_url(gw.settings), gw.settings.console.link_hours,
                               g.clock.time())
    return link


async def signed_in_user(gw: RunningGateway, email: str = "ann@acme.test", role: str = "owner",
                         account: str | None = "acme") -> Browser:
    _, link = await make_user(gw, email, role, account)
    b = await browser(gw)
    await b.set_password(link)
    response = await b.sign_in(email)
    assert response.status == 303, response.status
    return b


async def test_the_link_sets_a_password_and_sign_in_sets_the_session_cookie(gw: RunningGateway) -> None:
    user, link = await make_user(gw)
    assert link.startswith(public_url(gw.settings) + "/console/set-password?token=")
    b = await browser(gw)
    try:
        status, html, response = await b.get(link[link.index("/console/"):])
        assert status == 200 and "ann@acme.test" in html and "New password" in html and "Repeat password" in html
        assert response.headers["Referrer-Policy"] == "strict-origin"
        response = await b.set_password(link)
        assert response.status == 303 and response.headers["Location"] == "/console/sign-in?done=password"
        assert response.headers["Referrer-Policy"] == "strict-origin"
        found = await gw.gateway.store.user_by_email("ANN@acme.test")
        assert found is not None and found[0].password_set and found[1] and found[1].startswith("$argon2id$")

        response = await b.sign_in("Ann@Acme.test")
        assert response.status == 303 and response.headers["Location"] == "/console/keys"
        cookies = [v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE + "=")]
        assert len(cookies) == 1
        session_id = b.session_id()
        assert session_id and len(session_id) >= 43
        assert cookies[0] == f"{SESSION_COOKIE}={session_id}; HttpOnly; Path=/; SameSite=Lax"
        row = await gw.gateway.store.get_session(token_hash(session_id))
        assert row is not None and row.user.id == user.id and row.user.role == "owner"
        assert await b.who() == "ann@acme.test"
        _, html, _ = await b.get("/")
        assert f'<meta name="csrf-token" content="{row.csrf_token}">' in html
        assert 'href="/console/keys"' in html and 'href="/console/usage"' in html and "Sign out" in html
        assert 'href="/console/accounts"' not in html
    finally:
        await b.http.close()


async def test_secure_cookies_adds_secure(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock, console_secure_cookies=True)
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        # Over plain http the client keeps Secure cookies to itself: send the form's cookie by hand.
        path = link[link.index("/console/"):]
        token = await b.form_token(path)
        _, _, response = await b.post("/console/set-password", {
            "csrf_token": token, "token": path.split("token=", 1)[1], "password": PASSWORD,
            "password_confirm": PASSWORD}, Cookie=f"clex_csrf_pre={token}")
        assert response.status == 303
        pre = next(v for v in (await b.get("/console/sign-in"))[2].headers.getall("Set-Cookie"))
        assert pre.startswith("clex_csrf_pre=") and "; Secure" in pre and "SameSite=Strict" in pre
        token = await b.form_token("/console/sign-in")
        _, _, response = await b.post("/console/sign-in", {"csrf_token": token, "email": "ann@acme.test",
                                                           "password": PASSWORD}, Cookie=f"clex_csrf_pre={token}")
        assert response.status == 303
        cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE + "="))
        assert cookie.endswith("; HttpOnly; Path=/; SameSite=Lax; Secure")
    finally:
        await b.http.close()


async def test_a_used_link_fails(gw: RunningGateway) -> None:
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        assert (await b.set_password(link)).status == 303
        status, html, _ = await b.get(link[link.index("/console/"):])
        assert status == 410 and "has been used" in html
        assert (await b.set_password(link, "another long password")).status == 410
        assert (await b.sign_in("ann@acme.test", "another long password")).status == 401
        assert (await b.sign_in("ann@acme.test")).status == 303
    finally:
        await b.http.close()


async def test_an_expired_link_fails(gw: RunningGateway, clock: ManualClock) -> None:
    _, link = await make_user(gw)
    clock.advance(24 * 3600 + 1)
    b = await browser(gw)
    try:
        status, _, _ = await b.get(link[link.index("/console/"):])
        assert status == 410
        found = await gw.gateway.store.user_by_email("ann@acme.test")
        assert found is not None and not found[0].password_set
    finally:
        await b.http.close()


async def test_a_superseded_link_fails(gw: RunningGateway) -> None:
    user, first = await make_user(gw)
    second = await new_link(gw, user.id)
    b = await browser(gw)
    try:
        status, _, _ = await b.get(first[first.index("/console/"):])
        assert status == 410
        assert (await b.set_password(second)).status == 303
    finally:
        await b.http.close()


async def test_a_short_or_mismatched_password_is_refused_and_the_link_still_works(gw: RunningGateway) -> None:
    _, link = await make_user(gw)
    path = link[link.index("/console/"):]
    b = await browser(gw)
    try:
        token = await b.form_token(path)
        for password, confirm, words in (("short", "short", "at least 10"),
                                          ("long enough one", "long enough two", "differ")):
            status, html, _ = await b.post("/console/set-password", {
                "csrf_token": token, "token": path.split("token=")[1],
                "password": password, "password_confirm": confirm})
            assert status == 400 and words in html
        assert (await b.set_password(link)).status == 303
    finally:
        await b.http.close()


async def test_console_redirects_by_session(gw: RunningGateway) -> None:
    b = await browser(gw)
    try:
        status, _, response = await b.get("/console")
        assert status == 303 and response.headers["Location"] == "/console/sign-in"
        assert await b.who() is None
        _, html, _ = await b.get("/")
        assert 'href="/console/sign-in"' in html and 'name="csrf-token"' not in html
    finally:
        await b.http.close()
    b = await signed_in_user(gw)
    try:
        status, _, response = await b.get("/console")
        assert status == 303 and response.headers["Location"] == "/console/keys"
    finally:
        await b.http.close()


async def test_wrong_password_and_unknown_email_get_the_same_answer(gw: RunningGateway) -> None:
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        await b.set_password(link)
        answers = []
        for email, password in (("ann@acme.test", "wrong password!"), ("nobody@acme.test", PASSWORD)):
            token = await b.form_token("/console/sign-in")
            status, html, _ = await b.post("/console/sign-in", {"csrf_token": token, "email": email,
                                                               "password": password})
            answers.append((status, "Wrong email or password." in html))
        assert answers == [(401, True), (401, True)]
        assert b.session_id() is None
    finally:
        await b.http.close()


async def test_sign_out_ends_the_session_on_another_worker(
    make_gateway: GatewayFactory, gw: RunningGateway, clock: ManualClock
) -> None:
    other = await make_gateway(clock=clock, data_dir=gw.settings.server.data_path)
    b = await signed_in_user(gw)
    session_id = b.session_id()
    assert session_id
    second = await browser(other)
    second.http.cookie_jar.update_cookies({SESSION_COOKIE: session_id}, URL(other.base_url))
    try:
        assert await second.who() == "ann@acme.test"
        _, html, _ = await b.get("/")
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
        assert token
        status, _, response = await b.post("/console/sign-out", {"csrf_token": token.group(1)})
        assert status == 303 and response.headers["Location"] == "/console/sign-in"
        assert b.session_id() is None
        assert await gw.gateway.store.get_session(token_hash(session_id)) is None
        assert await second.who() is None
        assert await b.who() is None
    finally:
        await b.http.close()
        await second.http.close()


@pytest.mark.parametrize("role", ["member", "operator"])
async def test_members_and_operators_sign_in_too(gw: RunningGateway, role: str) -> None:
    b = await signed_in_user(gw, f"{role}@acme.test", role, None if role == "operator" else "acme")
    try:
        _, html, _ = await b.get("/")
        assert ('href="/console/accounts"' in html) is (role == "operator")
    finally:
        await b.http.close()


async def test_make_run_prints_a_one_time_link_for_the_demo_owner_then_where_to_sign_in(tmp_path: Path) -> None:
    served = start(tmp_path / "data")
    try:
        line = served.wait_line("Console:")
        found = re.fullmatch(r"Console: set owner@demo\.clexproxy\.local's password \(one use\): (\S+)", line)
        assert found, line
        link = found.group(1)
        assert link.startswith(f"{served.base_url}/console/set-password?token=")
        b = Browser(served.base_url, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))
        try:
            assert (await b.set_password(link)).status == 303
            assert (await b.sign_in("owner@demo.clexproxy.local")).status == 303
            assert await b.who() == "owner@demo.clexproxy.local"
        finally:
            await b.http.close()
    finally:
        served.terminate()
    token = link.split("token=")[1]
    assert [ln for ln in served.lines if token in ln] == [line]  # the banner alone: no log line has it
    again = start(tmp_path / "data")
    try:
        line = again.wait_line("Console:")
        assert line == f"Console: sign in as owner@demo.clexproxy.local at {again.base_url}/console"
        assert "token=" not in again.output() and PASSWORD not in again.output()
    finally:
        again.terminate()


async def test_admin_api_users(make_gateway: GatewayFactory, clock: ManualClock) -> None:
    gw = await make_gateway(clock=clock, admin_token="admin-token-for-tests-0123456789")
    await gw.gateway.store.create_account("acme", "pro")
    admin = {"Authorization": "Bearer admin-token-for-tests-0123456789"}
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
            async with http.request(method, gw.base_url + path, json=body, headers=admin) as response:
                return response.status, dict(await response.json())

        status, made = await call("POST", "/admin/users", {"account": "acme", "email": "Ann@Acme.test",
                                                            "role": "member"})
        assert status == 201, made
        user = made["user"]
        assert isinstance(user, dict) and user["email"] == "ann@acme.test" and user["role"] == "member"
        assert user["account"] == "acme" and user["password_set"] is False
        assert made["expires_at"] == int(clock.time()) + 24 * 3600
        link = str(made["link"])
        assert link.startswith(public_url(gw.settings) + "/console/set-password?token=")

        status, again = await call("POST", "/admin/users/reset-password", {"email": "ANN@acme.test"})
        assert status == 200 and again["link"] != link
        b = await browser(gw)
        try:
            assert (await b.get(link[link.index("/console/"):]))[0] == 410  # replaced
            assert (await b.set_password(str(again["link"]))).status == 303
        finally:
            await b.http.close()

        status, listed = await call("GET", "/admin/users?account=acme")
        assert status == 200 and [(u["email"], u["password_set"]) for u in listed["data"]] == [  # type: ignore[attr-defined]
            ("ann@acme.test", True)]
        status, made = await call("POST", "/admin/users", {"email": "op@clex.test", "role": "operator"})
        assert status == 201 and made["user"]["account"] is None  # type: ignore[index]
        status, listed = await call("GET", "/admin/users")
        assert status == 200 and len(listed["data"]) == 2  # type: ignore[arg-type]

        for body, want in (({"email": "x@y.z", "role": "owner"}, 400), ({"email": "x@y.z", "role": "boss",
                                                                        "account": "acme"}, 400),
                           ({"email": "bad", "account": "acme"}, 400), ({"email": "x@y.z", "account": "nope"}, 404),
                           ({"email": "ann@acme.test", "account": "acme"}, 400),
                           ({"email": "x@y.z", "role": "operator", "account": "acme"}, 400)):
            status, error = await call("POST", "/admin/users", body)
            assert status == want, (body, error)
        assert (await call("POST", "/admin/users/reset-password", {"email": "nobody@x.y"}))[0] == 404
        async with http.post(gw.base_url + "/admin/users", json={"email": "x@y.z", "account": "acme"}) as response:
            assert response.status == 401
