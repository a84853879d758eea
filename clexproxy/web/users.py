"""The console's users page (`/console/users`): who may sign in to an account, inviting one, and a new link.

Everyone signed in to the account sees its users: email, role, whether a password is set (else
"invited": their link is not used yet) and when they were added. Owners, and operators on any
account, invite a user (an email and the role owner or member: an operator is made only by the
CLI or the admin API, never from an account's page) and make a new set-password link for one; a
member's POST is a 403 (`PermissionDenied`, reason "role"). Every POST carries the session's CSRF
token (`check_csrf`).

The console sends no mail: the POST's own answer shows the one-time set-password link once, for
the inviter to send themselves, with its expiry. Like a new key's secret it is never in a URL of
ours (so never in an access log line, a Referer or the history) and the page is `no-store`. A new
link (`Sessions.issue_link`, the same function as the CLI's and the admin API's) ends the user's
earlier links. A user id of another account is a 404, the same answer as an id that does not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from clexproxy.clock import utc_day
from clexproxy.errors import NotFound
from clexproxy.handlers.common import GATEWAY, whole_number
from clexproxy.store.base import AccountRow, UserExists, UserRow
from clexproxy.web.accounts import account_page, in_view_query, managers_post, may_manage, switcher, viewed_account
from clexproxy.web.keys import MAX_ID, day_text
from clexproxy.web.session import SESSIONS, ConsoleUser, email_problem, require_user

USERS_REFUSAL = "Only the account's owners can invite users or make new links."
INVITED_ROLES = ("owner", "member")  # an account's roles; operators belong to none
EXISTS = "A user with that email exists."



def _user_view(row: UserRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email,
        "role": row.role,
        "status": "password set" if row.password_set else "invited",
        "created": day_text(utc_day(row.created_at)),
    }


class InviteForm:
    """The "Invite user" fields as sent, and what is wrong with each (field name -> message)."""

    def __init__(self, form: MultiDictProxy[Any] | None = None) -> None:
        def text(name: str, default: str = "") -> str:
            value = form.get(name, default) if form is not None else default
            return value.strip() if isinstance(value, str) else ""

        self.email = text("email").lower()
        self.role = text("role", "member")
        self.errors: dict[str, str] = {}

    def check(self) -> bool:
        """Whether the fields can make a user; else `errors` says why."""
        problem = email_problem(self.email)
        if problem:
            self.errors["email"] = problem[0].upper() + problem[1:] + "."
        if self.role not in INVITED_ROLES:
            self.errors["role"] = "Pick owner or member."
        return not self.errors


def _expiry_text(expires_at: float) -> str:
    return datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _render(request: web.Request, user: ConsoleUser, row: AccountRow, form: InviteForm,
                  link: tuple[UserRow, str, float, bool] | None = None, status: int = 200) -> web.Response:
    """The page; `link` is (the user, their new link, its expiry, whether they were just invited)."""
    users = await request.app[GATEWAY].store.list_users(row.name)
    response = await account_page(request, "users.html", "users", {
        "account": row.name,
        "users": [_user_view(u) for u in sorted(users, key=lambda u: u.id)],
        "may_invite": may_manage(user),
        "form": form,
        "roles": INVITED_ROLES,
        "link": {"email": link[0].email, "url": link[1], "expires": _expiry_text(link[2]), "invited": link[3]}
        if link else None,
        "query": in_view_query(user, row.name),
        "accounts": await switcher(request, user),
    })
    response.set_status(status)
    return response


async def users_page(request: web.Request) -> web.Response:
    user = await require_user(request)
    row = await viewed_account(request, user)
    return await _render(request, user, row, InviteForm())


async def invite_user(request: web.Request) -> web.Response:
    """Make the user: the answer shows their one-time set-password link once, or the form again with what is wrong."""
    user, row, form_data = await managers_post(request, USERS_REFUSAL)
    form = InviteForm(form_data)
    if not form.check():
        return await _render(request, user, row, form, status=400)
    try:
        created = await request.app[GATEWAY].store.create_user(form.email, form.role, row.name)
    except UserExists:
        form.errors["email"] = EXISTS
        return await _render(request, user, row, form, status=400)
    url, expires_at = await request.app[SESSIONS].issue_link(created.id)
    return await _render(request, user, row, InviteForm(), link=(created, url, expires_at, True))


async def reset_link(request: web.Request) -> web.Response:
    """A new set-password link for a user of this account (their earlier links stop working), shown once."""
    user, row, _ = await managers_post(request, USERS_REFUSAL)
    user_id = whole_number(request.match_info["user_id"], 1, MAX_ID)
    target = None
    if user_id is not None:
        target = next((u for u in await request.app[GATEWAY].store.list_users(row.name) if u.id == user_id), None)
    if target is None:
        raise NotFound(f"No such user in account {row.name}.")
    url, expires_at = await request.app[SESSIONS].issue_link(target.id)
    return await _render(request, user, row, InviteForm(), link=(target, url, expires_at, False))


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/console/users", users_page),
    ("POST", "/console/users", invite_user),
    ("POST", r"/console/users/{user_id:\d+}/reset", reset_link),
)
