"""Which account a console page shows, and the operator's list of every account (`/console/accounts`).

Owners and members see their own account only; an operator belongs to none and names the
account in view with `?account=NAME` (`account_in_view`). `viewed_account` turns that name into
the store's row (an unknown name is a 404, like another account's), and `live_account` into the
request path's `Account`, whose `peek_headers` give the figures a call made now would carry: the
keys and usage pages show exactly what X-Clex-Credits-* would say.

The accounts page is the operator's way in: each account's plan, active keys and today's credits
used, linking to its keys and usage pages. Anyone else gets a 404 (not a 403: the page does not
exist for them), the same answer as for an unknown path.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from clexproxy.auth import Account
from clexproxy.catalog import Plan
from clexproxy.errors import NotFound, PermissionDenied
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY
from clexproxy.headers import CREDITS_LIMIT, CREDITS_REMAINING
from clexproxy.store.base import AccountRow
from clexproxy.web.pages import base_url, page
from clexproxy.web.session import CSRF_FIELD, ConsoleUser, account_in_view, check_csrf, require_user

NO_STORE = "no-store"  # account pages: never kept by a browser's or a proxy's cache
MANAGERS = ("owner", "operator")  # who changes an account's keys and users; a member only looks


def may_manage(user: ConsoleUser) -> bool:
    return user.role in MANAGERS


async def managers_post(request: web.Request, refusal: str) -> tuple[ConsoleUser, AccountRow, MultiDictProxy[Any]]:
    """A POST that changes an account's keys or users: its user, the account in view and the form.

    Checked first: a session, the CSRF token (`check_csrf`), and an owner's or operator's role
    (a member gets the 403 `refusal`, reason "role").
    """
    user = await require_user(request)
    form = await request.post()
    supplied = form.get(CSRF_FIELD)
    check_csrf(request, user, supplied if isinstance(supplied, str) else None)
    if not may_manage(user):
        raise PermissionDenied(refusal, reason="role")
    return user, await viewed_account(request, user), form


def plan_of(gateway: Gateway, row: AccountRow) -> Plan:
    """The account's plan; one the catalog no longer defines reads as the smallest (as `Directory` does)."""
    plans = gateway.catalog.plans
    return plans.get(row.plan) or min(plans.values(), key=lambda p: p.credits_per_day)


def live_account(gateway: Gateway, row: AccountRow) -> Account:
    """The request path's `Account` for a store row (a new account the directory has not seen yet: made up)."""
    return gateway.directory.accounts.get(row.id) or Account(row.id, row.name, plan_of(gateway, row))


def credits_used(gateway: Gateway, account: Account) -> tuple[int, int, dict[str, str]]:
    """(used, limit, the metering headers) today, from `peek_headers`: what a call made now would carry."""
    headers = gateway.limits.peek_headers(account)
    limit = int(headers[CREDITS_LIMIT])
    return max(0, limit - int(headers[CREDITS_REMAINING])), limit, headers


async def viewed_account(request: web.Request, user: ConsoleUser) -> AccountRow:
    """The store row of the account the page shows (`account_in_view`); unknown: 404."""
    if user.role == "operator" and not request.query.get("account"):
        raise web.HTTPSeeOther("/console/accounts")  # an operator's Keys or Usage link: pick an account first
    name = account_in_view(request, user)
    row = await request.app[GATEWAY].store.get_account(name)
    if row is None:
        raise NotFound(f"No such account: {name}.")
    return row


def in_view_query(user: ConsoleUser, account: str, **more: str) -> str:
    """The query string that keeps an operator's account in view across links and forms ('' for others)."""
    params = {"account": account} if user.role == "operator" else {}
    params.update({k: v for k, v in more.items() if v})
    return "?" + urlencode(params) if params else ""


async def switcher(request: web.Request, user: ConsoleUser) -> list[str]:
    """An operator's account switcher: every account's name (empty for anyone else: no switcher)."""
    if user.role != "operator":
        return []
    return [row.name for row in await request.app[GATEWAY].store.list_accounts()]


async def account_page(request: web.Request, template: str, nav: str, context: dict[str, Any]) -> web.Response:
    """`page` with the console's account headers: no caching anywhere, and this gateway's base URL."""
    response = await page(request, template, nav, {"base_url": base_url(request), **context})
    response.headers["Cache-Control"] = NO_STORE
    return response


async def accounts_page(request: web.Request) -> web.Response:
    """Every account, its plan, active keys and today's credits used: the operator's index (others: 404)."""
    user = await require_user(request)
    if user.role != "operator":
        raise NotFound(f"No such page: {request.path}.")
    gateway = request.app[GATEWAY]
    await gateway.sync.flush_usage()
    active: dict[int, int] = {}
    for key in await gateway.store.list_keys(include_revoked=False):
        active[key.account_id] = active.get(key.account_id, 0) + 1
    rows = []
    for row in sorted(await gateway.store.list_accounts(), key=lambda r: r.name):
        used, limit, _ = credits_used(gateway, live_account(gateway, row))
        rows.append({
            "name": row.name,
            "plan": row.plan,
            "active_keys": active.get(row.id, 0),
            "max_keys": plan_of(gateway, row).max_keys,
            "used": used,
            "limit": limit,
            "query": urlencode({"account": row.name}),
        })
    return await account_page(request, "accounts.html", "accounts", {"accounts": rows})


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/console/accounts", accounts_page),
)
