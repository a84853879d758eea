"""The console's way in and out: `/console`, sign-in, sign-out, and the set-password page a one-time link opens.

Sign-in and set-password come before any session, so their forms carry a double-submit token:
a random `clex_csrf_pre` cookie (HttpOnly, SameSite=Strict) that the form's hidden field must
equal; a page on another site can neither read the cookie nor set it. Every POST here is also
refused when its Origin names another site (`check_origin`).

Sign-in is throttled through the store, so every worker and host counts the same failures: 5
per email or 20 per client address in 15 minutes, and then even the right password gets the 429
page until the window passes. The client address is `request.remote`: behind a reverse proxy
that is the proxy's address, so the per-address limit then counts everyone together
(X-Forwarded-For is not trusted: a client could write anything there). An unknown email and a
wrong password get the same answer after the same work (a dummy hash is verified).

A successful sign-in always makes a new session id (and deletes the one the browser brought), so
an id planted before sign-in never becomes a signed-in one. The set-password page's token is
in its URL: that page says `Referrer-Policy: strict-origin` (a Referer carries the origin only, and
the form's POST still carries a real Origin: under `no-referrer` a browser sends `Origin: null`, which
the origin check refuses), and the access log writes paths without their query, so the token reaches
neither another site nor a log.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from aiohttp import web

from clexproxy.errors import PermissionDenied
from clexproxy.web.pages import page
from clexproxy.web.session import (
    CSRF_FIELD,
    PRE_COOKIE,
    SESSION_COOKIE,
    SESSIONS,
    SIGN_IN_PATH,
    check_csrf,
    check_origin,
    hash_password,
    password_problem,
    safe_next,
    signed_in,
    token_hash,
    verify_password,
)

THROTTLE_WINDOW = 15 * 60.0
MAX_EMAIL_FAILURES = 5
MAX_ADDRESS_FAILURES = 20
WRONG = "Wrong email or password."
LINK_DEAD = "This link has been used, has expired, or was replaced by a newer one: ask for a new link."


def _pre_token(request: web.Request) -> str:
    """The double-submit token: the browser's own `clex_csrf_pre` cookie if it has a sane one, else a new one."""
    current = request.cookies.get(PRE_COOKIE, "")
    return current if 20 <= len(current) <= 64 and current.isascii() else secrets.token_urlsafe(24)


def see_other(location: str) -> web.Response:
    """A 303 returned, not raised, so the handler's wrapper still writes its access line."""
    return web.Response(status=303, headers={"Location": location})


async def _form_page(request: web.Request, template: str, nav: str, context: dict[str, Any],
                     status: int = 200) -> web.Response:
    token = _pre_token(request)
    response = await page(request, template, nav, {"pre_token": token, **context})
    response.set_status(status)
    sessions = request.app[SESSIONS]
    response.set_cookie(PRE_COOKIE, token, path="/console", httponly=True, samesite="Strict",
                        secure=sessions.settings.secure_cookies or None)
    return response


async def _posted(request: web.Request) -> dict[str, str]:
    """The form's fields, once its origin and double-submit token are checked (403 otherwise)."""
    check_origin(request)
    form = await request.post()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    cookie = request.cookies.get(PRE_COOKIE, "")
    supplied = fields.get(CSRF_FIELD, "")
    if not cookie or not supplied or not hmac.compare_digest(cookie.encode(), supplied.encode()):
        raise PermissionDenied("The form's security token is missing or out of date: reload the page and try again.",
                               reason="csrf")
    return fields


async def console_home(request: web.Request) -> web.Response:
    """`/console`: the keys page when signed in, else the sign-in page."""
    return see_other("/console/keys" if await signed_in(request) else SIGN_IN_PATH)


async def sign_in_page(request: web.Request) -> web.Response:
    notice = "Password set: sign in with it." if request.query.get("done") == "password" else ""
    return await _form_page(request, "signin.html", "sign-in", {
        "email": "", "error": "", "notice": notice, "next": safe_next(request.query.get("next")),
    })


