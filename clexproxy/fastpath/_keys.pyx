# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled API key handling: the digest, the format check and the in-memory `KeyTable`.

Every call presents a key, so the format check reads the string's one-byte form through a
lookup table before any hash is spent, and the table is keyed by digest so the secret itself
is never compared. `_keys_py` is the pure-Python twin with the same public API and results,
and every test runs against both. Keep them in sync.
"""

import hashlib

from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.string cimport memcmp

__all__ = ("KeyEntry", "KeyTable", "hash_key", "key_format_ok")


cdef enum:
    _KEY_PREFIX_LEN = 5
    _KEY_MIN_LEN = _KEY_PREFIX_LEN + 32
    # Generated keys have 43 body characters; the cap only stops a hostile header from making
    # us hash kilobytes per request.
    _KEY_MAX_LEN = 256

cdef object _sha256 = hashlib.sha256


def hash_key(str key not None):
    """SHA-256 of the key: a random 256-bit secret needs no salt or slow hash, and lookups stay O(1)."""
    return _sha256(key.encode("utf-8")).digest()


# Which bytes may follow the prefix: the URL-safe base64 alphabet, as a lookup table so the
# check is one load per character.
cdef bint _key_char[256]


cdef void _init_key_chars() noexcept:
    cdef int i
    for i in range(256):
        _key_char[i] = (
            (ord("a") <= i <= ord("z"))
            or (ord("A") <= i <= ord("Z"))
            or (ord("0") <= i <= ord("9"))
            or i == ord("_")
            or i == ord("-")
        )


_init_key_chars()


cdef bint _key_format_ok(object key):
    cdef Py_ssize_t i, n
    cdef const unsigned char* chars
    if not isinstance(key, str):
        return False
    n = PyUnicode_GET_LENGTH(key)
    # Any character above U+00FF makes the string wider than one byte per character, and no
    # such character is allowed, so only the compact one-byte form needs looking at.
    if n < _KEY_MIN_LEN or n > _KEY_MAX_LEN or PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND:
        return False
    chars = PyUnicode_1BYTE_DATA(key)
    if memcmp(chars, b"clex_", _KEY_PREFIX_LEN) != 0:
        return False
    for i in range(_KEY_PREFIX_LEN, n):
        if not _key_char[chars[i]]:
            return False
    return True


def key_format_ok(key):
    """Reject anything that cannot be a key before spending a hash on it."""
    return _key_format_ok(key)


cdef class KeyEntry:
    """What a key authenticates as."""

    cdef readonly object key_id
    cdef readonly object account_id

    def __init__(self, key_id, account_id):
        self.key_id = key_id
        self.account_id = account_id

    def __repr__(self):
        return f"KeyEntry(key_id={self.key_id!r}, account_id={self.account_id!r})"


cdef class KeyTable:
    """Digest -> entry map; the second map lets a revocation by id find the digest."""

    cdef dict _by_hash
    cdef dict _hash_by_id

    def __cinit__(self):
        self._by_hash = {}
        self._hash_by_id = {}

    def add(self, bytes key_hash not None, key_id, account_id):
        cdef KeyEntry entry
        if len(key_hash) != 32:
            raise ValueError("key_hash must be a 32-byte SHA-256 digest")
        old_hash = self._hash_by_id.get(key_id)
        if old_hash is not None and old_hash != key_hash:
            del self._by_hash[old_hash]
        old = self._by_hash.get(key_hash)
        if old is not None and (<KeyEntry>old).key_id != key_id:
            del self._hash_by_id[(<KeyEntry>old).key_id]
        entry = KeyEntry.__new__(KeyEntry)
        entry.key_id = key_id
        entry.account_id = account_id
        self._by_hash[key_hash] = entry
        self._hash_by_id[key_id] = key_hash

    def remove(self, key_id):
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is None:
            return False
        del self._by_hash[key_hash]
        return True

    def lookup(self, key):
        """Find a presented key: the dict compares digests, never the secret itself."""
        if not _key_format_ok(key):
            return None
        return self._by_hash.get(_sha256((<str>key).encode("ascii")).digest())

    def lookup_hash(self, key_hash):
        return self._by_hash.get(key_hash)

    def clear(self):
        self._by_hash.clear()
        self._hash_by_id.clear()

    def __len__(self):
        return len(self._by_hash)
