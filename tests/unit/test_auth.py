"""The in-memory Directory: store rows in, `Authorization` headers checked against hashed keys only."""

from __future__ import annotations

import secrets

import pytest

from clexproxy.auth import Directory
from clexproxy.catalog import default_catalog
from clexproxy.errors import AuthenticationFailed
from clexproxy.fastpath.keys import hash_key
from clexproxy.store.base import AccountRow, KeyRow

KEY = "clex_" + secrets.token_urlsafe(32)
OTHER_KEY = "clex_" + secrets.token_urlsafe(32)


def account_row(account_id: int = 1, plan: str = "starter", name: str = "acme") -> AccountRow:
    return AccountRow(account_id, name, plan, 0.0)


def key_row(key: str = KEY, key_id: int = 10, account_id: int = 1, revoked: bool = False) -> KeyRow:
    return KeyRow(key_id, account_id, "acme", hash_key(key), key[:9], 0.0, 1.0 if revoked else None)


@pytest.fixture
def directory() -> Directory:
    d = Directory(default_catalog())
    d.apply([account_row()], [key_row()])
    return d


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY} "])
def test_authenticate(directory: Directory, header: str) -> None:
    entry, account = directory.authenticate(header)
    assert (entry.key_id, entry.account_id) == (10, 1)
    assert account.name == "acme" and account.plan.name == "starter"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        KEY,  # no scheme
        f"Basic {KEY}",
        f"Token {KEY}",
        "Bearer",
        "Bearer ",
        f"Bearer {OTHER_KEY}",  # well-formed, unknown
        "Bearer clex_short",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
    ],
)
def test_authentication_failures(directory: Directory, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        directory.authenticate(header)
    assert info.value.status == 401 and info.value.code == "authentication_error"
    # The presented key never comes back in the message.
    assert KEY not in info.value.message and OTHER_KEY not in info.value.message


def test_revoked_row_removes_the_key(directory: Directory) -> None:
    directory.apply([], [key_row(revoked=True)])
    with pytest.raises(AuthenticationFailed):
        directory.authenticate(f"Bearer {KEY}")
    assert len(directory.keys) == 0


def test_revoking_one_key_leaves_the_others(directory: Directory) -> None:
    directory.apply([], [key_row(OTHER_KEY, key_id=11)])
    directory.apply([], [key_row(revoked=True)])
    assert directory.authenticate(f"Bearer {OTHER_KEY}")[0].key_id == 11
    with pytest.raises(AuthenticationFailed):
        directory.authenticate(f"Bearer {KEY}")


def test_key_of_an_unknown_account_fails() -> None:
    d = Directory(default_catalog())
    d.apply([], [key_row(account_id=99)])
    with pytest.raises(AuthenticationFailed):
        d.authenticate(f"Bearer {KEY}")


def test_unconfigured_plan_gets_the_smallest_plan() -> None:
    """A plan removed from the configuration neither locks the account out nor lifts its limits."""
    d = Directory(default_catalog())
    changed = d.apply([account_row(plan="enterprise-legacy")], [key_row()])
    assert [a.plan.name for a in changed] == ["free"]
    _, account = d.authenticate(f"Bearer {KEY}")
    assert account.plan.name == "free" and account.plan.credits_per_day == 100


def test_plan_change_updates_the_same_account_object(directory: Directory) -> None:
    """The meter holds Account objects: a plan change must update them in place."""
    _, before = directory.authenticate(f"Bearer {KEY}")
    changed = directory.apply([account_row(plan="pro", name="acme-renamed")], [])
    _, after = directory.authenticate(f"Bearer {KEY}")
    assert after is before and changed == [before]
    assert after.plan.name == "pro" and after.name == "acme-renamed"
