"""The session module's pure parts: link bases, next-page targets, password and email rules, argon2id hashing."""

from __future__ import annotations

import pytest

from clexproxy.config import load_settings
from clexproxy.web.session import (
    email_problem,
    hash_password,
    password_problem,
    public_url,
    safe_next,
    token_hash,
    verify_password,
)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, "http://127.0.0.1:8080"),
    ({"host": "0.0.0.0", "port": 9000}, "http://127.0.0.1:9000"),
    ({"host": "::"}, "http://127.0.0.1:8080"),
    ({"host": "::1"}, "http://[::1]:8080"),
    ({"host": "gw.internal"}, "http://gw.internal:8080"),
    ({"console_public_url": "https://clex.example.com/"}, "https://clex.example.com"),
])
def test_public_url(overrides: dict[str, object], expected: str) -> None:
    assert public_url(load_settings(None, env={}, overrides=overrides)) == expected


@pytest.mark.parametrize(("target", "expected"), [
    (None, "/console/keys"),
    ("/console/usage?day=2026-11-30", "/console/usage?day=2026-11-30"),
    ("https://evil.example/console", "/console/keys"),
    ("//evil.example/console", "/console/keys"),
    ("/console\\..\\x", "/console/keys"),
    ("/admin/accounts", "/console/keys"),
])
def test_safe_next_stays_on_the_console(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_password_rules() -> None:
    assert password_problem("x" * 9) == "Use at least 10 characters."
    assert password_problem("x" * 10) is None
    assert password_problem("x" * 1024) is None
    assert password_problem("x" * 1025) == "Use at most 1024 characters."
    assert password_problem("long enough 1", "long enough 2") == "The two passwords differ."


@pytest.mark.parametrize("email", ["a@b.c", "ann.lee+clex@acme.example"])
def test_emails_taken(email: str) -> None:
    assert email_problem(email) is None


@pytest.mark.parametrize("email", ["", "no-at.example", "a@b@c", "@b.c", "a@", "a b@c.d", "a@" + "b" * 253,
                                   "<script>@x.y", 'a"b@c.d', "a,b@c.d", "a\x00b@c.d", "a@b.c\u202e"])
def test_emails_refused(email: str) -> None:
    assert email_problem(email)


async def test_argon2id_hash_and_verify() -> None:
    hashed = await hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert await verify_password(hashed, "correct horse battery staple") == (True, False)
    assert await verify_password(hashed, "wrong horse battery staple") == (False, False)
    assert await verify_password(None, "anything at all") == (False, False)  # the dummy: same work, no match
    assert await verify_password("not-a-hash", "anything at all") == (False, False)


def test_token_hash_is_sha256_and_never_the_token() -> None:
    digest = token_hash("abc")
    assert len(digest) == 32 and b"abc" not in digest
