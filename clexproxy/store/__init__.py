"""Key stores: accounts, hashed keys and daily usage, behind the async `Store` protocol.

SQLite (one host, the default) runs its calls on a thread of its own (`ThreadedSQLiteStore`);
PostgreSQL (several hosts, `--database postgresql://...`) is async already (`PostgresStore`).
The request path never calls either: it reads memory, which the gateway's store tasks keep in step.
"""

from __future__ import annotations

from clexproxy.store.base import Store
from clexproxy.store.sqlite import SQLiteStore, ThreadedSQLiteStore


async def open_store(data_dir: str, database_url: str = "") -> Store:
    """The configured store: PostgreSQL when `database_url` names one, else SQLite in `data_dir`."""
    if database_url:
        from clexproxy.store.postgres import PostgresStore  # asyncpg only when PostgreSQL is configured

        return await PostgresStore.connect(database_url)
    return ThreadedSQLiteStore(SQLiteStore.in_data_dir(data_dir))
