"""The embedded store: one SQLite file under the data dir, shared by the server and the CLI.

The server never touches it on the request path: it loads everything at start, then a
background task applies what changed (`changes_since`, driven by a sequence number every
mutation bumps) and writes usage behind. WAL mode lets the CLI write while the server reads.
`SQLiteStore` is synchronous; `ThreadedSQLiteStore` runs it on a thread of its own behind the
async `Store` protocol, off the event loop. The console's tables (users, links, sessions) are
`SQLiteConsole`'s, which both inherit through their mixins.

Schema 2 added the keys' limits (name, expiry, daily cap, models) and usage by key and model; a
schema-1 file is migrated in place at open, inside the same BEGIN IMMEDIATE as the schema script,
so workers opening it together migrate it once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from clexproxy.fastpath.keys import hash_key
from clexproxy.store.base import (
    AccountExists,
    AccountNotFound,
    AccountRow,
    DataDirUnusable,
    KeyAlreadyRevoked,
    KeyLimitReached,
    KeyLimits,
    KeyNotFound,
    KeyRow,
    KeyUsageRow,
    UsageDelta,
    UsageRow,
    key_hint,
    new_key,
)
from clexproxy.store.datadir import DATA_DIR_FIX, usable_data_dir
from clexproxy.store.sqlite_console import CONSOLE_SCHEMA, SQLiteConsole, ThreadedConsole

T = TypeVar("T")

# How long opening the store waits for another process switching a new database to WAL (`SQLiteStore._wal`).
OPEN_BUSY_SECONDS = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('seq', 0), ('schema', 2);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_hash BLOB NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    expires_at REAL,
    daily_cap INTEGER,
    models TEXT
);
CREATE INDEX IF NOT EXISTS keys_seq ON keys(seq);
CREATE INDEX IF NOT EXISTS accounts_seq ON accounts(seq);
CREATE TABLE IF NOT EXISTS usage (
    account_id INTEGER NOT NULL,
    day INTEGER NOT NULL,
    credits INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
-- WITHOUT ROWID: one B-tree, not a rowid table plus the key's index (the write-behind upserts a row per
-- active account every flush)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_usage (
    account_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    day INTEGER NOT NULL,
    credits INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, key_id, model)
) WITHOUT ROWID;
""" + CONSOLE_SCHEMA

# The columns schema 2 added to `keys`, as a schema-1 file gets them (SQLite has no ADD COLUMN IF NOT EXISTS).
KEY_COLUMNS_2 = ("name TEXT NOT NULL DEFAULT ''", "expires_at REAL", "daily_cap INTEGER", "models TEXT")
SCHEMA_VERSION = 2
NO_LIMITS = KeyLimits()

_KEY_SELECT = (
    "SELECT k.id, k.account_id, a.name, k.key_hash, k.hint, k.created_at, k.revoked_at, "
    "k.name, k.expires_at, k.daily_cap, k.models FROM keys k JOIN accounts a ON a.id = k.account_id"
)
_ADD = (
    " DO UPDATE SET credits = credits + excluded.credits, calls = calls + excluded.calls, prompt_tokens = "
    "prompt_tokens + excluded.prompt_tokens, completion_tokens = completion_tokens + excluded.completion_tokens"
)
_USAGE_UPSERT = (
    "INSERT INTO usage (account_id, day, credits, calls, prompt_tokens, completion_tokens) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, day)" + _ADD
)
_KEY_USAGE_UPSERT = (
    "INSERT INTO key_usage (account_id, key_id, model, day, credits, calls, prompt_tokens, completion_tokens) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, day, key_id, model)" + _ADD
)


def key_row(r: Sequence[Any]) -> KeyRow:
    """A `KeyRow` from `_KEY_SELECT`'s columns; `models` is stored as a JSON array (NULL: every model)."""
    models = None if r[10] is None else tuple(json.loads(r[10]))
    return KeyRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], models)


def models_json(models: Sequence[str] | None) -> str | None:
    return None if models is None else json.dumps(list(models))


