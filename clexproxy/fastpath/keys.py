"""Temporary selector (being split per concept)."""

from __future__ import annotations

from clexproxy.fastpath import KeyEntry, KeyTable, hash_key, key_format_ok

__all__ = ("KeyEntry", "KeyTable", "hash_key", "key_format_ok",)
