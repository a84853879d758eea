"""The console's keys page (`/console/keys`): an account's keys, "Create key", and revoking one.

Everyone signed in to the account sees its keys, active and revoked: name, hint, created, last used
(a day, from the usage rows), status (active, revoked, expired) and limits. Owners, and operators
on any account, create and revoke them; a member's POST is a 403 (`PermissionDenied`, reason
"role"), and their page says who can. Every POST carries the session's CSRF token (`check_csrf`).

"Create key" checks its fields here (name 1..64 printable characters; an expiry date after today;
a daily cap from 1 to the plan's credits per day, said in the plan's words; models from the
catalog, none ticked meaning all) and re-renders the form with the message beside the field (400).
The store refuses a key beyond the plan's limit (`KeyLimitReached`) with the plan's words, shown
the same way. On success the POST's own answer shows the secret, once: it is never in a URL (so
never in an access log line, a Referer or the history), the page is `no-store`, and a reload of
`/console/keys` shows only the hint. A key's expiry is 00:00 UTC of the date chosen.

Revoking asks first (`GET /console/keys/{id}/revoke`, a confirm page: works without JS), then
the POST revokes and answers 303 to the list with `?revoked=ID`, rendered as "Key NAME revoked".
After either change the store is re-read at once and the change announced (`sync_store(force=True)`,
`announce_key_change`), so the key works or stops on every worker within the second.

A key id of another account is a 404, the same answer as an id that does not exist.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from clexproxy.clock import SECONDS_PER_DAY, utc_day
from clexproxy.errors import NotFound
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY, whole_number
from clexproxy.store.base import AccountRow, KeyAlreadyRevoked, KeyLimitReached, KeyLimits, KeyRow
from clexproxy.web.accounts import (
    account_page,
    in_view_query,
    managers_post,
    may_manage,
    plan_of,
    switcher,
    viewed_account,
)
from clexproxy.web.session import ConsoleUser, require_user

NAME_MAX = 64
MAX_ID = 2**63 - 1  # the stores' integer ids
DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
KEYS_REFUSAL = "Only the account's owners can create or revoke keys."
CONSOLE_KEY = "Console (API Explorer)"  # key id 0 in the usage rows: the signed-in Explorer's calls


def day_text(day: int) -> str:
    """A UTC day number as `YYYY-MM-DD`."""
    return datetime.fromtimestamp(day * SECONDS_PER_DAY, UTC).strftime("%Y-%m-%d")


def parse_day(text: str) -> int | None:
    """`YYYY-MM-DD` as a UTC day number, or None when it is not a real date in that form."""
    if not DATE_FORMAT.fullmatch(text):
        return None
    try:
        parsed = date.fromisoformat(text)
    except ValueError:
        return None
    return (parsed - date(1970, 1, 1)).days



def key_status(key: KeyRow, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _key_view(key: KeyRow, last_used: dict[int, int], now: float, plan_credits: int) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name or f"Key {key.id}",
        "hint": key.hint,
        "created": day_text(utc_day(key.created_at)),
        "last_used": day_text(last_used[key.id]) if key.id in last_used else "never",
        "status": key_status(key, now),
        "cap": f"{key.daily_cap:,}/day" if key.daily_cap is not None else f"plan's {plan_credits:,}/day",
        "expires": day_text(utc_day(key.expires_at)) if key.expires_at is not None else "never",
        "models": ", ".join(key.models) if key.models else "all",
    }


class KeyForm:
    """The "Create key" fields as sent, and what is wrong with each (field name -> message)."""

    def __init__(self, form: MultiDictProxy[Any] | None = None) -> None:
        def text(name: str) -> str:
            value = form.get(name, "") if form is not None else ""
            return value.strip() if isinstance(value, str) else ""

        self.name = text("name")
        self.expires_on = text("expires_on")
        self.daily_cap = text("daily_cap")
        self.models = [m for m in form.getall("models", []) if isinstance(m, str)] if form is not None else []
        self.errors: dict[str, str] = {}

    def limits(self, gateway: Gateway, row: AccountRow) -> KeyLimits:
        """The `KeyLimits` these fields ask for; `errors` says what is wrong (then the limits mean nothing)."""
        if not self.name:
            self.errors["name"] = "Give the key a name."
        elif len(self.name) > NAME_MAX:
            self.errors["name"] = f"Use at most {NAME_MAX} characters ({len(self.name)} given)."
        elif not self.name.isprintable():
            self.errors["name"] = "Use printable characters only (no tabs or line breaks)."
        expires_at = None
        if self.expires_on:
            day = parse_day(self.expires_on)
            today = utc_day(gateway.clock.time())
            if day is None:
                self.errors["expires_on"] = "Give the date as YYYY-MM-DD, or leave it empty for no expiry."
            elif day <= today:
                self.errors["expires_on"] = f"Pick a date after today ({day_text(today)} UTC)."
            else:
                expires_at = float(day * SECONDS_PER_DAY)
        plan = plan_of(gateway, row)
        cap = None
        if self.daily_cap:
            words = (f"The {plan.name} plan allows {plan.credits_per_day:,} credits per day: a key's daily cap "
                     f"is a whole number from 1 to {plan.credits_per_day:,}.")
            cap = whole_number(self.daily_cap, 1, plan.credits_per_day)
            if cap is None:
                self.errors["daily_cap"] = words
        unknown = [m for m in self.models if m not in gateway.catalog.models]
        if unknown:
            self.errors["models"] = f"Not a model of this gateway: {', '.join(unknown)}."
        chosen = tuple(dict.fromkeys(self.models)) or None
        return KeyLimits(name=self.name, expires_at=expires_at, daily_cap=cap, models=chosen)


async def _render(request: web.Request, user: ConsoleUser, row: AccountRow, form: KeyForm,
                  created: tuple[KeyRow, str] | None = None, form_error: str = "",
                  status: int = 200) -> web.Response:
    gateway = request.app[GATEWAY]
    plan = plan_of(gateway, row)
    now = gateway.clock.time()
    keys = await gateway.store.list_keys(row.name)
    last_used = await gateway.store.keys_last_used(row.name)
    views = [_key_view(k, last_used, now, plan.credits_per_day) for k in sorted(keys, key=lambda k: -k.id)]
    revoked = request.query.get("revoked", "")
    flash = ""
    revoked_id = whole_number(revoked, 1, MAX_ID)
    if revoked_id is not None:
        flash = next((f"Key {v['name']} revoked." for v in views if v["id"] == revoked_id), "")
    response = await account_page(request, "keys.html", "keys", {
        "account": row.name,
        "plan": plan,
        "keys": views,
        "active_count": sum(1 for k in keys if k.active),
        "may_create": may_manage(user),
        "form": form,
        "form_error": form_error,
        "catalog_models": [m for m in gateway.catalog.models.values()],
        "created": {"name": created[0].name or f"Key {created[0].id}", "secret": created[1]} if created else None,
        "flash": flash,
        "query": in_view_query(user, row.name),
        "accounts": await switcher(request, user),
        "today": day_text(utc_day(now)),
    })
    response.set_status(status)
    return response


async def keys_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    row = await viewed_account(request, user)
    return await _render(request, user, row, KeyForm())


async def create_key(request: web.Request) -> web.Response:
    """Create a key from the form: the answer shows its secret once, or the form again with what is wrong."""
    user, row, form_data = await managers_post(request, KEYS_REFUSAL)
    gateway = request.app[GATEWAY]
    form = KeyForm(form_data)
    limits = form.limits(gateway, row)
    if form.errors:
        return await _render(request, user, row, form, status=400)
    max_keys = {p.name: p.max_keys for p in gateway.catalog.plans.values()}
    try:
        key_row, secret = await gateway.store.create_key(row.name, row.plan, max_keys, limits)
    except KeyLimitReached as exc:
        return await _render(request, user, row, form, form_error=str(exc), status=400)
    await gateway.sync.sync_store(force=True)
    await gateway.sync.announce_key_change()
    return await _render(request, user, row, KeyForm(), created=(key_row, secret))


async def _account_key(request: web.Request, row: AccountRow) -> KeyRow:
    """The key of the URL's id, if it is this account's; else 404 (another account's id reads as unknown)."""
    key_id = whole_number(request.match_info["key_id"], 1, MAX_ID)
    if key_id is not None:
        for key in await request.app[GATEWAY].store.list_keys(row.name):
            if key.id == key_id:
                return key
    raise NotFound(f"No such key in account {row.name}.")


async def revoke_confirm(request: web.Request) -> web.Response:
    """"Revoke key NAME?": the confirm page, a form that POSTs the revocation (no script needed)."""
    user = await require_user(request)
    row = await viewed_account(request, user)
    key = await _account_key(request, row)
    gateway = request.app[GATEWAY]
    last_used = await gateway.store.keys_last_used(row.name)
    view = _key_view(key, last_used, gateway.clock.time(), plan_of(gateway, row).credits_per_day)
    return await account_page(request, "revoke.html", "keys", {
        "account": row.name,
        "key": view,
        "may_create": may_manage(user),
        "query": in_view_query(user, row.name),
    })


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke the key (CSRF, owner or operator), apply it everywhere, and go back to the list (303)."""
    user, row, _ = await managers_post(request, KEYS_REFUSAL)
    key = await _account_key(request, row)
    gateway = request.app[GATEWAY]
    try:
        await gateway.store.revoke_key(key.id)
    except KeyAlreadyRevoked:
        pass  # a second click, or another tab: the key is revoked, which is what was asked
    await gateway.sync.sync_store(force=True)
    await gateway.sync.announce_key_change()
    raise web.HTTPSeeOther("/console/keys" + in_view_query(user, row.name, revoked=str(key.id)))


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/console/keys", keys_page),
    ("POST", "/console/keys", create_key),
    ("GET", r"/console/keys/{key_id:\d+}/revoke", revoke_confirm),
    ("POST", r"/console/keys/{key_id:\d+}/revoke", revoke_key),
)
