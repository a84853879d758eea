"""Key stores: accounts, hashed keys and daily usage. SQLite is the embedded default."""

from __future__ import annotations

from clexproxy.store.sqlite import AccountRow, KeyRow, SQLiteStore, StoreError

__all__ = ["AccountRow", "KeyRow", "SQLiteStore", "StoreError"]
