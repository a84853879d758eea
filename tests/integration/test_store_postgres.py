"""The PostgreSQL store on a real server: everything the SQLite store promises, then what several hosts add.

One server for the session (`postgres_server`), a fresh database per test. A "host" is a
`PostgresStore` with its own pool; the multi-host tests run two or three against one database
and check the totals (keys per plan, usage sums, the change feed), never the timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clexproxy.catalog import DEFAULT_PLANS
from clexproxy.store import open_store
from clexproxy.store.base import (
    AccountExists,
    AccountNotFound,
    AccountRow,
    KeyAlreadyRevoked,
    KeyLimitReached,
    KeyNotFound,
    KeyRow,
    Store,
    StoreError,
    UsageDelta,
)
from clexproxy.store.postgres import PostgresStore
from tests.pg_server import PgServer, PostgresNotInstalled

LIMITS = {name: plan.max_keys for name, plan in DEFAULT_PLANS.items()}
KEY_RE = re.compile(r"clex_[A-Za-z0-9_-]{32,}")

StoreFactory = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def make_store(dsn: str) -> AsyncIterator[StoreFactory]:
    opened: list[PostgresStore] = []

    async def factory(max_size: int = 5) -> PostgresStore:
        store = await PostgresStore.connect(dsn, min_size=1, max_size=max_size)
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> PostgresStore:
    return await make_store()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `check` holds; bounded (about 20 s), so a broken lock fails the test instead of hanging it."""
    for _ in range(2000):
        if await check():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never happened: {what}")


# What the SQLite store does (its own tests), on PostgreSQL ---------------------------------------------


async def test_create_key_format_and_row(store: PostgresStore) -> None:
    row, key = await store.create_key("acme", "starter", LIMITS)
    assert KEY_RE.fullmatch(key), key
    assert row.key_hash == hashlib.sha256(key.encode()).digest()
    assert row.account == "acme" and row.active and row.revoked_at is None
    assert key not in row.hint and row.hint.startswith("clex_")
    account = await store.get_account("acme")
    assert account is not None and account.plan == "starter" and account.id == row.account_id
    assert await store.list_keys("acme") == [row]


async def test_keys_are_unique(store: PostgresStore) -> None:
    keys = {(await store.create_key("acme", "pro", LIMITS))[1] for _ in range(5)}
    assert len(keys) == 5


async def test_plaintext_key_never_stored(store: PostgresStore, pg: PgServer, dsn: str) -> None:
    """Only the SHA-256 is stored: no file the server writes (tables, indexes, WAL) holds the key or its body."""
    keys = [(await store.create_key("acme", "pro", LIMITS))[1] for _ in range(3)]
    await store.create_account("other", "free")
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CHECKPOINT")  # shared buffers to the data files, so the bytes are on disk
        oid = await admin.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    finally:
        await admin.close()
    files = [f for d in (pg.datadir / "base" / str(oid), pg.datadir / "pg_wal") for f in d.rglob("*") if f.is_file()]
    blob = b"".join(f.read_bytes() for f in files)
    for key in keys:
        assert key.encode() not in blob
        assert key[5:].encode() not in blob
        assert key[5:25].encode() not in blob
    assert hashlib.sha256(keys[0].encode()).digest() in blob  # the search does see what is stored


async def test_key_limit_per_plan(store: PostgresStore) -> None:
    await store.create_key("solo", "free", LIMITS)
    with pytest.raises(KeyLimitReached, match=r"free plan allows 1") as info:
        await store.create_key("solo", "free", LIMITS)
    assert "'solo'" in str(info.value)
    for _ in range(5):
        await store.create_key("team", "starter", LIMITS)
    with pytest.raises(KeyLimitReached, match="allows 5"):
        await store.create_key("team", "starter", LIMITS)
    assert len(await store.list_keys("team")) == 5


async def test_unknown_plan_allows_no_key_and_creates_no_account(store: PostgresStore) -> None:
    with pytest.raises(KeyLimitReached, match="the gold plan allows 0"):
        await store.create_key("ghost", "gold", LIMITS)
    assert await store.get_account("ghost") is None  # the failed call's account insert was rolled back


