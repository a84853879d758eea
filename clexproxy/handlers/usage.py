"""`GET /api/usage?days=N`: a key holder's daily usage by model, without the console.

With a Bearer key it answers that key's usage; sent from a signed-in console page (the session
cookie, no Authorization header: `api_session`) the whole account's, for its owner or member, and
for an operator the account named in `?account=`. `days` is 1..90 (default 30): today and the days
before it, UTC; only days with usage are listed, newest first, each broken down by model.

Like `GET /api/key` it is free (no credits, no slot of the per-minute limit), and throttled on its
own: `USAGE_PER_MINUTE` per key (a console user: per user), a `LookupThrottle` apart from
`/api/key`'s, so polling one does not starve the other. This worker's usage not yet written
behind is written first (`StoreSync.flush_usage`), so a call just made shows.

It is a bearer-key endpoint (CORS for pages on other origins), but an answer authorised by the
session cookie never carries CORS headers: it is sent from here already prepared, which the
bearer endpoints' wrapper (`guarded`) leaves as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from clexproxy.auth import Account
from clexproxy.clock import SECONDS_PER_DAY, utc_day
from clexproxy.errors import ApiError, AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY, request_id, whole_number
from clexproxy.handlers.key import NO_STORE, LookupThrottle, bearer_token, budget_of, checked_policy, limits_clock
from clexproxy.store.base import KeyUsageRow, key_hint
from clexproxy.web.session import SESSION_COOKIE, ConsoleUser, account_in_view, api_session

USAGE_PER_MINUTE = 60
THROTTLE_LIMIT = "api_usage_requests_per_minute"
DEFAULT_DAYS, MAX_DAYS = 30, 90
_FIGURES = ("credits", "calls", "prompt_tokens", "completion_tokens")
USAGE_THROTTLE = LookupThrottle("GET /api/usage", THROTTLE_LIMIT, USAGE_PER_MINUTE)


def parse_days(raw: str | None) -> int:
    """`?days=`: an integer 1..90, 30 when absent; anything else SPEC's 400 naming `days`."""
    if raw is None:
        return DEFAULT_DAYS
    days = whole_number(raw, 1, MAX_DAYS)
    if days is None:
        raise InvalidRequest(f"'days' must be a whole number from 1 to {MAX_DAYS}.", extra={"param": "days"})
    return days


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * SECONDS_PER_DAY, UTC).strftime("%Y-%m-%d")


def usage_days(rows: list[KeyUsageRow]) -> list[dict[str, Any]]:
    """The rows (any keys) as days, newest first, each with its totals and its models (by credits, then name)."""
    by_day: dict[int, dict[str, list[int]]] = {}
    for row in rows:
        models = by_day.setdefault(row.day, {})
        figures = models.setdefault(row.model, [0, 0, 0, 0])
        figures[0] += row.credits
        figures[1] += row.calls
        figures[2] += row.prompt_tokens
        figures[3] += row.completion_tokens
    days: list[dict[str, Any]] = []
    for day in sorted(by_day, reverse=True):
        models = by_day[day]
        totals = [sum(figures[i] for figures in models.values()) for i in range(4)]
        if not totals[1] and not totals[0]:
            continue
        listed = sorted(models.items(), key=lambda item: (-item[1][0], item[0]))
        days.append({
            "date": _date(day),
            **dict(zip(_FIGURES, totals, strict=True)),
            "models": [{"model": model, **dict(zip(_FIGURES, figures, strict=True))} for model, figures in listed],
        })
    return days


def _answer(request: web.Request, payload: dict[str, Any], metering: dict[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={**metering, "X-Request-Id": request_id(request), "Cache-Control": NO_STORE},
    )


async def api_usage(request: web.Request) -> web.StreamResponse:
    """The calling key's daily usage by model; with a console session instead, its account's."""
    authorization = request.headers.get("Authorization")
    if authorization is None and request.cookies.get(SESSION_COOKIE):
        return await _session_usage(request)
    gateway = request.app[GATEWAY]
    entry, account = gateway.directory.authenticate(authorization)
    policy = checked_policy(gateway.directory, entry.key_id, limits_clock(gateway.limits).time())
    metering = gateway.limits.peek_headers(account, budget_of(policy))
    days = parse_days(request.query.get("days"))
    USAGE_THROTTLE.check(gateway, entry.key_id, metering)
    rows = await _rows(gateway, account.name, days, entry.key_id)
    assert authorization is not None  # `authenticate` accepted it
    payload = {
        "object": "usage",
        "account": account.name,
        "key": {
            "id": entry.key_id,
            "name": gateway.directory.names.get(entry.key_id, ""),
            "hint": key_hint(bearer_token(authorization)),
        },
        "days": usage_days(rows),
    }
    return _answer(request, payload, metering)


async def _rows(gateway: Gateway, account: str, days: int, key_id: int | None) -> list[KeyUsageRow]:
    await gateway.sync.flush_usage()  # this worker's calls so far, so one just made shows
    since = utc_day(limits_clock(gateway.limits).time()) - days + 1
    return await gateway.store.key_usage(account, since, key_id)


async def _session_usage(request: web.Request) -> web.StreamResponse:
    """The account's usage for a console session: answered prepared, so no CORS header is added to it."""
    try:
        user = await api_session(request)
        if user is None:  # the cookie is there: `api_session` answers a user or refuses
            raise AuthenticationFailed("Your console session has ended: sign in again.")
        response = await _session_answer(request, user)
    except ApiError as error:
        response = error.to_response({"X-Request-Id": request_id(request)})
    await response.prepare(request)
    await response.write_eof()
    return response


async def _session_answer(request: web.Request, user: ConsoleUser) -> web.Response:
    gateway = request.app[GATEWAY]
    if user.role == "operator" and not request.query.get("account"):
        raise PermissionDenied("Operators see an account's usage by naming it: add ?account=NAME.", reason="role")
    name = account_in_view(request, user)
    row = await gateway.store.get_account(name)
    if row is None:
        raise NotFound(f"No such account: {name}.")
    days = parse_days(request.query.get("days"))
    known: Account | None = gateway.directory.accounts.get(row.id)
    metering = gateway.limits.peek_headers(known) if known is not None else {}
    USAGE_THROTTLE.check(gateway, -user.user.id, metering)  # users apart from keys: negative ids
    rows = await _rows(gateway, name, days, None)
    return _answer(request, {"object": "usage", "account": name, "key": None, "days": usage_days(rows)}, metering)
