"""The console's usage page (`/console/usage`) and its CSV download (`/console/usage.csv`).

Today's figures come from the limits' `peek_headers` for the account (`credits_used`): the credits
used, remaining and limit, and the reset, are the X-Clex-Credits-* a call made at that moment would
carry, and the rpm is the plan's with what is left of this minute. The history comes from the
store: the account's days (`Store.usage`) for the chart and the table, and the account x key x
model rows (`Store.key_usage`) for a day's breakdown and the CSV. This worker's usage is written
behind first (`flush_usage`), so a call just made shows.

The chart is `usage_chart`'s server-rendered SVG; the same thirty days are a table below it, for
screen readers and phones. The day picker is a plain GET form (`?day=YYYY-MM-DD`, today by default):
no script. Key id 0 is the signed-in API Explorer's calls, named "Console (API Explorer)".

The CSV (`?days=N`, 1..90, default 30) has one row per day x key x model. A spreadsheet would run a
cell starting with = + - @ as a formula, and key names are the user's text: such cells get a
leading single quote (`csv_cell`).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from aiohttp import web

from clexproxy.clock import utc_day
from clexproxy.errors import InvalidRequest
from clexproxy.handlers.common import GATEWAY, request_id, whole_number
from clexproxy.headers import CREDITS_RESET, RATELIMIT_LIMIT_REQUESTS, RATELIMIT_REMAINING_REQUESTS
from clexproxy.store.base import KeyUsageRow
from clexproxy.web.accounts import (
    NO_STORE,
    account_page,
    credits_used,
    in_view_query,
    live_account,
    switcher,
    viewed_account,
)
from clexproxy.web.chart import DayBar, usage_chart
from clexproxy.web.keys import CONSOLE_KEY, day_text, parse_day
from clexproxy.web.session import require_user

CHART_DAYS = 30
CSV_DAYS_MAX = 90
CSV_COLUMNS = ("date", "key_id", "key_name", "model", "credits", "calls", "prompt_tokens", "completion_tokens")
FORMULA_START = ("=", "+", "-", "@")
UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def reset_text(seconds: int) -> str:
    """When the day's credits come back: `in 5 h 12 min (00:00 UTC)`."""
    minutes = max(1, (seconds + 59) // 60)
    hours, minutes = divmod(minutes, 60)
    when = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    return f"in {when} (00:00 UTC)"


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ gets a leading single quote."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _breakdown(rows: list[KeyUsageRow], names: dict[int, str], by: str) -> list[dict[str, Any]]:
    """One day's rows summed by model or by key, the biggest first."""
    sums: dict[Any, list[int]] = {}
    for r in rows:
        group = r.model if by == "model" else r.key_id
        total = sums.setdefault(group, [0, 0, 0, 0])
        total[0] += r.credits
        total[1] += r.calls
        total[2] += r.prompt_tokens
        total[3] += r.completion_tokens
    out = []
    for group, (credits, calls, prompt, completion) in sums.items():
        label = group if by == "model" else names.get(group, f"Key {group}")
        out.append({"label": label, "credits": credits, "calls": calls, "tokens": prompt + completion})
    return sorted(out, key=lambda item: (-item["credits"], str(item["label"])))


async def key_names(request: web.Request, account: str, hints: bool = True) -> dict[int, str]:
    """Key id -> what the console calls it: its name and hint (id 0: the console's own Explorer)."""
    names = {0: CONSOLE_KEY}
    for key in await request.app[GATEWAY].store.list_keys(account):
        names[key.id] = (f"{key.name} ({key.hint})" if hints else key.name) if key.name else key.hint
    return names


async def usage_page(request: web.Request) -> web.Response:
    """Today's credits and rpm, the last thirty days (chart and table), and one day's breakdown."""
    user = await require_user(request)
    row = await viewed_account(request, user)
    gateway = request.app[GATEWAY]
    await gateway.sync.flush_usage()
    account = live_account(gateway, row)
    used, limit, headers = credits_used(gateway, account)
    today = utc_day(gateway.clock.time())
    first = today - CHART_DAYS + 1
    by_day = {u.day: u for u in await gateway.store.usage(row.name, first)}
    bars: list[DayBar] = []
    tokens: list[int] = []
    for day in range(first, today + 1):
        found = by_day.get(day)
        bars.append(DayBar(day_text(day), found.credits, found.calls) if found else DayBar(day_text(day), 0, 0))
        tokens.append(found.prompt_tokens + found.completion_tokens if found else 0)
    days = [{"date": b.day, "credits": b.credits, "calls": b.calls, "tokens": t}
            for b, t in zip(bars, tokens, strict=True)]
    picked_text = request.query.get("day", "") or day_text(today)
    picked = parse_day(picked_text)
    day_error = ""
    status = 200
    if picked is None or picked > today:
        day_error = f"Pick a day as YYYY-MM-DD, today ({day_text(today)}) or before."
        picked, status = today, 400
    detail = [r for r in await gateway.store.key_usage(row.name, picked) if r.day == picked]
    names = await key_names(request, row.name)
    chart = usage_chart(bars)
    response = await account_page(request, "usage.html", "usage", {
        "account": row.name,
        "plan": account.plan,
        "used": used,
        "limit": limit,
        "remaining": limit - used,
        "reset": reset_text(int(headers[CREDITS_RESET])),
        "rpm_limit": int(headers[RATELIMIT_LIMIT_REQUESTS]),
        "rpm_remaining": int(headers[RATELIMIT_REMAINING_REQUESTS]),
        "chart": chart,
        "days": list(reversed(days)),
        "total_credits": sum(b.credits for b in bars),
        "day": day_text(picked),
        "day_input": picked_text if day_error else day_text(picked),
        "day_error": day_error,
        "today": day_text(today),
        "by_model": _breakdown(detail, names, "model"),
        "by_key": _breakdown(detail, names, "key"),
        "query": in_view_query(user, row.name),
        "csv_query": in_view_query(user, row.name, days=str(CHART_DAYS)),
        "accounts": await switcher(request, user),
    })
    response.set_status(status)
    return response


async def usage_csv(request: web.Request) -> web.Response:
    """The account's usage by day x key x model for the last `days` days, as a CSV attachment."""
    user = await require_user(request)
    row = await viewed_account(request, user)
    raw = request.query.get("days", str(CHART_DAYS))
    days = whole_number(raw, 1, CSV_DAYS_MAX)
    if days is None:
        raise InvalidRequest(f"'days' must be a whole number from 1 to {CSV_DAYS_MAX}.", extra={"param": "days"})
    gateway = request.app[GATEWAY]
    await gateway.sync.flush_usage()
    today = utc_day(gateway.clock.time())
    names = await key_names(request, row.name, hints=False)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in await gateway.store.key_usage(row.name, today - days + 1):
        writer.writerow([csv_cell(v) for v in (
            day_text(r.day), r.key_id, names.get(r.key_id, f"Key {r.key_id}"), r.model,
            r.credits, r.calls, r.prompt_tokens, r.completion_tokens,
        )])
    filename = f"clex-usage-{UNSAFE_FILENAME.sub('_', row.name)}-{day_text(today)}.csv"
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": NO_STORE,
            "X-Content-Type-Options": "nosniff",
            "X-Request-Id": request_id(request),
        },
    )


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/console/usage", usage_page),
    ("GET", "/console/usage.csv", usage_csv),
)
