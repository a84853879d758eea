"""Console sessions: who a browser is, and whether a state-changing request really comes from our own pages.

A session is a row in the store (so every worker and host knows it), keyed by the sha256 of a
random id the browser holds in the `clex_session` cookie (HttpOnly, SameSite=Lax, Secure with
`[console] secure_cookies`); the id itself is never stored or logged. A session ends when idle
for `session_idle_minutes`, `session_max_hours` after sign-in, or at sign-out; `last_seen` is
written at most once a minute, so a busy page costs one read, not a write, per request.

Every console POST carries the session's CSRF token (form field `csrf_token`, or header
`X-CSRF-Token` for a script's fetch), compared in constant time (`check_csrf`); a POST whose
Origin is present and not this gateway's own is refused too. SameSite=Lax keeps the cookie off
other sites' POSTs already: the token is the second lock, not the only one.

Passwords are argon2id (argon2-cffi's `PasswordHasher` defaults): slow on purpose, so hashing and
verifying run in a thread, never on the event loop. Set-password links carry a random token whose
sha256 alone is stored (`issue_link`); the CLI, the admin API and demo provisioning make them
through the same function, so a link looks and expires the same whichever made it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from clexproxy.clock import Clock
from clexproxy.config import ConsoleSettings, Settings
from clexproxy.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from clexproxy.handlers.common import GATEWAY
from clexproxy.store.base import SessionRow, Store, UserRow

SESSION_COOKIE = "clex_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# The sign-in and set-password forms come before any session: their token is a double submit,
# this cookie (HttpOnly, SameSite=Strict) equal to the form's hidden field.
PRE_COOKIE = "clex_csrf_pre"
TOUCH_EVERY = 60.0  # seconds between writes of a session's last_seen
PASSWORD_MIN = 10
PASSWORD_MAX = 1024
SIGN_IN_PATH = "/console/sign-in"
SET_PASSWORD_PATH = "/console/set-password"

PASSWORDS = PasswordHasher()  # argon2id with the library's defaults
# What an unknown email is checked against, so it costs what a wrong password costs.
_DUMMY_HASH = PASSWORDS.hash("not a password anyone has; only spent time")


def token_hash(token: str) -> bytes:
    """What the store keeps of a session id or a link token: its sha256, never the value."""
    return hashlib.sha256(token.encode()).digest()


def public_url(settings: Settings) -> str:
    """The base of every printed link: `[console] public_url`, else this server's own address.

    A wildcard listen address (0.0.0.0, ::) becomes 127.0.0.1: the only address sure to reach it.
    """
    configured = settings.console.public_url.strip().rstrip("/")
    if configured:
        return configured
    host = settings.server.host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


async def hash_password(password: str) -> str:
    """The argon2id hash of `password`, computed in a thread (tens of milliseconds of CPU on purpose)."""
    return await asyncio.get_running_loop().run_in_executor(None, PASSWORDS.hash, password)


def _verify(stored: str | None, password: str) -> tuple[bool, bool]:
    try:
        PASSWORDS.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False, False
    if stored is None:
        return False, False
    return True, PASSWORDS.check_needs_rehash(stored)


async def verify_password(stored: str | None, password: str) -> tuple[bool, bool]:
    """(matches, needs rehash). `stored` None (unknown user, no password yet) checks a dummy hash: same work, False."""
    return await asyncio.get_running_loop().run_in_executor(None, _verify, stored, password)


def password_problem(password: str, confirm: str | None = None) -> str | None:
    """Why a new password cannot be used, in the user's words, or None."""
    if confirm is not None and password != confirm:
        return "The two passwords differ."
    if len(password) < PASSWORD_MIN:
        return f"Use at least {PASSWORD_MIN} characters."
    if len(password) > PASSWORD_MAX:
        return f"Use at most {PASSWORD_MAX} characters."
    return None


# Legal only inside a quoted local part, which no one uses: refused, so an address is always plain text.
_NOT_IN_EMAILS = frozenset('<>()[]\\,;:"')


def email_problem(email: str) -> str | None:
    """Why an address cannot be a user's email (a light check: one @, no spaces, at most 254 characters), or None."""
    if not email or len(email) > 254:
        return "an email has 1 to 254 characters"
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email):
        return f"{email!r} is not an email address (one @, no spaces)"
    if any(c in _NOT_IN_EMAILS or not c.isprintable() for c in email):
        return f"{email!r} is not an email address (no quotes, brackets, commas or control characters)"
    return None


