"""What every key store shares: the rows it returns, the errors it raises, the key format, the `Store` protocol.

Two backends implement the protocol (`ThreadedSQLiteStore` over `SQLiteStore`, and `PostgresStore`);
the gateway, the admin API and the CLI see only what is defined here, so a row, an error or a key
looks the same whichever database is behind it. Refusals are typed so callers tell them apart by
class, never by message (the admin API answers 404 for the two "not found" ones, 400 for the rest):

    StoreError
    ├── AccountNotFound      no account of that name
    ├── KeyNotFound          no key of that id
    ├── KeyLimitReached      the account's plan allows no more active keys
    ├── UserNotFound         no console user of that id or email
    ├── AlreadyExists
    │   ├── AccountExists        an account of that name exists
    │   ├── UserExists           a console user with that email exists
    │   └── KeyAlreadyRevoked    the key was revoked before
    ├── UnknownPlan          a plan the catalog does not define (the CLI checks before it opens a store)
    └── DataDirUnusable      the data dir, or the SQLite file in it, cannot hold the store

Every message says what is wrong and is shown as it is (CLI stderr, admin API error message).
Keys are made here (`new_key`, `key_hint`); hashing and the format check are the request path's
(`hash_key`, `key_format_ok` in the fastpath).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

KEY_PREFIX = "clex_"
KEY_RANDOM_BYTES = 32  # 43 URL-safe characters: above SPEC's minimum of 32


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_hint(key: str) -> str:
    """Enough of a key to tell keys apart in a listing, too little to use."""
    return f"{key[:9]}...{key[-4:]}"


# rows -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    name: str
    plan: str
    created_at: float


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key as stored: never the key itself, only its hash and hint.

    `name`, `expires_at`, `daily_cap` and `models` are the limits its creator set (the console's
    "Create key"); the defaults are a key without any: never expires, the account's budget, every model.
    """

    id: int
    account_id: int
    account: str
    key_hash: bytes
    hint: str
    created_at: float
    revoked_at: float | None
    name: str = ""
    expires_at: float | None = None  # wall time; from then on the key is refused (401)
    daily_cap: int | None = None  # credits per UTC day this key may spend, within the account's
    models: tuple[str, ...] | None = None  # the models it may call; None: every model

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a new key may do, beyond its account's plan: what `create_key` stores on the row."""

    name: str = ""
    expires_at: float | None = None
    daily_cap: int | None = None
    models: tuple[str, ...] | None = None


ROLES = ("owner", "member", "operator")  # an operator belongs to no account and sees every one


@dataclass(frozen=True, slots=True)
class UserRow:
    """A console user. `account_id`/`account` are None for an operator; `password_set` is False until a link is used."""

    id: int
    email: str
    role: str
    account_id: int | None
    account: str | None
    created_at: float
    password_set: bool


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A signed-in browser: the store keeps the hash of its cookie's id, never the id."""

    id_hash: bytes
    user: UserRow
    csrf_token: str
    created_at: float
    last_seen: float


class UsageDelta(NamedTuple):
    """Usage to add to an (account, day) row; a plain 6-tuple in the same order (`UsageRow`) is one too."""

    account_id: int
    day: int
    credits: int
    calls: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


# (account_id, day, credits, calls, prompt_tokens, completion_tokens): what `CreditLedger.drain_usage`
# gives, and what a flush writes.
UsageRow = tuple[int, int, int, int, int, int]


class KeyUsageRow(NamedTuple):
    """Usage by account x key x model x day: what the usage page and `GET /api/usage` break a day down by.

    Written beside the account's `UsageRow`s in the same flush (same transaction); `key_id` 0 is
    the console's own calls (the signed-in API Explorer), which no key made.
    """

    account_id: int
    key_id: int
    model: str
    day: int
    credits: int
    calls: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


# errors -----------------------------------------------------------------------------------------


class StoreError(Exception):
    """A request the store refuses; the subclass says which kind, the message says why."""


class AccountNotFound(StoreError):
    """No account of that name: `no account named 'acme'`."""


class KeyNotFound(StoreError):
    """No key of that id: `no key with id 7`."""


class KeyLimitReached(StoreError):
    """The account already has as many active keys as its plan allows."""


class AlreadyExists(StoreError):
    """What the call would make is already there."""


class AccountExists(AlreadyExists):
    """An account of that name exists: `account 'acme' already exists`."""


class KeyAlreadyRevoked(AlreadyExists):
    """The key was revoked before: `key 7 is already revoked`."""


