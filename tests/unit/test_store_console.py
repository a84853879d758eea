"""The embedded store's schema 2: key limits, usage by key and model, and the console's users, links and sessions.

The same promises are checked on PostgreSQL in the integration tests (`test_store_postgres_console`);
here the SQLite file also has to migrate a schema-1 database in place, even when several processes
open it at once.
"""

from __future__ import annotations

import inspect
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clexproxy.catalog import DEFAULT_PLANS
from clexproxy.store.base import (
    AccountNotFound,
    KeyLimits,
    KeyUsageRow,
    Store,
    StoreError,
    UsageDelta,
    UserExists,
    UserNotFound,
)
from clexproxy.store.sqlite import SQLiteStore, ThreadedSQLiteStore

LIMITS = {name: plan.max_keys for name, plan in DEFAULT_PLANS.items()}

# The schema a clexproxy before the console's second half created (commit 8fda91f), as it is on disk.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('seq', 0), ('schema', 1);
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
    seq INTEGER NOT NULL
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
) WITHOUT ROWID;
"""


def schema_1_file(path: Path) -> None:
    """A schema-1 store with one account, one key and a usage row, as the old code left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_1)
    db.execute("INSERT INTO accounts (name, plan, created_at, seq) VALUES ('acme', 'pro', 1.0, 1)")
    db.execute(
        "INSERT INTO keys (account_id, key_hash, hint, created_at, seq) VALUES (1, ?, 'clex_abcd...wxyz', 2.0, 2)",
        (b"\x01" * 32,),
    )
    db.execute("UPDATE meta SET value = 2 WHERE name = 'seq'")
    db.execute("INSERT INTO usage (account_id, day, credits, calls) VALUES (1, 100, 7, 2)")
    db.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore.in_data_dir(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


def test_the_threaded_store_has_every_protocol_method() -> None:
    wanted = {n for n, v in vars(Store).items() if inspect.isfunction(v) and not n.startswith("_")}
    for name in wanted:
        method = getattr(ThreadedSQLiteStore, name, None)
        assert method is not None and inspect.iscoroutinefunction(method), name
        assert list(inspect.signature(method).parameters) == list(inspect.signature(getattr(Store, name)).parameters)
        assert callable(getattr(SQLiteStore, name, None)) or name == "change_marker", name


# keys: the limits a creator sets ------------------------------------------------------------------


def test_create_key_stores_its_limits_and_every_read_fills_them(store: SQLiteStore) -> None:
    limits = KeyLimits(name="ci bot", expires_at=2e9, daily_cap=500, models=("gpt-4o-mini", "claude-haiku"))
    row, _ = store.create_key("acme", "pro", LIMITS, limits)
    plain, _ = store.create_key("acme", "pro", LIMITS)
    expected = (limits.name, limits.expires_at, limits.daily_cap, limits.models)
    assert (row.name, row.expires_at, row.daily_cap, row.models) == expected
    assert (plain.name, plain.expires_at, plain.daily_cap, plain.models) == ("", None, None, None)
    assert store.list_keys("acme") == [row, plain]
    _, keys, _ = store.changes_since(0)
    assert keys == [row, plain]
    revoked = store.revoke_key(row.id)
    assert (revoked.name, revoked.expires_at, revoked.daily_cap, revoked.models) == expected
    assert revoked.revoked_at is not None
    empty, _ = store.create_key("acme", "pro", LIMITS, KeyLimits(models=()))
    assert store.list_keys("acme")[-1].models == () == empty.models  # none allowed is not every model


# the schema-1 migration -----------------------------------------------------------------------------


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "data" / "clexproxy.sqlite3"
    schema_1_file(path)
    store = SQLiteStore(path)
    try:
        assert store._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0] == 2
        [old] = store.list_keys()
        assert (old.id, old.account, old.key_hash, old.hint) == (1, "acme", b"\x01" * 32, "clex_abcd...wxyz")
        assert (old.name, old.expires_at, old.daily_cap, old.models) == ("", None, None, None)
        assert store.current_seq() == 2 and store.credits_spent(100) == {1: 7}
        new, _ = store.create_key("acme", "pro", LIMITS, KeyLimits(name="new", daily_cap=3))
        store.add_usage([(1, 101, 1, 1, 0, 0)], [KeyUsageRow(1, new.id, "m", 101, 1, 1, 0, 0)])
        user = store.create_user("a@b.c", "owner", "acme")
    finally:
        store.close()
    again = SQLiteStore(path)  # a second open finds schema 2 and changes nothing
    try:
        assert [k.name for k in again.list_keys()] == ["", "new"]
        assert again.key_usage("acme") == [KeyUsageRow(1, new.id, "m", 101, 1, 1, 0, 0)]
        assert again.get_user(user.id) == user
    finally:
        again.close()


