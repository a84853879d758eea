"""API key hashing, format check and lookup table: the compiled `_keys`, or its twin `_keys_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("KeyEntry", "KeyTable", "hash_key", "key_format_ok")

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._keys_py import KeyEntry, KeyTable, hash_key, key_format_ok
else:
    try:
        from clexproxy.fastpath._keys import KeyEntry, KeyTable, hash_key, key_format_ok
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._keys", exc) from exc