async def sign_in(request: web.Request) -> web.Response:
    """Check the throttle, then the password; a new session (and cookie) on success, the form again otherwise."""
    fields = await _posted(request)
    sessions = request.app[SESSIONS]
    store = sessions.store
    email = fields.get("email", "").strip().lower()[:254]
    password = fields.get("password", "")
    target = safe_next(fields.get("next"))
    subjects = [f"email:{email}", f"addr:{request.remote or 'unknown'}"]
    now = sessions.now()
    failures = await store.signin_failures(subjects, now - THROTTLE_WINDOW)
    if failures.get(subjects[0], 0) >= MAX_EMAIL_FAILURES or failures.get(subjects[1], 0) >= MAX_ADDRESS_FAILURES:
        response = await _form_page(request, "signin.html", "sign-in", {
            "email": email, "next": target, "notice": "",
            "error": "Too many sign-in attempts: wait 15 minutes and try again.",
        }, status=429)
        response.headers["Retry-After"] = str(int(THROTTLE_WINDOW))
        return response
    found = await store.user_by_email(email) if email else None
    ok, rehash = await verify_password(found[1] if found else None, password)
    if not ok or found is None:
        await store.note_signin_failure(subjects, now)
        return await _form_page(request, "signin.html", "sign-in", {
            "email": email, "error": WRONG, "notice": "", "next": target,
        }, status=401)
    user = found[0]
    await store.clear_signin_failures(subjects[0])
    if rehash:
        # The hash was made with older argon2 parameters; the store changes a password only through
        # a link, so a link made and used at once stores the new hash (it ends the user's other sessions).
        link_token = secrets.token_urlsafe(32)
        await store.create_link(user.id, token_hash(link_token), now + 60.0)
        await store.redeem_link(token_hash(link_token), await hash_password(password), now)
    brought = request.cookies.get(SESSION_COOKIE)
    if brought:
        await sessions.end(brought)  # no fixation: whatever id the browser had is gone
    await sessions.prune()
    session_id, _ = await sessions.start(user.id)
    response = see_other(target)
    sessions.set_cookie(response, session_id)
    response.del_cookie(PRE_COOKIE, path="/console")
    return response


async def sign_out(request: web.Request) -> web.Response:
    """End the session (its row: every worker and host sees it end) and clear the cookie."""
    sessions = request.app[SESSIONS]
    user = await signed_in(request)
    if user is not None:
        form = await request.post()
        supplied = form.get(CSRF_FIELD)
        check_csrf(request, user, supplied if isinstance(supplied, str) else None)
        await sessions.store.delete_session(user.id_hash)
    response = see_other(SIGN_IN_PATH)
    sessions.clear_cookie(response)
    return response


def _no_referrer(response: web.Response) -> web.Response:
    response.headers["Referrer-Policy"] = "strict-origin"
    return response


async def set_password_page(request: web.Request) -> web.Response:
    """The form a set-password link opens: the user's email, two password fields (410 for a dead link)."""
    token = request.query.get("token", "")
    sessions = request.app[SESSIONS]
    user = await sessions.store.peek_link(token_hash(token), sessions.now()) if token else None
    if user is None:
        return _no_referrer(await _form_page(request, "set_password.html", "sign-in", {
            "token": "", "email": "", "error": LINK_DEAD}, status=410))
    return _no_referrer(await _form_page(request, "set_password.html", "sign-in", {
        "token": token, "email": user.email, "error": ""}))


async def set_password(request: web.Request) -> web.Response:
    """Use the link: the password is set, the link is spent and the user's sessions end; then sign in."""
    fields = await _posted(request)
    sessions = request.app[SESSIONS]
    token = fields.get("token", "")
    password = fields.get("password", "")
    user = await sessions.store.peek_link(token_hash(token), sessions.now()) if token else None
    if user is None:
        return _no_referrer(await _form_page(request, "set_password.html", "sign-in", {
            "token": "", "email": "", "error": LINK_DEAD}, status=410))
    problem = password_problem(password, fields.get("password_confirm", ""))
    if problem:
        return _no_referrer(await _form_page(request, "set_password.html", "sign-in", {
            "token": token, "email": user.email, "error": problem}, status=400))
    if await sessions.store.redeem_link(token_hash(token), await hash_password(password), sessions.now()) is None:
        return _no_referrer(await _form_page(request, "set_password.html", "sign-in", {
            "token": "", "email": "", "error": LINK_DEAD}, status=410))
    return _no_referrer(see_other(f"{SIGN_IN_PATH}?done=password"))


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/console", console_home),
    ("GET", "/console/sign-in", sign_in_page),
    ("POST", "/console/sign-in", sign_in),
    ("POST", "/console/sign-out", sign_out),
    ("GET", "/console/set-password", set_password_page),
    ("POST", "/console/set-password", set_password),
)