def _open(path: str, start: float) -> str:
    while time.time() < start:
        time.sleep(0.001)
    try:
        SQLiteStore(path).close()
    except Exception as exc:  # the parent reports it
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_processes_opening_a_schema_1_file_together_migrate_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        for attempt in range(4):
            path = tmp_path / f"race{attempt}" / "clexproxy.sqlite3"
            schema_1_file(path)
            start = time.time() + 0.2
            failures = [f for f in pool.starmap(_open, [(str(path), start)] * 4) if f]
            assert not failures, failures
            store = SQLiteStore(path)
            try:
                assert [k.name for k in store.list_keys()] == [""]
            finally:
                store.close()


# usage by key and model -----------------------------------------------------------------------------


def test_usage_detail_upserts_beside_the_account_rows(store: SQLiteStore) -> None:
    acme, other = store.create_account("acme", "pro"), store.create_account("other", "pro")
    store.add_usage(
        [UsageDelta(acme.id, 100, 5, 2)],
        [KeyUsageRow(acme.id, 7, "gpt", 100, 3, 1, 10, 5), KeyUsageRow(acme.id, 0, "gpt", 100, 2, 1)],
    )
    store.add_usage(
        [(acme.id, 100, 4, 1, 0, 0), (acme.id, 101, 1, 1, 0, 0), (other.id, 100, 9, 1, 0, 0)],
        [
            KeyUsageRow(acme.id, 7, "gpt", 100, 4, 1, 1, 1),
            (acme.id, 7, "claude", 101, 1, 1, 0, 0),  # type: ignore[list-item]  # a plain tuple is one too
            KeyUsageRow(other.id, 8, "gpt", 100, 9, 1, 0, 0),
        ],
    )
    store.add_usage([], [])
    assert store.credits_spent(100) == {acme.id: 9, other.id: 9}
    assert store.key_usage("acme") == [
        KeyUsageRow(acme.id, 0, "gpt", 100, 2, 1, 0, 0),
        KeyUsageRow(acme.id, 7, "gpt", 100, 7, 2, 11, 6),
        KeyUsageRow(acme.id, 7, "claude", 101, 1, 1, 0, 0),
    ]
    assert store.key_usage("acme", since_day=101) == [KeyUsageRow(acme.id, 7, "claude", 101, 1, 1, 0, 0)]
    assert store.key_usage("acme", key_id=0) == [KeyUsageRow(acme.id, 0, "gpt", 100, 2, 1, 0, 0)]
    assert store.key_usage("nobody") == []
    assert store.keys_last_used("acme") == {0: 100, 7: 101}
    assert store.keys_last_used("nobody") == {}
    assert store.key_credits_spent(100) == {0: 2, 7: 7, 8: 9}
    assert store.key_credits_spent(99) == {}


def test_usage_detail_and_account_rows_commit_together_or_not_at_all(store: SQLiteStore) -> None:
    acme = store.create_account("acme", "pro")
    bad_detail = (acme.id, 7, None, 100, 1, 1, 0, 0)  # model NOT NULL: the second statement fails
    with pytest.raises(sqlite3.IntegrityError):
        store.add_usage([(acme.id, 100, 1, 1, 0, 0)], [bad_detail])  # type: ignore[list-item]
    assert store.credits_spent(100) == {} and store.key_usage("acme") == []
    store.add_usage([(acme.id, 100, 1, 1, 0, 0)], [KeyUsageRow(acme.id, 7, "gpt", 100, 1, 1, 0, 0)])
    assert store.credits_spent(100) == {acme.id: 1} and len(store.key_usage("acme")) == 1


# users ------------------------------------------------------------------------------------------------


