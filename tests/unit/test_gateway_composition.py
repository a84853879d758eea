"""Gateway composes its components and owns their start/stop order; StoreSync keeps memory in step with the store.

A real SQLite store in the test's directory, a manual clock, no server: what `Gateway.start` and
`Gateway.stop` do, and what `StoreSync` applies, seen from the store and the in-memory image.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from clexproxy.auth import Directory
from clexproxy.clock import ManualClock, utc_day
from clexproxy.config import Settings, StoreSettings, load_settings
from clexproxy.gateway import Gateway
from clexproxy.limits.local import LocalLimits
from clexproxy.server.worker import banner
from clexproxy.store.base import KeyUsageRow, UsageDelta, UsageRow
from clexproxy.store.sqlite import SQLiteStore, ThreadedSQLiteStore
from clexproxy.sync.store import StoreSync

NOON = 1_795_608_000.0  # 2026-11-25 12:00:00 UTC
LIMITS = {"free": 1, "pro": 5}
SECRET = "nvapi-composition-SECRET-0123456789"


class RecordingStore(ThreadedSQLiteStore):
    """The real SQLite store, noting the order of its writes of usage and its close."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(SQLiteStore.in_data_dir(data_dir))
        self.events: list[str] = []

    async def add_usage(self, deltas: Iterable[UsageRow], detail: Iterable[KeyUsageRow] = ()) -> None:
        await super().add_usage(deltas, detail)
        self.events.append("add_usage")

    async def close(self) -> None:
        await super().close()
        self.events.append("close")


def settings_for(tmp_path: Path, env: dict[str, str] | None = None) -> Settings:
    """Timers that never fire within a test: what is written is what start and stop write."""
    return load_settings(env=env or {}, overrides={"data_dir": str(tmp_path), "store_poll_seconds": 3600,
                                                   "store_flush_seconds": 3600, "metrics_enabled": False})


@pytest.fixture
async def cli_store(tmp_path: Path) -> AsyncIterator[ThreadedSQLiteStore]:
    """Another connection to the same key store, as the CLI writes through."""
    store = ThreadedSQLiteStore(SQLiteStore.in_data_dir(tmp_path))
    try:
        yield store
    finally:
        await store.close()


async def test_a_started_and_stopped_gateway_writes_its_usage_then_closes_its_store(
    tmp_path: Path, cli_store: ThreadedSQLiteStore
) -> None:
    _, key = await cli_store.create_key("acme", "pro", LIMITS)
    store = RecordingStore(tmp_path)
    gateway = Gateway(settings_for(tmp_path), ManualClock(NOON), store, io.BytesIO())
    await gateway.start()
    assert gateway.ready
    _, account = gateway.directory.authenticate(f"Bearer {key}")  # loaded at start
    bucket = await gateway.limits.count_request(account)
    admission = await gateway.limits.admit(account, 7, bucket)
    gateway.limits.settle(admission, True, 3, 4)
    await gateway.stop()
    assert not gateway.ready
    assert store.events == ["add_usage", "close"]  # the last usage written before the store closes
    assert (await cli_store.credits_spent(utc_day(NOON)))[account.id] == 7


async def test_a_gateway_loads_todays_usage_at_start(tmp_path: Path, cli_store: ThreadedSQLiteStore) -> None:
    _, key = await cli_store.create_key("acme", "pro", LIMITS)
    account = await cli_store.get_account("acme")
    assert account is not None
    await cli_store.add_usage([UsageDelta(account.id, utc_day(NOON), credits=30, calls=1)])
    gateway = Gateway(settings_for(tmp_path), ManualClock(NOON), RecordingStore(tmp_path), io.BytesIO())
    await gateway.start()
    try:
        _, loaded = gateway.directory.authenticate(f"Bearer {key}")
        headers = gateway.limits.peek_headers(loaded)
        assert headers["X-Clex-Credits-Remaining"] == str(loaded.plan.credits_per_day - 30)
    finally:
        await gateway.stop()


async def test_store_sync_applies_a_key_created_in_the_store(tmp_path: Path, cli_store: ThreadedSQLiteStore) -> None:
    """A key the CLI creates works at the next poll; one it revokes stops working."""
    settings = load_settings(env={})
    store = ThreadedSQLiteStore(SQLiteStore.in_data_dir(tmp_path))
    directory = Directory(settings.catalog)
    sync = StoreSync(StoreSettings(poll_seconds=0.01, flush_seconds=3600), store, directory,
                     LocalLimits(ManualClock(NOON)))
    await sync.load()
    sync.start()
    try:
        row, key = await cli_store.create_key("late", "pro", LIMITS)
        for _ in range(500):  # bounded wait for the poll, not a timing assertion
            if directory.keys.lookup(key) is not None:
                break
            await asyncio.sleep(0.01)
        _, account = directory.authenticate(f"Bearer {key}")
        assert account.name == "late" and account.plan.name == "pro"
        await cli_store.revoke_key(row.id)
        for _ in range(500):
            if directory.keys.lookup(key) is None:
                break
            await asyncio.sleep(0.01)
        assert directory.keys.lookup(key) is None
    finally:
        await sync.stop()
        await store.close()


async def test_store_sync_applies_its_own_writes_when_forced(tmp_path: Path) -> None:
    """The store's change marker moves only for other connections: the admin API's own writes pass `force`."""
    settings = load_settings(env={})
    store = ThreadedSQLiteStore(SQLiteStore.in_data_dir(tmp_path))
    directory = Directory(settings.catalog)
    sync = StoreSync(StoreSettings(), store, directory, LocalLimits(ManualClock(NOON)))
    try:
        await sync.load()
        _, key = await store.create_key("own", "free", LIMITS)
        await sync.sync_store()
        assert directory.keys.lookup(key) is None
        await sync.sync_store(force=True)
        assert directory.keys.lookup(key) is not None
    finally:
        await store.close()


async def test_a_provider_credential_never_shows_at_startup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The banner and every line logged while a gateway starts and stops leave the credential out."""
    caplog.set_level(logging.DEBUG)
    settings = settings_for(tmp_path, env={"NVIDIA_API_KEY": SECRET})
    assert settings.credentials["nvidia"].value == SECRET
    gateway = Gateway(settings, ManualClock(NOON), RecordingStore(tmp_path), io.BytesIO())
    await gateway.start()
    await gateway.stop()
    assert caplog.records and SECRET not in caplog.text
    assert SECRET not in banner(settings, None)
