"""The console's tables in the embedded store: users, one-time password links, sessions, sign-in failures.

Also the console's reads of usage by key and model (`key_usage`, `keys_last_used`); the table and
its writes are `SQLiteStore`'s, beside the account rows they are flushed with.

Kept apart from `SQLiteStore`'s keys and usage because they share nothing with the change feed or the
write-behind: no seq, no request path, only the console's sign-in and pages. `SQLiteConsole` is the
synchronous half `SQLiteStore` inherits (it runs on the store's own connection and `_tx`);
`ThreadedConsole` is what `ThreadedSQLiteStore` inherits, the same calls on the store's thread.

Secrets never reach the database: a session is stored by the hash of its cookie's id, a link by the
hash of its token, a password as its argon2 hash (all made by the caller).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from clexproxy.store.base import (
    ROLES,
    AccountNotFound,
    KeyUsageRow,
    SessionRow,
    StoreError,
    UserExists,
    UserNotFound,
    UserRow,
)

T = TypeVar("T")

FAILURE_MEMORY_SECONDS = 86_400.0  # sign-in failures older than this are pruned when new ones are noted

CONSOLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    account_id INTEGER REFERENCES accounts(id),
    password_hash TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS users_account ON users(account_id);
CREATE TABLE IF NOT EXISTS password_links (
    token_hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE INDEX IF NOT EXISTS password_links_user ON password_links(user_id);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
CREATE TABLE IF NOT EXISTS signin_failures (subject TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS signin_failures_subject ON signin_failures(subject, at);
-- the prune deletes by age alone: an index range of the expired rows, not a scan
CREATE INDEX IF NOT EXISTS signin_failures_at ON signin_failures(at);
"""

# `user_row`'s columns, then what a call adds, then the join
USER_COLS = "u.id, u.email, u.role, u.account_id, a.name, u.created_at, u.password_hash IS NOT NULL"
USER_FROM = " FROM users u LEFT JOIN accounts a ON a.id = u.account_id"
_USER_SELECT = "SELECT " + USER_COLS + USER_FROM


class Row(Protocol):
    """A row of either backend: an `sqlite3` tuple or an asyncpg `Record`."""

    def __getitem__(self, index: int, /) -> Any: ...


def user_row(row: Row) -> UserRow:
    """A `UserRow` from `_USER_SELECT`'s columns (either backend's)."""
    account_id = row[3]
    return UserRow(
        int(row[0]), str(row[1]), str(row[2]), None if account_id is None else int(account_id),
        None if row[4] is None else str(row[4]), float(row[5]), bool(row[6]),
    )


def check_user(email: str, role: str, account: str | None) -> str:
    """The email as stored (trimmed, lower-cased), or the refusal of a role/account that do not go together."""
    if role not in ROLES:
        raise StoreError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if role == "operator" and account is not None:
        raise StoreError(f"an operator belongs to no account (got {account!r})")
    if role != "operator" and account is None:
        raise StoreError(f"an {role} needs an account")
    email = email.strip().lower()
    if not email:
        raise StoreError("a user needs an email")
    return email


