"""The admin API: accounts, keys, plans and usage, behind an admin token (never a user key).

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
from clexproxy.handlers.common import ADMIN_TOKEN, GATEWAY, read_json, request_id
from clexproxy.store.base import AccountNotFound, AccountRow, KeyNotFound, KeyRow, StoreError

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
    try:
        key_id = int(request.match_info["key_id"])
    except ValueError:
        raise InvalidRequest("key id must be an integer.") from None
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


ROUTES = (
    ("GET", "/admin/accounts", list_accounts),
    ("POST", "/admin/accounts", create_account),
    ("PATCH", "/admin/accounts/{name}", update_account),
    ("POST", "/admin/accounts/{name}/keys", create_key),
    ("GET", "/admin/accounts/{name}/usage", account_usage),
    ("GET", "/admin/keys", list_keys),
    ("DELETE", "/admin/keys/{key_id}", revoke_key),
)

__all__ = ["ROUTES"]
