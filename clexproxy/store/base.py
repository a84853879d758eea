"""The store as the gateway, the admin API and the CLI use it: async, whichever database is behind it.

SQLite (one host, the default) runs its calls on a thread of its own (`ThreadedSQLiteStore`);
PostgreSQL (several hosts, `--database postgresql://...`) is async already (`PostgresStore`).
The request path never calls either: it reads memory, which these calls keep in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from clexproxy.store.sqlite import AccountRow, KeyRow, SQLiteStore, UsageDelta, UsageRow

T = TypeVar("T")


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


class ThreadedSQLiteStore:
    """`SQLiteStore` behind the async `Store` interface: one thread owns the connection, off the event loop."""

    def __init__(self, store: SQLiteStore) -> None:
        self.sqlite = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clexproxy-store")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

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

    async def add_usage(self, deltas: Iterable[UsageRow]) -> None:
        await self._run(self.sqlite.add_usage, deltas)

    async def create_account(self, name: str, plan: str) -> AccountRow:
        return await self._run(self.sqlite.create_account, name, plan)

    async def get_account(self, name: str) -> AccountRow | None:
        return await self._run(self.sqlite.get_account, name)

    async def list_accounts(self) -> list[AccountRow]:
        return await self._run(self.sqlite.list_accounts)

    async def set_plan(self, name: str, plan: str) -> AccountRow:
        return await self._run(self.sqlite.set_plan, name, plan)

    async def create_key(self, account: str, plan: str, max_keys_by_plan: dict[str, int]) -> tuple[KeyRow, str]:
        return await self._run(self.sqlite.create_key, account, plan, max_keys_by_plan)

    async def list_keys(self, account: str | None = None, include_revoked: bool = True) -> list[KeyRow]:
        return await self._run(self.sqlite.list_keys, account, include_revoked)

    async def revoke_key(self, key_id: int) -> KeyRow:
        return await self._run(self.sqlite.revoke_key, key_id)

    async def usage(self, account: str, since_day: int = 0) -> list[UsageDelta]:
        return await self._run(self.sqlite.usage, account, since_day)


async def open_store(data_dir: str, database_url: str = "") -> Store:
    """The configured store: PostgreSQL when `database_url` names one, else SQLite in `data_dir`."""
    if database_url:
        from clexproxy.store.postgres import PostgresStore

        return await PostgresStore.connect(database_url)
    return ThreadedSQLiteStore(SQLiteStore.in_data_dir(data_dir))
