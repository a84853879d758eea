"""The embedded SQLite store: hashed keys only, plan key limits, revocation, the change feed and usage upserts.

Each refusal is asserted as its `StoreError` subclass; that PostgreSQL raises the same subclass and
message for the same mistake is checked with both backends side by side in the PostgreSQL tests.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clexproxy.catalog import DEFAULT_PLANS
from clexproxy.store.base import (
    AccountExists,
    AccountNotFound,
    DataDirUnusable,
    KeyAlreadyRevoked,
    KeyLimitReached,
    KeyNotFound,
    UsageDelta,
)
from clexproxy.store.sqlite import SQLiteStore

LIMITS = {name: plan.max_keys for name, plan in DEFAULT_PLANS.items()}
KEY_RE = re.compile(r"clex_[A-Za-z0-9_-]{32,}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore.in_data_dir(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


def test_create_key_format_and_row(store: SQLiteStore) -> None:
    row, key = store.create_key("acme", "starter", LIMITS)
    assert KEY_RE.fullmatch(key), key
    assert row.key_hash == hashlib.sha256(key.encode()).digest()
    assert row.account == "acme" and row.active and row.revoked_at is None
    assert key not in row.hint and row.hint.startswith("clex_")
    account = store.get_account("acme")
    assert account is not None and account.plan == "starter" and account.id == row.account_id


def test_keys_are_unique(store: SQLiteStore) -> None:
    keys = {store.create_key("acme", "pro", LIMITS)[1] for _ in range(5)}
    assert len(keys) == 5


def test_plaintext_key_never_stored(store: SQLiteStore, tmp_path: Path) -> None:
    """Only the SHA-256 is stored: no file the store writes (db, WAL, shm) holds the key or its random body."""
    keys = [store.create_key("acme", "pro", LIMITS)[1] for _ in range(3)]
    store.create_account("other", "free")  # more writes after the keys, so the WAL holds several pages
    files = list((tmp_path / "data").iterdir())
    assert any(f.name.endswith(".sqlite3") for f in files)
    blob = b"".join(f.read_bytes() for f in files)
    for key in keys:
        assert key.encode() not in blob
        assert key[5:].encode() not in blob
        # The stored hint is short: no 20-character run of the key's body is on disk.
        assert key[5:25].encode() not in blob
    digest = hashlib.sha256(keys[0].encode()).digest()
    assert digest in blob


def test_key_limit_per_plan(store: SQLiteStore) -> None:
    store.create_key("solo", "free", LIMITS)
    with pytest.raises(KeyLimitReached, match=r"free plan allows 1") as info:
        store.create_key("solo", "free", LIMITS)
    assert "'solo'" in str(info.value)
    for _ in range(5):
        store.create_key("team", "starter", LIMITS)
    with pytest.raises(KeyLimitReached, match="allows 5"):
        store.create_key("team", "starter", LIMITS)
    assert len(store.list_keys("team")) == 5


def test_existing_account_keeps_its_plan(store: SQLiteStore) -> None:
    """The plan argument is only for a new account: it cannot lift an existing account's key limit."""
    store.create_key("solo", "free", LIMITS)
    with pytest.raises(KeyLimitReached):
        store.create_key("solo", "pro", LIMITS)
    account = store.get_account("solo")
    assert account is not None and account.plan == "free"


def test_revoked_key_frees_a_slot(store: SQLiteStore) -> None:
    row, _ = store.create_key("solo", "free", LIMITS)
    store.revoke_key(row.id)
    store.create_key("solo", "free", LIMITS)
    assert [k.active for k in store.list_keys("solo")] == [False, True]


def test_revoke(store: SQLiteStore) -> None:
    row, _ = store.create_key("acme", "pro", LIMITS)
    revoked = store.revoke_key(row.id)
    assert revoked.id == row.id and not revoked.active and revoked.revoked_at is not None
    with pytest.raises(KeyAlreadyRevoked, match="already revoked"):
        store.revoke_key(row.id)
    with pytest.raises(KeyNotFound, match="no key with id 999"):
        store.revoke_key(999)


def test_list_keys(store: SQLiteStore) -> None:
    a1, _ = store.create_key("a", "pro", LIMITS)
    b1, _ = store.create_key("b", "pro", LIMITS)
    a2, _ = store.create_key("a", "pro", LIMITS)
    store.revoke_key(a1.id)
    assert [k.id for k in store.list_keys()] == [a1.id, b1.id, a2.id]
    assert [k.id for k in store.list_keys("a")] == [a1.id, a2.id]
    assert [k.id for k in store.list_keys("a", include_revoked=False)] == [a2.id]
    assert store.list_keys("nobody") == []