async def test_existing_account_keeps_its_plan(store: PostgresStore) -> None:
    """The plan argument is only for a new account: it cannot lift an existing account's key limit."""
    await store.create_key("solo", "free", LIMITS)
    with pytest.raises(KeyLimitReached):
        await store.create_key("solo", "pro", LIMITS)
    account = await store.get_account("solo")
    assert account is not None and account.plan == "free"


async def test_revoked_key_frees_a_slot(store: PostgresStore) -> None:
    row, _ = await store.create_key("solo", "free", LIMITS)
    await store.revoke_key(row.id)
    await store.create_key("solo", "free", LIMITS)
    assert [k.active for k in await store.list_keys("solo")] == [False, True]


async def test_revoke(store: PostgresStore) -> None:
    row, _ = await store.create_key("acme", "pro", LIMITS)
    revoked = await store.revoke_key(row.id)
    assert revoked.id == row.id and not revoked.active and revoked.revoked_at is not None
    assert revoked.account == "acme" and revoked.key_hash == row.key_hash
    with pytest.raises(KeyAlreadyRevoked, match="already revoked"):
        await store.revoke_key(row.id)
    with pytest.raises(KeyNotFound, match="no key with id 999"):
        await store.revoke_key(999)


async def test_list_keys(store: PostgresStore) -> None:
    a1, _ = await store.create_key("a", "pro", LIMITS)
    b1, _ = await store.create_key("b", "pro", LIMITS)
    a2, _ = await store.create_key("a", "pro", LIMITS)
    await store.revoke_key(a1.id)
    assert [k.id for k in await store.list_keys()] == [a1.id, b1.id, a2.id]
    assert [k.id for k in await store.list_keys("a")] == [a1.id, a2.id]
    assert [k.id for k in await store.list_keys("a", include_revoked=False)] == [a2.id]
    assert [k.id for k in await store.list_keys(include_revoked=False)] == [b1.id, a2.id]
    assert await store.list_keys("nobody") == []


async def test_accounts_and_set_plan(store: PostgresStore) -> None:
    created = await store.create_account("acme", "free")
    with pytest.raises(AccountExists, match="account 'acme' already exists"):
        await store.create_account("acme", "pro")
    changed = await store.set_plan("acme", "pro")
    assert changed.id == created.id and changed.plan == "pro" and changed.created_at == created.created_at
    with pytest.raises(AccountNotFound, match="no account named 'ghost'"):
        await store.set_plan("ghost", "pro")
    assert [a.name for a in await store.list_accounts()] == ["acme"]
    assert await store.get_account("ghost") is None


async def make_each_mistake(store: Store) -> list[tuple[type[StoreError], str]]:
    """Each mistake a caller can make of a fresh store, once, through the `Store` protocol: what it raised."""
    await store.create_key("solo", "free", LIMITS)  # the free plan's one key
    revoked, _ = await store.create_key("acme", "pro", LIMITS)
    await store.revoke_key(revoked.id)
    mistakes: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.create_account("acme", "pro"),
        lambda: store.set_plan("ghost", "pro"),
        lambda: store.create_key("solo", "free", LIMITS),
        lambda: store.revoke_key(revoked.id),
        lambda: store.revoke_key(999),
    ]
    raised: list[tuple[type[StoreError], str]] = []
    for mistake in mistakes:
        with pytest.raises(StoreError) as info:
            await mistake()
        raised.append((type(info.value), str(info.value)))
    return raised


async def test_each_mistake_raises_what_sqlite_raises(store: PostgresStore, tmp_path: Path) -> None:
    """The same mistake is the same `StoreError` subclass with the same message on both backends."""
    sqlite = await open_store(str(tmp_path / "data"))
    try:
        on_sqlite = await make_each_mistake(sqlite)
    finally:
        await sqlite.close()
    on_postgres = await make_each_mistake(store)
    assert on_postgres == on_sqlite
    assert on_postgres == [
        (AccountExists, "account 'acme' already exists"),
        (AccountNotFound, "no account named 'ghost'"),
        (KeyLimitReached, "account 'solo' already has 1 active key(s); the free plan allows 1"),
        (KeyAlreadyRevoked, "key 2 is already revoked"),
        (KeyNotFound, "no key with id 999"),
    ]