class SQLiteConsole:
    """The console's calls on `SQLiteStore`'s connection (synchronous; `ThreadedConsole` runs them off the loop)."""

    # Given by the class it is mixed into (`SQLiteStore`): its connection and its transaction.
    _db: sqlite3.Connection
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]

    # users ------------------------------------------------------------------------------------

    def create_user(self, email: str, role: str, account: str | None) -> UserRow:
        email = check_user(email, role, account)
        with self._tx() as db:
            account_id: int | None = None
            if account is not None:
                found = db.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
                if found is None:
                    raise AccountNotFound(f"no account named {account!r}")
                account_id = int(found[0])
            if db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
                raise UserExists(f"a user with email {email!r} already exists")
            now = time.time()
            cur = db.execute(
                "INSERT INTO users (email, role, account_id, created_at) VALUES (?, ?, ?, ?)",
                (email, role, account_id, now),
            )
            return UserRow(int(cur.lastrowid or 0), email, role, account_id, account, now, False)

    def get_user(self, user_id: int) -> UserRow | None:
        row = self._db.execute(_USER_SELECT + " WHERE u.id = ?", (user_id,)).fetchone()
        return user_row(row) if row else None

    def user_by_email(self, email: str) -> tuple[UserRow, str | None] | None:
        row = self._db.execute(
            "SELECT " + USER_COLS + ", u.password_hash" + USER_FROM + " WHERE u.email = ?",
            (email.strip().lower(),),
        ).fetchone()
        return (user_row(row), row[7]) if row else None

    def list_users(self, account: str | None = None) -> list[UserRow]:
        if account is None:
            rows = self._db.execute(_USER_SELECT + " ORDER BY u.id").fetchall()
        else:
            rows = self._db.execute(_USER_SELECT + " WHERE a.name = ? ORDER BY u.id", (account,)).fetchall()
        return [user_row(r) for r in rows]

    # usage by key and model: what the console's keys and usage pages read -----------------------------

    def key_usage(self, account: str, since_day: int = 0, key_id: int | None = None) -> list[KeyUsageRow]:
        sql = (
            "SELECT u.account_id, u.key_id, u.model, u.day, u.credits, u.calls, u.prompt_tokens, u.completion_tokens "
            "FROM key_usage u JOIN accounts a ON a.id = u.account_id WHERE a.name = ? AND u.day >= ?"
        )
        args: list[object] = [account, since_day]
        if key_id is not None:
            sql += " AND u.key_id = ?"
            args.append(key_id)
        rows = self._db.execute(sql + " ORDER BY u.day, u.key_id, u.model", args).fetchall()
        return [KeyUsageRow(*r) for r in rows]

    def keys_last_used(self, account: str) -> dict[int, int]:
        rows = self._db.execute(
            "SELECT u.key_id, MAX(u.day) FROM key_usage u JOIN accounts a ON a.id = u.account_id "
            "WHERE a.name = ? GROUP BY u.key_id",
            (account,),
        ).fetchall()
        return {int(k): int(d) for k, d in rows}

    # one-time links ---------------------------------------------------------------------------

    def create_link(self, user_id: int, token_hash: bytes, expires_at: float) -> None:
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
                raise UserNotFound(f"no user with id {user_id}")
            db.execute("DELETE FROM password_links WHERE user_id = ? AND used_at IS NULL", (user_id,))
            db.execute(
                "INSERT INTO password_links (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
                (token_hash, user_id, expires_at),
            )

    def peek_link(self, token_hash: bytes, now: float) -> UserRow | None:
        row = self._db.execute(
            _USER_SELECT + " JOIN password_links l ON l.user_id = u.id "
            "WHERE l.token_hash = ? AND l.used_at IS NULL AND l.expires_at > ?",
            (token_hash, now),
        ).fetchone()
        return user_row(row) if row else None

    def redeem_link(self, token_hash: bytes, password_hash: str, now: float) -> UserRow | None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE password_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, token_hash, now),
            )
            if cur.rowcount == 0:
                return None
            user_id = int(db.execute("SELECT user_id FROM password_links WHERE token_hash = ?", (token_hash,))
                          .fetchone()[0])
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
            return user_row(db.execute(_USER_SELECT + " WHERE u.id = ?", (user_id,)).fetchone())

    # sessions ---------------------------------------------------------------------------------

    def create_session(self, id_hash: bytes, user_id: int, csrf_token: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, last_seen) VALUES (?, ?, ?, ?, ?)",
                (id_hash, user_id, csrf_token, now, now),
            )

    def get_session(self, id_hash: bytes) -> SessionRow | None:
        row = self._db.execute(
            "SELECT " + USER_COLS + ", s.id_hash, s.csrf_token, s.created_at, s.last_seen" + USER_FROM
            + " JOIN sessions s ON s.user_id = u.id WHERE s.id_hash = ?",
            (id_hash,),
        ).fetchone()
        if row is None:
            return None
        return SessionRow(bytes(row[7]), user_row(row), str(row[8]), float(row[9]), float(row[10]))

    def touch_session(self, id_hash: bytes, now: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, id_hash))

    def delete_session(self, id_hash: bytes) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def delete_sessions(self, user_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    def prune_sessions(self, created_before: float, seen_before: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM sessions WHERE created_at < ? OR last_seen < ?", (created_before, seen_before)
            )
            return int(cur.rowcount)

    # sign-in failures -------------------------------------------------------------------------

    def note_signin_failure(self, subjects: Sequence[str], now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM signin_failures WHERE at < ?", (now - FAILURE_MEMORY_SECONDS,))
            db.executemany("INSERT INTO signin_failures (subject, at) VALUES (?, ?)", [(s, now) for s in subjects])

    def signin_failures(self, subjects: Sequence[str], since: float) -> dict[str, int]:
        if not subjects:
            return {}
        marks = ", ".join("?" * len(subjects))
        rows = self._db.execute(
            f"SELECT subject, COUNT(*) FROM signin_failures WHERE subject IN ({marks}) AND at >= ? GROUP BY subject",
            (*subjects, since),
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def clear_signin_failures(self, subject: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM signin_failures WHERE subject = ?", (subject,))


class ThreadedConsole:
    """`SQLiteConsole`'s calls behind the async `Store` protocol, on `ThreadedSQLiteStore`'s thread."""

    sqlite: SQLiteConsole

    _thread: ThreadPoolExecutor  # given by `ThreadedSQLiteStore`, as `sqlite` is

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` on the store's own thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def create_user(self, email: str, role: str, account: str | None) -> UserRow:
        return await self._run(self.sqlite.create_user, email, role, account)

    async def get_user(self, user_id: int) -> UserRow | None:
        return await self._run(self.sqlite.get_user, user_id)

    async def user_by_email(self, email: str) -> tuple[UserRow, str | None] | None:
        return await self._run(self.sqlite.user_by_email, email)

    async def list_users(self, account: str | None = None) -> list[UserRow]:
        return await self._run(self.sqlite.list_users, account)

    async def key_usage(self, account: str, since_day: int = 0, key_id: int | None = None) -> list[KeyUsageRow]:
        return await self._run(self.sqlite.key_usage, account, since_day, key_id)

    async def keys_last_used(self, account: str) -> dict[int, int]:
        return await self._run(self.sqlite.keys_last_used, account)

    async def create_link(self, user_id: int, token_hash: bytes, expires_at: float) -> None:
        await self._run(self.sqlite.create_link, user_id, token_hash, expires_at)

    async def peek_link(self, token_hash: bytes, now: float) -> UserRow | None:
        return await self._run(self.sqlite.peek_link, token_hash, now)

    async def redeem_link(self, token_hash: bytes, password_hash: str, now: float) -> UserRow | None:
        return await self._run(self.sqlite.redeem_link, token_hash, password_hash, now)

    async def create_session(self, id_hash: bytes, user_id: int, csrf_token: str, now: float) -> None:
        await self._run(self.sqlite.create_session, id_hash, user_id, csrf_token, now)

    async def get_session(self, id_hash: bytes) -> SessionRow | None:
        return await self._run(self.sqlite.get_session, id_hash)

    async def touch_session(self, id_hash: bytes, now: float) -> None:
        await self._run(self.sqlite.touch_session, id_hash, now)

    async def delete_session(self, id_hash: bytes) -> None:
        await self._run(self.sqlite.delete_session, id_hash)

    async def delete_sessions(self, user_id: int) -> None:
        await self._run(self.sqlite.delete_sessions, user_id)

    async def prune_sessions(self, created_before: float, seen_before: float) -> int:
        return await self._run(self.sqlite.prune_sessions, created_before, seen_before)

    async def note_signin_failure(self, subjects: Sequence[str], now: float) -> None:
        await self._run(self.sqlite.note_signin_failure, list(subjects), now)

    async def signin_failures(self, subjects: Sequence[str], since: float) -> dict[str, int]:
        return await self._run(self.sqlite.signin_failures, list(subjects), since)

    async def clear_signin_failures(self, subject: str) -> None:
        await self._run(self.sqlite.clear_signin_failures, subject)