def test_users_roles_accounts_and_emails(store: SQLiteStore) -> None:
    acme = store.create_account("acme", "pro")
    store.create_account("other", "pro")
    owner = store.create_user("  Ann@Example.COM ", "owner", "acme")
    assert (owner.email, owner.role, owner.account_id, owner.account, owner.password_set) == (
        "ann@example.com", "owner", acme.id, "acme", False,
    )
    member = store.create_user("bob@example.com", "member", "acme")
    op = store.create_user("ops@example.com", "operator", None)
    assert (op.account_id, op.account) == (None, None)
    other = store.create_user("cy@example.com", "member", "other")
    with pytest.raises(UserExists, match=r"ann@example\.com"):
        store.create_user("ANN@example.com", "member", "other")
    with pytest.raises(AccountNotFound, match="nobody"):
        store.create_user("d@example.com", "owner", "nobody")
    with pytest.raises(StoreError, match="role"):
        store.create_user("d@example.com", "admin", "acme")
    with pytest.raises(StoreError, match="needs an account"):
        store.create_user("d@example.com", "member", None)
    with pytest.raises(StoreError, match="operator belongs to no account"):
        store.create_user("d@example.com", "operator", "acme")
    assert store.get_user(owner.id) == owner and store.get_user(9999) is None
    assert store.user_by_email("ANN@example.com") == (owner, None)
    assert store.user_by_email("nobody@example.com") is None
    assert store.list_users() == [owner, member, op, other]
    assert store.list_users("acme") == [owner, member]
    assert store.list_users("nobody") == []


# one-time links ----------------------------------------------------------------------------------------


def test_a_link_sets_the_password_once_and_ends_the_sessions(store: SQLiteStore) -> None:
    store.create_account("acme", "pro")
    user = store.create_user("ann@example.com", "owner", "acme")
    store.create_session(b"s1", user.id, "csrf1", 10.0)
    store.create_link(user.id, b"t1", expires_at=100.0)
    peeked = store.peek_link(b"t1", now=50.0)
    assert peeked == user and store.peek_link(b"t1", now=50.0) == user  # peeking uses nothing
    assert store.peek_link(b"unknown", now=50.0) is None
    redeemed = store.redeem_link(b"t1", "argon2-hash", now=50.0)
    assert redeemed is not None and redeemed.password_set and redeemed.id == user.id
    assert store.user_by_email("ann@example.com") == (redeemed, "argon2-hash")
    assert store.get_session(b"s1") is None  # every session of that user ended
    assert store.redeem_link(b"t1", "again", now=51.0) is None  # once only
    assert store.peek_link(b"t1", now=51.0) is None
    assert store.user_by_email("ann@example.com") == (redeemed, "argon2-hash")


def test_expired_and_superseded_links_do_nothing(store: SQLiteStore) -> None:
    store.create_account("acme", "pro")
    user = store.create_user("ann@example.com", "owner", "acme")
    store.create_link(user.id, b"old", expires_at=100.0)
    store.create_session(b"s1", user.id, "csrf1", 10.0)
    assert store.redeem_link(b"old", "h", now=100.0) is None  # expired at 100
    assert store.peek_link(b"old", now=100.0) is None
    store.create_link(user.id, b"first", expires_at=1000.0)
    store.create_link(user.id, b"second", expires_at=1000.0)
    assert store.peek_link(b"first", now=200.0) is None  # superseded
    assert store.redeem_link(b"first", "h", now=200.0) is None
    assert store.get_session(b"s1") is not None and store.user_by_email("ann@example.com") == (user, None)
    assert store.redeem_link(b"second", "h", now=200.0) is not None
    with pytest.raises(UserNotFound):
        store.create_link(9999, b"x", expires_at=1000.0)


# sessions ---------------------------------------------------------------------------------------------