async def test_changes_since(store: PostgresStore) -> None:
    accounts, keys, seq0 = await store.changes_since(0)
    assert (accounts, keys, seq0) == ([], [], 0)
    row, _ = await store.create_key("acme", "pro", LIMITS)  # an account and a key
    accounts, keys, seq1 = await store.changes_since(seq0)
    assert [a.name for a in accounts] == ["acme"] and [k.id for k in keys] == [row.id]
    assert seq1 > seq0 and seq1 == await store.current_seq()
    # Nothing new: nothing returned, the sequence stays.
    assert await store.changes_since(seq1) == ([], [], seq1)
    await store.set_plan("acme", "starter")
    accounts, keys, seq2 = await store.changes_since(seq1)
    assert [(a.name, a.plan) for a in accounts] == [("acme", "starter")] and keys == []
    await store.revoke_key(row.id)
    accounts, keys, seq3 = await store.changes_since(seq2)
    assert accounts == [] and [(k.id, k.active) for k in keys] == [(row.id, False)]
    assert seq3 > seq2 > seq1
    # From the start, every row is there once, in its latest state.
    accounts, keys, _ = await store.changes_since(0)
    assert [a.plan for a in accounts] == ["starter"] and [k.active for k in keys] == [False]


async def test_current_seq_moves_on_another_hosts_commit(make_store: StoreFactory) -> None:
    """PostgreSQL's stand-in for SQLite's data_version: the cheap check a poller runs before `changes_since`."""
    store, other = await make_store(), await make_store()
    before = await store.current_seq()
    assert await store.current_seq() == before
    await other.create_key("cli-user", "free", LIMITS)
    after = await store.current_seq()
    assert after > before
    accounts, keys, top = await store.changes_since(before)
    assert [a.name for a in accounts] == ["cli-user"] and len(keys) == 1 and top == after
    assert await store.current_seq() == after  # reading changes nothing


async def test_add_usage_upserts(store: PostgresStore) -> None:
    acme = await store.create_account("acme", "pro")
    other = await store.create_account("other", "pro")
    await store.add_usage([UsageDelta(acme.id, 100, 3, 1, 10, 8)])
    await store.add_usage([UsageDelta(acme.id, 100, 5, 1, 20, 4), UsageDelta(other.id, 100, 1, 1)])
    await store.add_usage([(acme.id, 101, 2, 1, 1, 1)])  # a plain 6-tuple, as the write-behind gives
    await store.add_usage([UsageDelta(acme.id, 100, -3, -1)])  # a refund after the write-behind
    await store.add_usage([])
    assert await store.credits_spent(100) == {acme.id: 5, other.id: 1}
    assert await store.credits_spent(101) == {acme.id: 2}
    assert await store.credits_spent(99) == {}
    assert await store.usage("acme") == [
        UsageDelta(acme.id, 100, 5, 1, 30, 12),
        UsageDelta(acme.id, 101, 2, 1, 1, 1),
    ]
    assert await store.usage("acme", since_day=101) == [UsageDelta(acme.id, 101, 2, 1, 1, 1)]
    assert await store.usage("nobody") == []


async def test_same_row_twice_in_one_batch_adds_both(store: PostgresStore) -> None:
    acme = await store.create_account("acme", "pro")
    await store.add_usage([(acme.id, 5, 1, 1, 0, 0), (acme.id, 5, 2, 1, 3, 4)])
    assert await store.usage("acme") == [UsageDelta(acme.id, 5, 3, 2, 3, 4)]