class SQLiteStore(SQLiteConsole):
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        usable_data_dir(path.parent)
        self.path = path
        try:
            # check_same_thread=False: the server drives it from one worker thread at a time.
            self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DataDirUnusable(
                f"cannot open the key store {path} ({exc}): make it writable for this user {DATA_DIR_FIX}"
            ) from None
        try:
            self._wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._schema()
        except sqlite3.DatabaseError as exc:  # read-only, or not a database; a busy one is not the data dir's fault
            self._db.close()
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise
            raise DataDirUnusable(
                f"cannot use the key store {path} ({exc}): make it writable for this user {DATA_DIR_FIX}"
            ) from None

    def _wal(self) -> None:
        """Switch a new database to WAL, waiting while another process does the same.

        Workers started together open a new data dir at once. Changing the journal mode needs the
        database to itself, and SQLite answers that pragma SQLITE_BUSY at once instead of through the
        busy timeout, so a worker could die at start ("database is locked") and be replaced.
        """
        deadline = time.monotonic() + OPEN_BUSY_SECONDS
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _schema(self) -> None:
        """Create the tables, or migrate a schema-1 file, in one BEGIN IMMEDIATE: one process at a time does it."""
        self._db.executescript("BEGIN IMMEDIATE;" + SCHEMA)  # the script leaves the transaction open
        try:
            have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(keys)").fetchall()}
            for column in KEY_COLUMNS_2:
                if column.split()[0] not in have:
                    self._db.execute(f"ALTER TABLE keys ADD COLUMN {column}")
            self._db.execute(
                "UPDATE meta SET value = ? WHERE name = 'schema' AND value < ?", (SCHEMA_VERSION, SCHEMA_VERSION)
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> SQLiteStore:
        return cls(Path(data_dir) / "clexproxy.sqlite3")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _next_seq(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE name = 'seq'")
        return int(db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()[0])

    def data_version(self) -> int:
        """Changes when another connection (the CLI, another process) commits: a cheap 'anything new?'."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # accounts ---------------------------------------------------------------------------------

    def create_account(self, name: str, plan: str) -> AccountRow:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                raise AccountExists(f"account {name!r} already exists")
            now = time.time()
            cur = db.execute(
                "INSERT INTO accounts (name, plan, created_at, seq) VALUES (?, ?, ?, ?)",
                (name, plan, now, self._next_seq(db)),
            )
            return AccountRow(int(cur.lastrowid or 0), name, plan, now)

    def get_account(self, name: str) -> AccountRow | None:
        row = self._db.execute("SELECT id, name, plan, created_at FROM accounts WHERE name = ?", (name,)).fetchone()
        return AccountRow(*row) if row else None

    def list_accounts(self) -> list[AccountRow]:
        rows = self._db.execute("SELECT id, name, plan, created_at FROM accounts ORDER BY id").fetchall()
        return [AccountRow(*r) for r in rows]

    def set_plan(self, name: str, plan: str) -> AccountRow:
        with self._tx() as db:
            cur = db.execute("UPDATE accounts SET plan = ?, seq = ? WHERE name = ?", (plan, self._next_seq(db), name))
            if cur.rowcount == 0:
                raise AccountNotFound(f"no account named {name!r}")
        account = self.get_account(name)
        assert account is not None
        return account

    # keys -------------------------------------------------------------------------------------

    def create_key(self, account: str, plan: str, max_keys_by_plan: dict[str, int],
                   limits: KeyLimits = NO_LIMITS) -> tuple[KeyRow, str]:
        """A new key for `account` (made on `plan` when new) with `limits`; returns the row and the key (shown once)."""
        key = new_key()
        with self._tx() as db:
            row = db.execute("SELECT id, plan FROM accounts WHERE name = ?", (account,)).fetchone()
            now = time.time()
            if row is None:
                cur = db.execute(
                    "INSERT INTO accounts (name, plan, created_at, seq) VALUES (?, ?, ?, ?)",
                    (account, plan, now, self._next_seq(db)),
                )
                account_id, account_plan = int(cur.lastrowid or 0), plan
            else:
                account_id, account_plan = int(row[0]), str(row[1])
            active = db.execute(
                "SELECT COUNT(*) FROM keys WHERE account_id = ? AND revoked_at IS NULL", (account_id,)
            ).fetchone()[0]
            limit = max_keys_by_plan.get(account_plan, 0)
            if active >= limit:
                raise KeyLimitReached(
                    f"account {account!r} already has {active} active key(s); the {account_plan} plan allows {limit}"
                )
            digest, hint = hash_key(key), key_hint(key)
            cur = db.execute(
                "INSERT INTO keys (account_id, key_hash, hint, created_at, seq, name, expires_at, daily_cap, models) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (account_id, digest, hint, now, self._next_seq(db), limits.name, limits.expires_at,
                 limits.daily_cap, models_json(limits.models)),
            )
            models = None if limits.models is None else tuple(limits.models)
            row = KeyRow(int(cur.lastrowid or 0), account_id, account, digest, hint, now, None,
                         limits.name, limits.expires_at, limits.daily_cap, models)
            return row, key

    def list_keys(self, account: str | None = None, include_revoked: bool = True) -> list[KeyRow]:
        sql = _KEY_SELECT + " WHERE 1=1"
        args: list[object] = []
        if account is not None:
            sql += " AND a.name = ?"
            args.append(account)
        if not include_revoked:
            sql += " AND k.revoked_at IS NULL"
        return [key_row(r) for r in self._db.execute(sql + " ORDER BY k.id", args).fetchall()]

    def revoke_key(self, key_id: int) -> KeyRow:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE keys SET revoked_at = ?, seq = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), self._next_seq(db), key_id),
            )
            if cur.rowcount == 0:
                exists = db.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone()
                if exists:
                    raise KeyAlreadyRevoked(f"key {key_id} is already revoked")
                raise KeyNotFound(f"no key with id {key_id}")
        return key_row(self._db.execute(_KEY_SELECT + " WHERE k.id = ?", (key_id,)).fetchone())

    # change feed ------------------------------------------------------------------------------

    def current_seq(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()[0])

    def changes_since(self, seq: int) -> tuple[list[AccountRow], list[KeyRow], int]:
        """Accounts and keys written after `seq`, and the sequence number they bring us to."""
        self._db.execute("BEGIN")
        try:
            top = self.current_seq()
            accounts = [
                AccountRow(*r)
                for r in self._db.execute(
                    "SELECT id, name, plan, created_at FROM accounts WHERE seq > ? AND seq <= ?", (seq, top)
                ).fetchall()
            ]
            keys = [
                key_row(r)
                for r in self._db.execute(_KEY_SELECT + " WHERE k.seq > ? AND k.seq <= ?", (seq, top)).fetchall()
            ]
        finally:
            self._db.execute("COMMIT")
        return accounts, keys, top

    # usage ------------------------------------------------------------------------------------

    def add_usage(self, deltas: Iterable[UsageRow], detail: Iterable[KeyUsageRow] = ()) -> None:
        """The account rows and the key x model rows in one transaction: both or neither."""
        # Plain tuples go to sqlite3 as they are; it binds a tuple subclass (UsageDelta, KeyUsageRow)
        # item by item through Python-level indexing, several times slower.
        rows = [d if type(d) is tuple else tuple(d) for d in deltas]
        detail_rows = [d if type(d) is tuple else tuple(d) for d in detail]
        if not rows and not detail_rows:
            return
        with self._tx() as db:
            if rows:
                db.executemany(_USAGE_UPSERT, rows)
            if detail_rows:
                db.executemany(_KEY_USAGE_UPSERT, detail_rows)

    def credits_spent(self, day: int) -> dict[int, int]:
        rows = self._db.execute("SELECT account_id, credits FROM usage WHERE day = ?", (day,)).fetchall()
        return {int(a): int(c) for a, c in rows}

    def usage(self, account: str, since_day: int = 0) -> list[UsageDelta]:
        rows = self._db.execute(
            "SELECT u.account_id, u.day, u.credits, u.calls, u.prompt_tokens, u.completion_tokens "
            "FROM usage u JOIN accounts a ON a.id = u.account_id WHERE a.name = ? AND u.day >= ? ORDER BY u.day",
            (account, since_day),
        ).fetchall()
        return [UsageDelta(*r) for r in rows]

    def key_credits_spent(self, day: int) -> dict[int, int]:
        rows = self._db.execute(
            "SELECT key_id, SUM(credits) FROM key_usage WHERE day = ? GROUP BY key_id", (day,)
        ).fetchall()
        return {int(k): int(c) for k, c in rows}


class ThreadedSQLiteStore(ThreadedConsole):
    """`SQLiteStore` behind the async `Store` protocol: one thread owns the connection, off the event loop."""

    sqlite: SQLiteStore

    def __init__(self, store: SQLiteStore) -> None:
        self.sqlite = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clexproxy-store")


    async def close(self) -> None:
        await self._run(self.sqlite.close)
        self._thread.shutdown(wait=True)

    async def change_marker(self) -> int:
        # PRAGMA data_version moves only for other connections' commits; the gateway forces a
        # look after its own writes.
        return await self._run(self.sqlite.data_version)

    async def changes_since(self, seq: int) -> tuple[list[AccountRow], list[KeyRow], int]:
        return await self._run(self.sqlite.changes_since, seq)

    async def credits_spent(self, day: int) -> dict[int, int]:
        return await self._run(self.sqlite.credits_spent, day)

    async def key_credits_spent(self, day: int) -> dict[int, int]:
        return await self._run(self.sqlite.key_credits_spent, day)

    async def add_usage(self, deltas: Iterable[UsageRow], detail: Iterable[KeyUsageRow] = ()) -> None:
        await self._run(self.sqlite.add_usage, deltas, detail)

    async def create_account(self, name: str, plan: str) -> AccountRow:
        return await self._run(self.sqlite.create_account, name, plan)

    async def get_account(self, name: str) -> AccountRow | None:
        return await self._run(self.sqlite.get_account, name)

    async def list_accounts(self) -> list[AccountRow]:
        return await self._run(self.sqlite.list_accounts)

    async def set_plan(self, name: str, plan: str) -> AccountRow:
        return await self._run(self.sqlite.set_plan, name, plan)

    async def create_key(self, account: str, plan: str, max_keys_by_plan: dict[str, int],
                         limits: KeyLimits = NO_LIMITS) -> tuple[KeyRow, str]:
        return await self._run(self.sqlite.create_key, account, plan, max_keys_by_plan, limits)

    async def list_keys(self, account: str | None = None, include_revoked: bool = True) -> list[KeyRow]:
        return await self._run(self.sqlite.list_keys, account, include_revoked)

    async def revoke_key(self, key_id: int) -> KeyRow:
        return await self._run(self.sqlite.revoke_key, key_id)

    async def usage(self, account: str, since_day: int = 0) -> list[UsageDelta]:
        return await self._run(self.sqlite.usage, account, since_day)