def test_accounts_and_set_plan(store: SQLiteStore) -> None:
    created = store.create_account("acme", "free")
    with pytest.raises(AccountExists, match="already exists"):
        store.create_account("acme", "pro")
    changed = store.set_plan("acme", "pro")
    assert changed.id == created.id and changed.plan == "pro"
    with pytest.raises(AccountNotFound, match="no account named 'ghost'"):
        store.set_plan("ghost", "pro")
    assert [a.name for a in store.list_accounts()] == ["acme"]
    assert store.get_account("ghost") is None


def test_changes_since(store: SQLiteStore) -> None:
    accounts, keys, seq0 = store.changes_since(0)
    assert (accounts, keys, seq0) == ([], [], 0)
    row, _ = store.create_key("acme", "pro", LIMITS)  # an account and a key
    accounts, keys, seq1 = store.changes_since(seq0)
    assert [a.name for a in accounts] == ["acme"] and [k.id for k in keys] == [row.id]
    assert seq1 > seq0 and seq1 == store.current_seq()
    # Nothing new: nothing returned, the sequence stays.
    assert store.changes_since(seq1) == ([], [], seq1)
    store.set_plan("acme", "starter")
    accounts, keys, seq2 = store.changes_since(seq1)
    assert [(a.name, a.plan) for a in accounts] == [("acme", "starter")] and keys == []
    store.revoke_key(row.id)
    accounts, keys, seq3 = store.changes_since(seq2)
    assert accounts == [] and [(k.id, k.active) for k in keys] == [(row.id, False)]
    assert seq3 > seq2 > seq1
    # From the start, every row is there once, in its latest state.
    accounts, keys, _ = store.changes_since(0)
    assert [a.plan for a in accounts] == ["starter"] and [k.active for k in keys] == [False]


def test_data_version_moves_on_another_connections_commit(store: SQLiteStore) -> None:
    before = store.data_version()
    assert store.data_version() == before
    other = SQLiteStore(store.path)
    try:
        other.create_key("cli-user", "free", LIMITS)
        after = store.data_version()
        assert after != before
        accounts, keys, _ = store.changes_since(0)
        assert [a.name for a in accounts] == ["cli-user"] and len(keys) == 1
        assert store.data_version() == after  # reading changes nothing
    finally:
        other.close()


def test_add_usage_upserts(store: SQLiteStore) -> None:
    acme = store.create_account("acme", "pro")
    other = store.create_account("other", "pro")
    store.add_usage([UsageDelta(acme.id, 100, 3, 1, 10, 8)])
    store.add_usage([UsageDelta(acme.id, 100, 5, 1, 20, 4), UsageDelta(other.id, 100, 1, 1)])
    store.add_usage([UsageDelta(acme.id, 101, 2, 1, 1, 1)])
    store.add_usage([UsageDelta(acme.id, 100, -3, -1)])  # a refund after the write-behind
    store.add_usage([])
    assert store.credits_spent(100) == {acme.id: 5, other.id: 1}
    assert store.credits_spent(101) == {acme.id: 2}
    assert store.credits_spent(99) == {}
    assert store.usage("acme") == [
        UsageDelta(acme.id, 100, 5, 1, 30, 12),
        UsageDelta(acme.id, 101, 2, 1, 1, 1),
    ]
    assert store.usage("acme", since_day=101) == [UsageDelta(acme.id, 101, 2, 1, 1, 1)]
    assert store.usage("nobody") == []


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    first = SQLiteStore.in_data_dir(tmp_path)
    row, _ = first.create_key("acme", "pro", LIMITS)
    first.add_usage([UsageDelta(row.account_id, 7, 4, 2)])
    seq = first.current_seq()
    first.close()
    again = SQLiteStore.in_data_dir(tmp_path)
    try:
        assert again.current_seq() == seq
        assert [k.key_hash for k in again.list_keys()] == [row.key_hash]
        assert again.credits_spent(7) == {row.account_id: 4}
    finally:
        again.close()


def test_a_data_dir_that_is_a_file_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(DataDirUnusable, match=r"is not a directory: move that file away"):
        SQLiteStore.in_data_dir(tmp_path / "data")



def _open_store(path: str, start: float) -> str:
    """One process's open of a new store at `start` (wall clock), as a worker does at start."""
    while time.time() < start:
        time.sleep(0.001)
    try:
        SQLiteStore(path).close()
    except Exception as exc:  # the parent reports it
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_workers_opening_a_new_store_together_all_succeed(tmp_path: Path) -> None:
    """Workers started together open a new data dir at once: none may die of "database is locked".

    Switching a new database to WAL is answered SQLITE_BUSY at once, not through the busy timeout;
    before `SQLiteStore._wal` waited for it, a worker of `serve --workers N` could die at start.
    """
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        for attempt in range(8):
            path = str(tmp_path / f"race{attempt}" / "clexproxy.sqlite3")
            start = time.time() + 0.2
            failures = [f for f in pool.starmap(_open_store, [(path, start)] * 4) if f]
            assert not failures, failures