async def test_reopen_keeps_everything(dsn: str) -> None:
    first = await PostgresStore.connect(dsn)
    try:
        row, _ = await first.create_key("acme", "pro", LIMITS)
        await first.add_usage([UsageDelta(row.account_id, 7, 4, 2)])
        seq = await first.current_seq()
    finally:
        await first.close()
    again = await PostgresStore.connect(dsn)
    try:
        assert await again.current_seq() == seq
        assert [k.key_hash for k in await again.list_keys()] == [row.key_hash]
        assert await again.credits_spent(7) == {row.account_id: 4}
        later, _ = await again.create_key("acme", "pro", LIMITS)  # the sequence and ids carry on
        assert later.id > row.id and await again.current_seq() > seq
    finally:
        await again.close()


# Several hosts on one database ---------------------------------------------------------------------


async def test_hosts_starting_together_create_the_schema_once(make_store: StoreFactory) -> None:
    stores = await asyncio.gather(*(make_store(max_size=2) for _ in range(6)))
    row, _ = await stores[0].create_key("acme", "pro", LIMITS)
    for store in stores:
        assert await store.list_keys() == [row]


async def test_two_hosts_see_each_others_changes(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    row, _ = await a.create_key("acme", "pro", LIMITS)
    accounts, keys, seq_b = await b.changes_since(0)
    assert [x.name for x in accounts] == ["acme"] and keys == [row]

    await b.set_plan("acme", "starter")
    second, _ = await b.create_key("acme", "starter", LIMITS)
    accounts, keys, seq_a = await a.changes_since(seq_b)
    assert [(x.name, x.plan) for x in accounts] == [("acme", "starter")] and keys == [second]

    await a.revoke_key(second.id)
    accounts, keys, seq_b = await b.changes_since(seq_a)
    assert accounts == [] and [(k.id, k.active) for k in keys] == [(second.id, False)]
    assert seq_b == await a.current_seq() == await b.current_seq()


async def test_concurrent_create_key_never_exceeds_max_keys(make_store: StoreFactory) -> None:
    a, b = await make_store(max_size=10), await make_store(max_size=10)
    await a.create_account("team", "starter")  # 5 keys

    def attempts(account: str, plan: str, n: int) -> list[Awaitable[tuple[KeyRow, str]]]:
        return [(a if i % 2 else b).create_key(account, plan, LIMITS) for i in range(n)]

    results = await asyncio.gather(*attempts("team", "starter", 20), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 5 and len(refused) == 15
    assert all(isinstance(r, KeyLimitReached) and "allows 5" in str(r) for r in refused), refused
    assert len(await b.list_keys("team", include_revoked=False)) == 5

    # An account neither host has seen yet: created once, with exactly its one free key.
    results = await asyncio.gather(*attempts("fresh", "free", 12), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, KeyLimitReached) for r in results if isinstance(r, BaseException)), results
    assert [x.name for x in await a.list_accounts()].count("fresh") == 1
    assert len(await a.list_keys("fresh")) == 1


async def test_usage_upserts_from_two_hosts_add_up(make_store: StoreFactory) -> None:
    a, b = await make_store(max_size=5), await make_store(max_size=5)
    ids = [(await a.create_account(f"acct{i}", "pro")).id for i in range(4)]
    rng = random.Random(7)
    batches: list[tuple[PostgresStore, list[tuple[int, int, int, int, int, int]]]] = []
    expected: dict[tuple[int, int], list[int]] = {}
    for n in range(60):
        rows = [(acct, day, rng.randint(-2, 9), 1, rng.randint(0, 50), rng.randint(0, 50))
                for acct in ids for day in (100, 101)]
        rng.shuffle(rows)  # overlapping rows in any order: a deadlock would surface as an error here
        batches.append((a if n % 2 else b, rows))
        for acct, day, *values in rows:
            totals = expected.setdefault((acct, day), [0, 0, 0, 0])
            for i, v in enumerate(values):
                totals[i] += v
    await asyncio.gather(*(host.add_usage(rows) for host, rows in batches))
    for i, acct in enumerate(ids):
        got = await b.usage(f"acct{i}")
        assert got == [UsageDelta(acct, day, *expected[(acct, day)]) for day in (100, 101)]
    assert await a.credits_spent(100) == {acct: expected[(acct, 100)][0] for acct in ids}


async def test_a_stalled_writer_holds_back_later_seqs(make_store: StoreFactory, dsn: str) -> None:
    """A write that drew seq n and has not committed yet keeps n+1 from committing, so no reader skips n.

    Host A's insert is made to stall after drawing its seq (it waits on an uncommitted row with the
    same name); host B writes meanwhile; a reader polls. Were B's higher seq allowed to commit first,
    the reader would move past A's seq and never see A's account.
    """
    a, b, reader = await make_store(), await make_store(), await make_store()
    _, _, mark = await reader.changes_since(0)
    blocker, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)

    async def lock_waiters() -> int:
        return int(await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ))

    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("INSERT INTO accounts (name, plan, created_at, seq) VALUES ('slow', 'pro', 0, 0)")
        slow = asyncio.create_task(a.create_account("slow", "pro"))
        await eventually(lambda: _at_least(lock_waiters, 1), "host A waits on the uncommitted row")
        fast = asyncio.create_task(b.create_account("fast", "pro"))

        async def fast_settled() -> bool:
            return fast.done() or await lock_waiters() >= 2

        await eventually(fast_settled, "host B either commits or waits")
        accounts, _, polled = await reader.changes_since(mark)
        seen = {x.name for x in accounts}
        assert not fast.done() and seen == set() and polled == mark
        await held.rollback()
        await asyncio.gather(slow, fast)
    finally:
        await blocker.close()
        await watcher.close()
    accounts, _, _ = await reader.changes_since(polled)
    assert seen | {x.name for x in accounts} == {"slow", "fast"}


