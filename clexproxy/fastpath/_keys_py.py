"""Pure-Python twin of the compiled `_keys`: the key digest, the format check and the `KeyTable`.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. The public
API and every observable result must match the compiled module exactly.

`KeyTable` is the in-memory API key lookup, keyed by digest so the secret is never compared.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ("KeyEntry", "KeyTable", "hash_key", "key_format_ok")

_KEY_PREFIX = "clex_"
_KEY_MIN_BODY = 32
# Generated keys have 43 body characters; the cap only stops a hostile header from making us
# hash kilobytes per request.
_KEY_MAX_LEN = 256
_KEY_RE = re.compile(rf"clex_[A-Za-z0-9_-]{{{_KEY_MIN_BODY},{_KEY_MAX_LEN - len(_KEY_PREFIX)}}}")


def hash_key(key: str) -> bytes:
    """SHA-256 of the key: a random 256-bit secret needs no salt or slow hash, and lookups stay O(1)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_format_ok(key: str) -> bool:
    """Reject anything that cannot be a key before spending a hash on it."""
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


class KeyEntry:
    """What a key authenticates as."""

    __slots__ = ("_account_id", "_key_id")

    def __init__(self, key_id: int, account_id: int) -> None:
        self._key_id = key_id
        self._account_id = account_id

    @property
    def key_id(self) -> int:
        return self._key_id

    @property
    def account_id(self) -> int:
        return self._account_id

    def __repr__(self) -> str:
        return f"KeyEntry(key_id={self._key_id!r}, account_id={self._account_id!r})"


class KeyTable:
    """Digest -> entry map; the second map lets a revocation by id find the digest."""

    __slots__ = ("_by_hash", "_hash_by_id")

    def __init__(self) -> None:
        self._by_hash: dict[bytes, KeyEntry] = {}
        self._hash_by_id: dict[int, bytes] = {}

    def add(self, key_hash: bytes, key_id: int, account_id: int) -> None:
        if not isinstance(key_hash, bytes):
            raise TypeError(f"key_hash must be bytes, not {type(key_hash).__name__}")
        if len(key_hash) != 32:
            raise ValueError("key_hash must be a 32-byte SHA-256 digest")
        old_hash = self._hash_by_id.get(key_id)
        if old_hash is not None and old_hash != key_hash:
            del self._by_hash[old_hash]
        old = self._by_hash.get(key_hash)
        if old is not None and old.key_id != key_id:
            del self._hash_by_id[old.key_id]
        self._by_hash[key_hash] = KeyEntry(key_id, account_id)
        self._hash_by_id[key_id] = key_hash

    def remove(self, key_id: int) -> bool:
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is None:
            return False
        del self._by_hash[key_hash]
        return True

    def lookup(self, key: str) -> KeyEntry | None:
        """Find a presented key: the dict compares digests, never the secret itself."""
        if not key_format_ok(key):
            return None
        return self._by_hash.get(hashlib.sha256(key.encode("ascii")).digest())

    def lookup_hash(self, key_hash: bytes) -> KeyEntry | None:
        return self._by_hash.get(key_hash)

    def clear(self) -> None:
        self._by_hash.clear()
        self._hash_by_id.clear()

    def __len__(self) -> int:
        return len(self._by_hash)

