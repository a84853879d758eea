"""The console's security properties, each tried as an attacker would: fixation, CSRF, expiry, throttling, reach, logs.

Real gateways on a manual clock (SQLite store); `api_session` is tried through a small app of
its own on a real store, since its callers (`/api/chat`, `/api/usage`) are the request path's.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from clexproxy.clock import ManualClock
from clexproxy.config import load_settings
from clexproxy.store import open_store
from clexproxy.web.session import CSRF_HEADER, SESSION_COOKIE, SESSIONS, Sessions, api_session, token_hash
from tests.integration.conftest import NOON, GatewayFactory, RunningGateway
from tests.integration.test_console_signin import PASSWORD, Browser, browser, make_user, signed_in_user


async def _csrf(b: Browser) -> str:
    _, html, _ = await b.get("/")
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found
    return found.group(1)


async def test_an_id_planted_before_sign_in_never_becomes_a_session(gw: RunningGateway) -> None:
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        await b.set_password(link)
        first = await b.sign_in("ann@acme.test")
        assert first.status == 303
        earlier = b.session_id()
        planted = "attacker-chosen-session-id-0123456789abcdef"
        b.http.cookie_jar.update_cookies({SESSION_COOKIE: planted}, URL(b.base))
        assert await b.who() is None  # an unknown id is no one
        assert (await b.sign_in("ann@acme.test")).status == 303
        fresh = b.session_id()
        assert fresh and fresh not in (planted, earlier)
        store = gw.gateway.store
        assert await store.get_session(token_hash(planted)) is None
        assert earlier and await store.get_session(token_hash(earlier)) is not None  # another browser's, kept
        # Signing in again from a browser holding a live id ends that id.
        b.http.cookie_jar.update_cookies({SESSION_COOKIE: fresh}, URL(b.base))
        assert (await b.sign_in("ann@acme.test")).status == 303
        assert await store.get_session(token_hash(fresh)) is None
        other = await browser(gw)
        other.http.cookie_jar.update_cookies({SESSION_COOKIE: fresh}, URL(b.base))
        assert await other.who() is None
        await other.http.close()
    finally:
        await b.http.close()


async def test_posts_without_the_right_token_or_from_another_origin_are_refused(gw: RunningGateway) -> None:
    b = await signed_in_user(gw)
    try:
        session_id = b.session_id()
        assert session_id
        for data, headers in (({}, {}), ({"csrf_token": "wrong"}, {}),
                              ({"csrf_token": await _csrf(b)}, {"Origin": "https://evil.example"})):
            status, body, _ = await b.post("/console/sign-out", data, **headers)
            error = orjson.loads(body)["error"]
            assert status == 403 and error["type"] == "permission_error"
            assert error["reason"] == ("origin" if headers else "csrf")
            assert await gw.gateway.store.get_session(token_hash(session_id)) is not None  # nothing changed
        assert await b.who() == "ann@acme.test"
        # The forms before a session: their token must equal the browser's own cookie.
        fresh = await browser(gw)
        await fresh.form_token("/console/sign-in")
        for token in ("", "not-the-cookie-value-at-all-000"):
            status, body, _ = await fresh.post("/console/sign-in", {"csrf_token": token, "email": "ann@acme.test",
                                                                   "password": PASSWORD})
            assert status == 403 and orjson.loads(body)["error"]["reason"] == "csrf"
        assert fresh.session_id() is None
        await fresh.http.close()
        status, _, _ = await b.post("/console/sign-out", {"csrf_token": await _csrf(b)}, Origin=b.base)
        assert status == 303
    finally:
        await b.http.close()


async def test_idle_and_absolute_expiry(gw: RunningGateway, clock: ManualClock) -> None:
    b = await signed_in_user(gw)
    try:
        session_id = b.session_id()
        assert session_id
        for _ in range(3):  # a request within the idle time keeps it alive (last_seen moves)
            clock.advance(50 * 60)
            assert await b.who() == "ann@acme.test"
        clock.advance(60 * 60 + 1)
        assert await b.who() is None
        assert await gw.gateway.store.get_session(token_hash(session_id)) is None

        b2 = await browser(gw)
        assert (await b2.sign_in("ann@acme.test")).status == 303
        started = clock.time()
        while clock.time() + 50 * 60 < started + 12 * 3600:
            clock.advance(50 * 60)
            assert await b2.who() == "ann@acme.test"
        clock.advance(started + 12 * 3600 - clock.time())
        assert await b2.who() is None  # twelve hours after sign-in, busy or not
        await b2.http.close()
    finally:
        await b.http.close()


async def test_five_wrong_passwords_throttle_even_the_right_one(gw: RunningGateway, clock: ManualClock) -> None:
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        await b.set_password(link)
        for _ in range(5):
            assert (await b.sign_in("ann@acme.test", "wrong password!!")).status == 401
        token = await b.form_token("/console/sign-in")
        status, html, response = await b.post("/console/sign-in", {"csrf_token": token, "email": "ann@acme.test",
                                                                  "password": PASSWORD})
        assert status == 429 and "Too many sign-in attempts" in html
        assert int(response.headers["Retry-After"]) > 0
        assert b.session_id() is None
        clock.advance(15 * 60 + 1)
        assert (await b.sign_in("ann@acme.test")).status == 303
        # A success clears the email's count: five more failures are needed again.
        for _ in range(4):
            assert (await b.sign_in("ann@acme.test", "wrong password!!")).status == 401
        assert (await b.sign_in("ann@acme.test")).status == 303
    finally:
        await b.http.close()


async def test_twenty_failures_from_one_address_throttle_every_email(gw: RunningGateway) -> None:
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        await b.set_password(link)
        for n in range(20):
            assert (await b.sign_in(f"guess{n % 4}@acme.test", "wrong password!!")).status == 401
        assert (await b.sign_in("ann@acme.test")).status == 429
    finally:
        await b.http.close()


@pytest.fixture
async def session_app(tmp_path: Path) -> AsyncIterator[tuple[str, Sessions, ManualClock]]:
    """A tiny app whose one route answers who `api_session` says is calling, on a real SQLite store."""
    clock = ManualClock(NOON)
    settings = load_settings(None, env={}, overrides={"data_dir": str(tmp_path / "data")})
    store = await open_store(settings.server.data_dir, settings.database.url)
    sessions = Sessions()
    sessions.bind(store, clock, settings)

    async def who(request: web.Request) -> web.Response:
        try:
            user = await api_session(request)
        except Exception as exc:  # the SPEC error the caller would answer
            return web.json_response({"error": type(exc).__name__, "reason": getattr(exc, "reason", None)})
        return web.json_response({"user": user.user.email if user else None})

    app = web.Application()
    app[SESSIONS] = sessions
    app.router.add_route("*", "/who", who)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", sessions, clock
    finally:
        await runner.cleanup()
        await store.close()


async def test_api_session(session_app: tuple[str, Sessions, ManualClock]) -> None:
    base, sessions, clock = session_app
    await sessions.store.create_account("acme", "pro")
    user = await sessions.store.create_user("ann@acme.test", "member", "acme")
    session_id, csrf = await sessions.start(user.id)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_id}"}
    async with aiohttp.ClientSession() as http:
        async def call(method: str, **headers: str) -> dict[str, object]:
            async with http.request(method, base + "/who", headers=headers) as response:
                return dict(await response.json())

        assert await call("GET") == {"user": None}
        assert await call("GET", **cookie) == {"user": "ann@acme.test"}
        assert await call("POST", **cookie, Origin=base, **{CSRF_HEADER: csrf}) == {"user": "ann@acme.test"}
        assert await call("POST", **cookie, Origin=base) == {"error": "PermissionDenied", "reason": "csrf"}
        assert await call("POST", **cookie, Origin=base, **{CSRF_HEADER: "x" + csrf}) == {
            "error": "PermissionDenied", "reason": "csrf"}
        assert await call("POST", **cookie, **{CSRF_HEADER: csrf}) == {"error": "PermissionDenied", "reason": "origin"}
        assert await call("POST", **cookie, Origin="https://evil.example", **{CSRF_HEADER: csrf}) == {
            "error": "PermissionDenied", "reason": "origin"}
        clock.advance(61 * 60)
        assert await call("GET", **cookie) == {"error": "AuthenticationFailed", "reason": None}


async def test_no_password_session_id_or_link_token_reaches_a_log(
    make_gateway: GatewayFactory, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    access = io.BytesIO()
    gw = await make_gateway(clock=clock, access_stream=access)
    _, link = await make_user(gw)
    b = await browser(gw)
    try:
        await b.set_password(link)
        await b.sign_in("ann@acme.test", "a wrong password here")
        assert (await b.sign_in("ann@acme.test")).status == 303
        session_id = b.session_id()
        assert session_id
        csrf = await _csrf(b)
        await b.post("/console/sign-out", {"csrf_token": csrf})
    finally:
        await b.http.close()
    await gw.stop()
    logs = access.getvalue().decode() + "\n".join(r.getMessage() for r in caplog.records)
    assert "/console/set-password" in logs and "/console/sign-in" in logs  # the lines are there
    for secret in (PASSWORD, "a wrong password here", session_id, csrf, link.split("token=")[1]):
        assert secret not in logs


async def test_operators_and_members_reach_only_what_their_role_allows(gw: RunningGateway) -> None:
    """`account_in_view` through the real request: an owner's own account, a 404 for another, an operator's pick."""
    from clexproxy.errors import ApiError
    from clexproxy.web.session import account_in_view, signed_in

    await gw.gateway.store.create_account("other", "free")
    results: dict[str, object] = {}
    for role, account in (("owner", "acme"), ("member", "acme"), ("operator", None)):
        b = await signed_in_user(gw, f"{role}@x.test", role, account)
        session_id = b.session_id()
        await b.http.close()
        for query in ("", "?account=acme", "?account=other"):
            request = _request_with_cookie(gw, session_id or "", query)
            user = await signed_in(request)
            assert user is not None and user.role == role
            try:
                results[f"{role}{query}"] = account_in_view(request, user)
            except ApiError as exc:
                results[f"{role}{query}"] = exc.status
    assert results == {
        "owner": "acme", "owner?account=acme": "acme", "owner?account=other": 404,
        "member": "acme", "member?account=acme": "acme", "member?account=other": 404,
        "operator": 400, "operator?account=acme": "acme", "operator?account=other": "other",
    }


def _request_with_cookie(gw: RunningGateway, session_id: str, query: str) -> web.Request:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", "/console/keys" + query, headers={"Cookie": f"{SESSION_COOKIE}={session_id}"},
                               app=gw.runner.app)
