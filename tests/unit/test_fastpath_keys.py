"""API key format check, hashing and the in-memory key table, on both implementations."""

from __future__ import annotations

import hashlib
import secrets
from types import ModuleType

import pytest

KEY = "clex_" + "A" * 20 + "b" * 10 + "0_-9Zz" * 2
OTHER = "clex_" + secrets.token_urlsafe(32)


def test_hash_key_is_sha256_of_utf8(keys: ModuleType) -> None:
    assert keys.hash_key(KEY) == hashlib.sha256(KEY.encode()).digest()
    assert keys.hash_key("é") == hashlib.sha256("é".encode()).digest()
    assert len(keys.hash_key(OTHER)) == 32
    with pytest.raises(TypeError):
        keys.hash_key(KEY.encode())
    with pytest.raises(TypeError):
        keys.hash_key(None)


@pytest.mark.parametrize(
    "key",
    [
        "clex_" + "a" * 32,
        "clex_" + "Zz09_-" * 6,
        "clex_" + secrets.token_urlsafe(32),
        "clex_" + "x" * 251,
    ],
)
def test_well_formed_keys(keys: ModuleType, key: str) -> None:
    assert keys.key_format_ok(key) is True


@pytest.mark.parametrize(
    "key",
    [
        "",
        "clex_",
        "clex_" + "a" * 31,  # too short
        "clex_" + "a" * 252,  # longer than any key we issue: not worth hashing
        "CLEX_" + "a" * 32,
        "clex-" + "a" * 32,
        "sk-" + "a" * 40,
        " clex_" + "a" * 32,
        "clex_" + "a" * 32 + " ",
        "clex_" + "a" * 32 + "\n",
        "clex_" + "a" * 31 + "=",
        "clex_" + "a" * 31 + "+",
        "clex_" + "a" * 31 + "/",
        "clex_" + "a" * 31 + "é",
        "clex_" + "a" * 31 + "\u0661",  # Arabic-Indic digit: isalnum() but not base64
        "clex_" + "a" * 31 + "\ud800",  # lone surrogate: must not blow up in an encoder
        "clex_" + "a" * 31 + "\x00",
    ],
)
def test_malformed_keys(keys: ModuleType, key: str) -> None:
    assert keys.key_format_ok(key) is False
    table = keys.KeyTable()
    table.add(hashlib.sha256(b"whatever").digest(), 1, 1)
    assert table.lookup(key) is None


@pytest.mark.parametrize("value", [None, b"clex_" + b"a" * 32, 123, ["clex_"]])
def test_non_strings_are_not_keys(keys: ModuleType, value: object) -> None:
    assert keys.key_format_ok(value) is False
    assert keys.KeyTable().lookup(value) is None


def test_add_lookup_remove(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    table.add(keys.hash_key(OTHER), 11, 101)
    assert len(table) == 2
    entry = table.lookup(KEY)
    assert entry is not None
    assert (entry.key_id, entry.account_id) == (10, 100)
    other = table.lookup(OTHER)
    assert other is not None and other.key_id == 11
    assert table.lookup(KEY[:-1] + ("a" if KEY[-1] != "a" else "b")) is None
    assert table.remove(10) is True
    assert table.remove(10) is False
    assert table.lookup(KEY) is None
    assert len(table) == 1


def test_lookup_by_hash(keys: ModuleType) -> None:
    table = keys.KeyTable()
    digest = keys.hash_key(KEY)
    table.add(digest, 10, 100)
    entry = table.lookup_hash(digest)
    assert entry is not None and entry.account_id == 100
    assert table.lookup_hash(hashlib.sha256(b"nope").digest()) is None
    assert table.lookup_hash(b"") is None


def test_add_replaces_same_key_id(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    table.add(keys.hash_key(OTHER), 10, 100)  # key 10 rotated to a new secret
    assert len(table) == 1
    assert table.lookup(KEY) is None
    entry = table.lookup(OTHER)
    assert entry is not None and entry.key_id == 10


def test_add_replaces_same_hash(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    table.add(keys.hash_key(KEY), 12, 102)
    assert len(table) == 1
    entry = table.lookup(KEY)
    assert entry is not None and (entry.key_id, entry.account_id) == (12, 102)
    assert table.remove(10) is False  # the old id no longer maps to anything
    assert table.remove(12) is True
    assert len(table) == 0


def test_add_same_entry_again_moves_account(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    table.add(keys.hash_key(KEY), 10, 200)
    assert len(table) == 1
    entry = table.lookup(KEY)
    assert entry is not None and entry.account_id == 200


def test_add_validates_the_digest(keys: ModuleType) -> None:
    table = keys.KeyTable()
    with pytest.raises(ValueError):
        table.add(b"short", 1, 1)
    with pytest.raises(TypeError):
        table.add(KEY, 1, 1)
    with pytest.raises(TypeError):
        table.add(None, 1, 1)
    assert len(table) == 0


def test_clear(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    table.clear()
    assert len(table) == 0
    assert table.lookup(KEY) is None
    assert table.remove(10) is False
    table.add(keys.hash_key(KEY), 10, 100)
    assert table.lookup(KEY) is not None


def test_entry_is_read_only(keys: ModuleType) -> None:
    table = keys.KeyTable()
    table.add(keys.hash_key(KEY), 10, 100)
    entry = table.lookup(KEY)
    for name in ("key_id", "account_id"):
        with pytest.raises(AttributeError):
            setattr(entry, name, 1)
    assert repr(entry) == "KeyEntry(key_id=10, account_id=100)"
    assert repr(keys.KeyEntry(1, 2)) == "KeyEntry(key_id=1, account_id=2)"