class UserExists(AlreadyExists):
    """A console user with that email exists: `a user with email 'a@b.c' already exists`."""


class UserNotFound(StoreError):
    """No console user of that id or email."""


class UnknownPlan(StoreError):
    """A plan the catalog does not define."""


class DataDirUnusable(StoreError):
    """The data dir, or the SQLite file in it, cannot hold the store; the message names the path and the fix."""


# the protocol -----------------------------------------------------------------------------------


class Store(Protocol):
    async def close(self) -> None: ...
    async def change_marker(self) -> int:
        """A number that moves when another writer commits: a cheap 'anything new?' before `changes_since`."""
        ...
    async def changes_since(self, seq: int) -> tuple[list[AccountRow], list[KeyRow], int]: ...
    async def credits_spent(self, day: int) -> dict[int, int]: ...
    async def key_credits_spent(self, day: int) -> dict[int, int]:
        """Credits each key spent on `day` (key id -> credits): what seeds the per-key daily caps at start."""
        ...
    async def add_usage(self, deltas: Iterable[UsageRow], detail: Iterable[KeyUsageRow] = ()) -> None:
        """Add the account rows and the key x model rows in one transaction (both or neither)."""
        ...
    async def create_account(self, name: str, plan: str) -> AccountRow: ...
    async def get_account(self, name: str) -> AccountRow | None: ...
    async def list_accounts(self) -> list[AccountRow]: ...
    async def set_plan(self, name: str, plan: str) -> AccountRow: ...
    async def create_key(self, account: str, plan: str, max_keys_by_plan: dict[str, int],
                         limits: KeyLimits = KeyLimits()) -> tuple[KeyRow, str]: ...
    async def list_keys(self, account: str | None = None, include_revoked: bool = True) -> list[KeyRow]: ...
    async def revoke_key(self, key_id: int) -> KeyRow: ...
    async def usage(self, account: str, since_day: int = 0) -> list[UsageDelta]: ...
    async def key_usage(self, account: str, since_day: int = 0, key_id: int | None = None) -> list[KeyUsageRow]:
        """The key x model x day rows from `since_day` on (one key's with `key_id`), by day, then key, then model."""
        ...
    async def keys_last_used(self, account: str) -> dict[int, int]:
        """The last day each of the account's keys was used (key id -> UTC day number), from the usage rows."""
        ...

    # console users, one-time password links, sessions, sign-in failures ----------------------------

    async def create_user(self, email: str, role: str, account: str | None) -> UserRow:
        """`account` None for an operator, required otherwise (AccountNotFound); emails are stored lower-cased."""
        ...
    async def get_user(self, user_id: int) -> UserRow | None: ...
    async def user_by_email(self, email: str) -> tuple[UserRow, str | None] | None:
        """The user and their argon2 password hash (None before a link is used); case-insensitive email."""
        ...
    async def list_users(self, account: str | None = None) -> list[UserRow]: ...
    async def create_link(self, user_id: int, token_hash: bytes, expires_at: float) -> None:
        """Store a set-password link (the hash of its token); the user's earlier unused links stop working."""
        ...
    async def peek_link(self, token_hash: bytes, now: float) -> UserRow | None:
        """The user of an unused, unexpired link, using nothing (the set-password form shows their email)."""
        ...
    async def redeem_link(self, token_hash: bytes, password_hash: str, now: float) -> UserRow | None:
        """Atomically: an unused, unexpired link sets the password, is marked used, and ends the user's sessions.

        None when the link is unknown, used or expired (nothing changes then).
        """
        ...
    async def create_session(self, id_hash: bytes, user_id: int, csrf_token: str, now: float) -> None: ...
    async def get_session(self, id_hash: bytes) -> SessionRow | None: ...
    async def touch_session(self, id_hash: bytes, now: float) -> None: ...
    async def delete_session(self, id_hash: bytes) -> None: ...
    async def delete_sessions(self, user_id: int) -> None: ...
    async def prune_sessions(self, created_before: float, seen_before: float) -> int:
        """Delete sessions past their absolute or idle expiry; how many."""
        ...
    async def note_signin_failure(self, subjects: Sequence[str], now: float) -> None:
        """Record one failed sign-in against each subject (`email:a@b.c`, `addr:10.0.0.1`)."""
        ...
    async def signin_failures(self, subjects: Sequence[str], since: float) -> dict[str, int]:
        """Failures recorded per subject since `since` (subjects without any are left out)."""
        ...
    async def clear_signin_failures(self, subject: str) -> None: ...
