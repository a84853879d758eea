"""What every key store shares: the rows it returns, the errors it raises, the key format, the `Store` protocol.

Two backends implement the protocol (`ThreadedSQLiteStore` over `SQLiteStore`, and `PostgresStore`);
the gateway, the admin API and the CLI see only what is defined here, so a row, an error or a key
looks the same whichever database is behind it. Refusals are typed so callers tell them apart by
class, never by message (the admin API answers 404 for the two "not found" ones, 400 for the rest):

    StoreError
    ├── AccountNotFound      no account of that name
    ├── KeyNotFound          no key of that id
    ├── KeyLimitReached      the account's plan allows no more active keys
    ├── AlreadyExists
    │   ├── AccountExists        an account of that name exists
    │   └── KeyAlreadyRevoked    the key was revoked before
    ├── UnknownPlan          a plan the catalog does not define (the CLI checks before it opens a store)
    └── DataDirUnusable      the data dir, or the SQLite file in it, cannot hold the store

Every message says what is wrong and is shown as it is (CLI stderr, admin API error message).
Keys are made here (`new_key`, `key_hint`); hashing and the format check are the request path's
(`hash_key`, `key_format_ok` in the fastpath).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
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
    id: int
    account_id: int
    account: str
    key_hash: bytes
    hint: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


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
    async def add_usage(self, deltas: Iterable[UsageRow]) -> None: ...
    async def create_account(self, name: str, plan: str) -> AccountRow: ...
    async def get_account(self, name: str) -> AccountRow | None: ...
    async def list_accounts(self) -> list[AccountRow]: ...
    async def set_plan(self, name: str, plan: str) -> AccountRow: ...
    async def create_key(self, account: str, plan: str, max_keys_by_plan: dict[str, int]) -> tuple[KeyRow, str]: ...
    async def list_keys(self, account: str | None = None, include_revoked: bool = True) -> list[KeyRow]: ...
    async def revoke_key(self, key_id: int) -> KeyRow: ...
    async def usage(self, account: str, since_day: int = 0) -> list[UsageDelta]: ...