def test_sessions(store: SQLiteStore) -> None:
    store.create_account("acme", "pro")
    ann = store.create_user("ann@example.com", "owner", "acme")
    ops = store.create_user("ops@example.com", "operator", None)
    store.create_session(b"a1", ann.id, "csrf-a1", 100.0)
    store.create_session(b"a2", ann.id, "csrf-a2", 100.0)
    store.create_session(b"o1", ops.id, "csrf-o1", 100.0)
    session = store.get_session(b"a1")
    assert session is not None
    assert (session.id_hash, session.user, session.csrf_token, session.created_at, session.last_seen) == (
        b"a1", ann, "csrf-a1", 100.0, 100.0,
    )
    store.touch_session(b"a1", 150.0)
    touched = store.get_session(b"a1")
    assert touched is not None and (touched.created_at, touched.last_seen) == (100.0, 150.0)
    store.delete_session(b"a2")
    assert store.get_session(b"a2") is None and store.get_session(b"missing") is None
    store.create_session(b"o2", ops.id, "csrf-o2", 200.0)
    # absolute expiry takes sessions made before 120 (a1, o1), idle expiry those not seen since 120 (o1)
    assert store.prune_sessions(created_before=120.0, seen_before=120.0) == 2
    assert [s is not None for s in (store.get_session(b"a1"), store.get_session(b"o1"), store.get_session(b"o2"))] == [
        False, False, True,
    ]
    store.create_session(b"o3", ops.id, "csrf-o3", 200.0)
    store.delete_sessions(ops.id)
    assert store.get_session(b"o2") is None and store.get_session(b"o3") is None
    assert store.prune_sessions(0.0, 0.0) == 0


# sign-in failures -------------------------------------------------------------------------------------------


def test_signin_failures_count_clear_and_prune(store: SQLiteStore) -> None:
    subjects = ["email:a@b.c", "addr:10.0.0.1"]
    store.note_signin_failure(subjects, 1000.0)
    store.note_signin_failure(subjects, 1010.0)
    store.note_signin_failure(["addr:10.0.0.1"], 1020.0)
    assert store.signin_failures(subjects, since=0.0) == {"email:a@b.c": 2, "addr:10.0.0.1": 3}
    assert store.signin_failures(subjects, since=1010.0) == {"email:a@b.c": 1, "addr:10.0.0.1": 2}
    assert store.signin_failures(["email:other"], since=0.0) == {} and store.signin_failures([], 0.0) == {}
    store.clear_signin_failures("email:a@b.c")
    assert store.signin_failures(subjects, since=0.0) == {"addr:10.0.0.1": 3}
    store.note_signin_failure(["email:x"], 1000.0 + 86_400.0 + 15.0)  # prunes what is more than a day old
    count = store._db.execute("SELECT COUNT(*) FROM signin_failures").fetchone()[0]
    assert count == 2  # addr at 1020 and email:x; 1000 and 1010 pruned
    assert store.signin_failures(["addr:10.0.0.1"], since=0.0) == {"addr:10.0.0.1": 1}


# the async face ---------------------------------------------------------------------------------------------


async def test_the_threaded_store_runs_the_console_calls(tmp_path: Path) -> None:
    store = ThreadedSQLiteStore(SQLiteStore.in_data_dir(tmp_path))
    try:
        await store.create_account("acme", "pro")
        user = await store.create_user("ann@example.com", "owner", "acme")
        key, _ = await store.create_key("acme", "pro", LIMITS, KeyLimits(name="k", daily_cap=5))
        assert (await store.list_keys("acme"))[0].daily_cap == 5
        detail = [KeyUsageRow(key.account_id, key.id, "m", 100, 1, 1, 0, 0)]
        await store.add_usage([(key.account_id, 100, 1, 1, 0, 0)], detail)
        assert await store.keys_last_used("acme") == {key.id: 100}
        assert await store.key_credits_spent(100) == {key.id: 1}
        assert len(await store.key_usage("acme", 0, key.id)) == 1
        await store.create_link(user.id, b"t", 10.0)
        assert await store.peek_link(b"t", 5.0) == user
        assert (await store.redeem_link(b"t", "h", 5.0)) is not None
        await store.create_session(b"s", user.id, "c", 5.0)
        assert (await store.get_session(b"s")) is not None
        await store.note_signin_failure(("email:ann@example.com",), 5.0)
        assert await store.signin_failures(("email:ann@example.com",), 0.0) == {"email:ann@example.com": 1}
    finally:
        await store.close()


# the write-behind's cost -----------------------------------------------------------------------------------


def test_the_usage_flush_benchmark_runs() -> None:
    """benchmarks/usage_flush.py, run as people run it (tiny): its figures are the issue's measurement."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "usage_flush.py"), "--flushes", "2", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    figures = json.loads(out.stdout)
    assert set(figures["us_per_flush"]) == {
        "accounts only", "accounts + detail (KeyUsageRow)", "accounts + detail (plain tuples)",
    }
    assert all(v > 0 for v in figures["us_per_request"].values())