async def issue_link(store: Store, user_id: int, base: str, hours: float, now: float) -> tuple[str, float]:
    """A new one-time set-password link for the user and when it expires; their earlier links stop working."""
    token = secrets.token_urlsafe(32)
    expires_at = now + hours * 3600.0
    await store.create_link(user_id, token_hash(token), expires_at)
    return f"{base}{SET_PASSWORD_PATH}?token={token}", expires_at


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A signed-in browser's user, with its session's CSRF token and the hash that names the session."""

    user: UserRow
    csrf_token: str
    id_hash: bytes

    @property
    def role(self) -> str:
        return self.user.role

    @property
    def account(self) -> str | None:
        return self.user.account

    @property
    def account_id(self) -> int | None:
        return self.user.account_id


class Sessions:
    """The session rules of one app, bound to its gateway's store and clock when the app starts."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._clock: Clock | None = None
        self.settings = ConsoleSettings()
        self.base = ""

    def bind(self, store: Store, clock: Clock, settings: Settings) -> None:
        self._store, self._clock = store, clock
        self.settings = settings.console
        self.base = public_url(settings)

    @property
    def store(self) -> Store:
        assert self._store is not None, "Sessions used before the app started"
        return self._store

    def now(self) -> float:
        assert self._clock is not None, "Sessions used before the app started"
        return self._clock.time()

    @property
    def idle_seconds(self) -> float:
        return self.settings.session_idle_minutes * 60.0

    @property
    def max_seconds(self) -> float:
        return self.settings.session_max_hours * 3600.0

    async def start(self, user_id: int) -> tuple[str, str]:
        """A new session for the user: (the cookie's id, the CSRF token). The caller sets the cookie."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        await self.store.create_session(token_hash(session_id), user_id, csrf, self.now())
        return session_id, csrf

    async def lookup(self, session_id: str) -> ConsoleUser | None:
        """The live session of that id; an expired one is deleted and is None."""
        id_hash = token_hash(session_id)
        row: SessionRow | None = await self.store.get_session(id_hash)
        if row is None:
            return None
        now = self.now()
        if now - row.created_at >= self.max_seconds or now - row.last_seen >= self.idle_seconds:
            await self.store.delete_session(id_hash)
            return None
        if now - row.last_seen >= TOUCH_EVERY:
            await self.store.touch_session(id_hash, now)
        return ConsoleUser(row.user, row.csrf_token, id_hash)

    async def end(self, session_id: str) -> None:
        await self.store.delete_session(token_hash(session_id))

    async def prune(self) -> int:
        now = self.now()
        return await self.store.prune_sessions(now - self.max_seconds, now - self.idle_seconds)

    async def issue_link(self, user_id: int) -> tuple[str, float]:
        return await issue_link(self.store, user_id, self.base, self.settings.link_hours, self.now())

    def set_cookie(self, response: web.StreamResponse, session_id: str) -> None:
        """The session cookie: HttpOnly, SameSite=Lax, Path=/, Secure with the setting; gone with the browser."""
        response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="Lax",
                            secure=self.settings.secure_cookies or None)

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Lax",
                            secure=self.settings.secure_cookies or None)


SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)
_USER: web.RequestKey[ConsoleUser | None] = web.RequestKey("console_user", object)  # type: ignore[arg-type]


def setup(app: web.Application) -> None:
    """Give the app its `Sessions`, bound to the gateway when the app starts (after the gateway is up)."""
    sessions = app[SESSIONS] = Sessions()

    async def bind(app: web.Application) -> None:
        gateway = app[GATEWAY]
        sessions.bind(gateway.store, gateway.clock, gateway.settings)

    app.on_startup.append(bind)


async def signed_in(request: web.Request) -> ConsoleUser | None:
    """The user of the request's live session cookie, or None (looked up once per request)."""
    if _USER in request:
        return request[_USER]
    session_id = request.cookies.get(SESSION_COOKIE)
    user = await request.app[SESSIONS].lookup(session_id) if session_id else None
    request[_USER] = user
    return user


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a console path of ours only (never another host), else the keys page."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/keys"


async def require_user(request: web.Request) -> ConsoleUser:
    """The signed-in user, or a 303 to the sign-in page that comes back here afterwards."""
    user = await signed_in(request)
    if user is None:
        raise web.HTTPSeeOther(f"{SIGN_IN_PATH}?next={quote(safe_next(request.path_qs), safe='/')}")
    return user


def own_origin(request: web.Request, origin: str) -> bool:
    """Whether an Origin header names this gateway: the address the browser reached, or `public_url`'s."""
    if origin == str(request.url.origin()):
        return True
    base = request.app[SESSIONS].base
    if base and origin == base:
        return True
    parts = urlsplit(origin)  # behind a TLS-terminating proxy the scheme differs; the host is the test
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == request.host


def check_origin(request: web.Request) -> None:
    """Refuse (403, reason "origin") a request whose Origin is present and not this gateway's own."""
    origin = request.headers.get("Origin")
    if origin is not None and not own_origin(request, origin):
        raise PermissionDenied("This request came from a page on another site.", reason="origin")


def check_csrf(request: web.Request, user: ConsoleUser, supplied: str | None) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token, or from another origin."""
    check_origin(request)
    if not supplied or not hmac.compare_digest(supplied.encode(), user.csrf_token.encode()):
        raise PermissionDenied("The form's security token is missing or out of date: reload the page and try again.",
                               reason="csrf")


async def api_session(request: web.Request) -> ConsoleUser | None:
    """The console user behind an API call made with the session cookie (no Authorization header).

    None without the cookie. A dead session is a 401; a POST must come from this gateway's own
    origin (the Explorer's fetch sends Origin) and carry the `X-CSRF-Token` header (403).
    """
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    user = await signed_in(request)
    if user is None:
        raise AuthenticationFailed("Your console session has ended: sign in again.")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        if origin is None or not own_origin(request, origin):
            raise PermissionDenied("A signed-in call must come from this gateway's own pages.", reason="origin")
        check_csrf(request, user, request.headers.get(CSRF_HEADER))
    return user


def account_in_view(request: web.Request, user: ConsoleUser) -> str:
    """The account a page shows: an owner's or member's own (another named in ?account= is a 404);
    an operator's ?account= (required; whether it exists is the caller's check)."""
    named = request.query.get("account")
    if user.role == "operator":
        if not named:
            raise InvalidRequest("Pick an account: operators name one with ?account=NAME.")
        return named
    if user.account is None or (named and named != user.account):
        raise NotFound(f"No such account: {named}." if named else "This user belongs to no account.")
    return user.account