async def _at_least(count: Callable[[], Awaitable[int]], n: int) -> bool:
    return await count() >= n


async def test_a_polling_reader_never_misses_a_change(make_store: StoreFactory) -> None:
    """Writers on two hosts, a third polling the feed: what it pieced together equals the final state.

    Every account and key is created once, so one skipped seq would leave it missing for good.
    """
    a, b, reader = await make_store(max_size=6), await make_store(max_size=6), await make_store(max_size=2)

    async def writer(host: PostgresStore, tag: str) -> None:
        rng = random.Random(tag)
        for i in range(25):
            name = f"{tag}-{i}"
            row, _ = await host.create_key(name, "pro", LIMITS)
            if rng.random() < 0.5:
                await host.set_plan(name, rng.choice(["free", "starter", "pro"]))
            if rng.random() < 0.3:
                await host.revoke_key(row.id)

    writers = asyncio.gather(*(writer(host, f"{h}{w}") for h, host in (("a", a), ("b", b)) for w in range(4)))
    accounts: dict[int, AccountRow] = {}
    keys: dict[int, KeyRow] = {}
    seq, polls, marks = 0, 0, [0]

    async def poll() -> None:
        nonlocal seq, polls
        new_accounts, new_keys, seq = await reader.changes_since(seq)
        accounts.update((x.id, x) for x in new_accounts)
        keys.update((k.id, k) for k in new_keys)
        marks.append(seq)
        polls += 1

    for _ in range(100_000):
        if writers.done():
            break
        await poll()
    await writers
    await poll()
    assert marks == sorted(marks) and polls > 2
    assert sorted(accounts.values(), key=lambda x: x.id) == await reader.list_accounts()
    assert sorted(keys.values(), key=lambda k: k.id) == await reader.list_keys()
    assert len(accounts) == 8 * 25 and seq == await reader.current_seq()


def test_missing_binaries_fail_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PostgreSQL installed must be a loud failure that says how to get it, not a quiet skip."""
    import tests.pg_server as pg_server

    monkeypatch.setattr(pg_server, "REQUIRED", ("initdb", "no-such-postgres-tool"))
    with pytest.raises(PostgresNotInstalled, match=r"`make test` installs it \(apt-get install postgresql\)"):
        pg_server.find_bindir()
