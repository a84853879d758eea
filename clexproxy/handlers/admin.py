"""The admin API: accounts, keys, plans, usage and console users, behind an admin token (never a user key).

A console user is created with a one-time set-password link in the answer (as `users create`
prints it): the link is the only way a password is set, so none ever passes through this API.

Off unless `admin_token` is configured. Writes go to the store and are applied to this
process's memory at once; other processes pick them up from the store's change feed.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from clexproxy.errors import AuthenticationFailed, InvalidRequest, NotFound
from clexproxy.handlers.common import ADMIN_TOKEN, GATEWAY, read_json, request_id, whole_number
from clexproxy.store.base import (
    ROLES,
    AccountNotFound,
    AccountRow,
    KeyNotFound,
    KeyRow,
    StoreError,
    UserNotFound,
    UserRow,
)
from clexproxy.web.session import email_problem, issue_link, public_url

T = TypeVar("T")

MAX_ADMIN_BODY = 64 * 1024


def _check_token(request: web.Request) -> None:
    expected = request.app[ADMIN_TOKEN]
    if not expected:
        raise NotFound("The admin API is disabled: set CLEX_ADMIN_TOKEN to enable it.")
    sent = request.headers.get("Authorization", "")
    token = sent[7:] if sent.startswith("Bearer ") else request.headers.get("X-Admin-Token", "")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthenticationFailed("Missing or invalid admin token.")


def _ok(payload: Any, request: web.Request, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json",
        headers={"X-Request-Id": request_id(request)},
    )


_EPOCH = datetime.date(1970, 1, 1)


def iso_day(day: int) -> str:
    """A UTC day as the store keys it (days since 1970-01-01) as the report shows it: `2026-11-30`."""
    return (_EPOCH + datetime.timedelta(days=day)).isoformat()


def _account(row: AccountRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "plan": row.plan, "created_at": int(row.created_at)}


def _key(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.id, "account": row.account, "hint": row.hint, "created_at": int(row.created_at),
        "revoked_at": int(row.revoked_at) if row.revoked_at else None, "active": row.active,
    }


def _string_field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string.", extra={"param": name})
    return value


def _plan(request: web.Request, body: Any, default: str | None = None) -> str:
    plans = request.app[GATEWAY].catalog.plans
    plan = body.get("plan", default) if isinstance(body, dict) else default
    if not isinstance(plan, str) or plan not in plans:
        raise InvalidRequest(f"'plan' must be one of: {', '.join(plans)}.", extra={"param": "plan"})
    return str(plan)


async def _store_call(request: web.Request, call: Awaitable[T]) -> T:
    """A store write, applied here at once; a refusal is a 404 when what it names is missing, else a 400."""
    gateway = request.app[GATEWAY]
    try:
        result = await call
    except (AccountNotFound, KeyNotFound) as exc:
        raise NotFound(str(exc)) from None
    except StoreError as exc:
        raise InvalidRequest(str(exc)) from None
    await gateway.sync.sync_store(force=True)
    await gateway.sync.announce_key_change()
    return result


async def list_accounts(request: web.Request) -> web.Response:
    _check_token(request)
    rows = await request.app[GATEWAY].store.list_accounts()
    return _ok({"object": "list", "data": [_account(r) for r in rows]}, request)


async def create_account(request: web.Request) -> web.Response:
    _check_token(request)
    body = await read_json(request, MAX_ADMIN_BODY)
    name, plan = _string_field(body, "name"), _plan(request, body, "free")
    row = await _store_call(request, request.app[GATEWAY].store.create_account(name, plan))
    return _ok(_account(row), request, status=201)


async def update_account(request: web.Request) -> web.Response:
    _check_token(request)
    body = await read_json(request, MAX_ADMIN_BODY)
    store = request.app[GATEWAY].store
    row = await _store_call(request, store.set_plan(request.match_info["name"], _plan(request, body)))
    return _ok(_account(row), request)


async def _existing_account(request: web.Request) -> str:
    """The account named in the path; 404 when there is none (the admin API never creates one implicitly)."""
    gateway = request.app[GATEWAY]
    name = request.match_info["name"]
    if await gateway.store.get_account(name) is None:
        raise NotFound(f"no account named {name!r}")
    return name


async def create_key(request: web.Request) -> web.Response:
    _check_token(request)
    gateway = request.app[GATEWAY]
    name = await _existing_account(request)
    limits = {p.name: p.max_keys for p in gateway.catalog.plans.values()}
    row, key = await _store_call(request, gateway.store.create_key(name, "free", limits))
    return _ok({**_key(row), "key": key}, request, status=201)


async def list_keys(request: web.Request) -> web.Response:
    _check_token(request)
    gateway = request.app[GATEWAY]
    rows = await gateway.store.list_keys(request.query.get("account"))
    return _ok({"object": "list", "data": [_key(r) for r in rows]}, request)


async def revoke_key(request: web.Request) -> web.Response:
    _check_token(request)
    key_id = whole_number(request.match_info["key_id"], 0, 2**63 - 1)
    if key_id is None:
        raise InvalidRequest("key id must be a whole number (at most 18 digits).")
    row = await _store_call(request, request.app[GATEWAY].store.revoke_key(key_id))
    return _ok(_key(row), request)


async def account_usage(request: web.Request) -> web.Response:
    _check_token(request)
    gateway = request.app[GATEWAY]
    name = await _existing_account(request)
    await gateway.sync.flush_usage()
    rows = await gateway.store.usage(name)
    usage = [
        {"day": iso_day(r.day), "credits": r.credits, "calls": r.calls,
         "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
        for r in rows
    ]
    return _ok({"account": name, "usage": usage}, request)


def _user(row: UserRow) -> dict[str, Any]:
    return {"id": row.id, "email": row.email, "role": row.role, "account": row.account,
            "password_set": row.password_set, "created_at": int(row.created_at)}


def _email(body: Any) -> str:
    email = _string_field(body, "email").strip().lower()
    problem = email_problem(email)
    if problem:
        raise InvalidRequest(f"'email': {problem}.", extra={"param": "email"})
    return email


async def _link(request: web.Request, user: UserRow) -> dict[str, Any]:
    gateway = request.app[GATEWAY]
    console = gateway.settings.console
    link, expires = await issue_link(gateway.store, user.id, public_url(gateway.settings), console.link_hours,
                                     gateway.clock.time())
    return {"link": link, "expires_at": int(expires)}


async def create_user(request: web.Request) -> web.Response:
    """`{account?, email, role}` -> the user and their one-time set-password link."""
    _check_token(request)
    body = await read_json(request, MAX_ADMIN_BODY)
    email = _email(body)
    role = body.get("role", "owner")
    if role not in ROLES:
        raise InvalidRequest(f"'role' must be one of: {', '.join(ROLES)}.", extra={"param": "role"})
    account = body.get("account")
    if account is not None and not isinstance(account, str):
        raise InvalidRequest("'account' must be a string.", extra={"param": "account"})
    if (role == "operator") == bool(account):
        words = "an operator belongs to no account" if role == "operator" else f"an {role} needs an 'account'"
        raise InvalidRequest(f"{words}.", extra={"param": "account"})
    try:
        user = await request.app[GATEWAY].store.create_user(email, role, account or None)
    except AccountNotFound as exc:
        raise NotFound(str(exc)) from None
    except StoreError as exc:
        raise InvalidRequest(str(exc)) from None
    return _ok({"user": _user(user), **await _link(request, user)}, request, status=201)


async def reset_password(request: web.Request) -> web.Response:
    """`{email}` -> a new one-time link; the user's earlier links stop working."""
    _check_token(request)
    email = _email(await read_json(request, MAX_ADMIN_BODY))
    found = await request.app[GATEWAY].store.user_by_email(email)
    if found is None:
        raise NotFound(str(UserNotFound(f"no user with email {email!r}")))
    return _ok(await _link(request, found[0]), request)


async def list_users(request: web.Request) -> web.Response:
    _check_token(request)
    try:
        rows = await request.app[GATEWAY].store.list_users(request.query.get("account"))
    except AccountNotFound as exc:
        raise NotFound(str(exc)) from None
    return _ok({"object": "list", "data": [_user(r) for r in rows]}, request)


ROUTES = (
    ("GET", "/admin/accounts", list_accounts),
    ("POST", "/admin/accounts", create_account),
    ("PATCH", "/admin/accounts/{name}", update_account),
    ("POST", "/admin/accounts/{name}/keys", create_key),
    ("GET", "/admin/accounts/{name}/usage", account_usage),
    ("GET", "/admin/keys", list_keys),
    ("DELETE", "/admin/keys/{key_id}", revoke_key),
    ("GET", "/admin/users", list_users),
    ("POST", "/admin/users", create_user),
    ("POST", "/admin/users/reset-password", reset_password),
)

__all__ = ["ROUTES"]
