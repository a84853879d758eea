"""`clexproxy users ...` as an operator runs it: a subprocess on a temporary data dir, its output and exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clexproxy.store import open_store
from clexproxy.web.session import token_hash

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"^http://127\.0\.0\.1:8080/console/set-password\?token=([A-Za-z0-9_-]{43})$", re.MULTILINE)


def clexproxy(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLEX_")}
    return subprocess.run([sys.executable, "-m", "clexproxy", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={**clean, **env})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with the account 'acme' (made through the store: one subprocess fewer per test)."""
    path = tmp_path / "data"

    async def make() -> None:
        store = await open_store(str(path), "")
        try:
            await store.create_account("acme", "free")
        finally:
            await store.close()

    asyncio.run(make())
    return path


def _link_user(data_dir: Path, token: str) -> str | None:
    async def peek() -> str | None:
        store = await open_store(str(data_dir), "")
        try:
            user = await store.peek_link(token_hash(token), 0.0)
            return user.email if user else None
        finally:
            await store.close()

    return asyncio.run(peek())


def test_create_prints_a_link_that_names_the_user(data_dir: Path) -> None:
    done = clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "Ann@Acme.test", "--role", "owner")
    assert done.returncode == 0, done.stderr
    assert "Created owner ann@acme.test of account 'acme'" in done.stdout
    found = LINK.search(done.stdout)
    assert found, done.stdout
    assert _link_user(data_dir, found.group(1)) == "ann@acme.test"
    done = clexproxy(data_dir, "users", "create", "--email", "op@clex.test", "--role", "operator")
    assert done.returncode == 0 and "Created operator op@clex.test (user" in done.stdout


def test_reset_password_replaces_the_link(data_dir: Path) -> None:
    first = LINK.search(clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "a@b.c").stdout)
    done = clexproxy(data_dir, "users", "reset-password", "--email", "A@B.C")
    second = LINK.search(done.stdout)
    assert done.returncode == 0 and first and second and first.group(1) != second.group(1)
    assert _link_user(data_dir, first.group(1)) is None
    assert _link_user(data_dir, second.group(1)) == "a@b.c"


def test_the_link_base_is_public_url(data_dir: Path) -> None:
    done = clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "a@b.c",
                     CLEX_CONSOLE_PUBLIC_URL="https://clex.example.com")
    assert done.returncode == 0
    assert "https://clex.example.com/console/set-password?token=" in done.stdout


def test_list(data_dir: Path) -> None:
    clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "a@b.c", "--role", "member")
    done = clexproxy(data_dir, "users", "list")
    assert done.returncode == 0
    assert re.search(r"a@b\.c\s+member\s+acme\s+not set", done.stdout), done.stdout
    assert "token" not in done.stdout


@pytest.mark.parametrize(("args", "words"), [
    (("create", "--account", "acme", "--email", "a@b.c", "--role", "boss"), "invalid choice: 'boss'"),
    (("create", "--account", "acme", "--email", "not an email"), "is not an email address"),
    (("create", "--account", "nope", "--email", "a@b.c"), "no account named 'nope'"),
    (("create", "--email", "a@b.c", "--role", "owner"), "an owner belongs to an account"),
    (("create", "--account", "acme", "--email", "a@b.c", "--role", "operator"), "an operator belongs to no account"),
    (("reset-password", "--email", "nobody@b.c"), "no user with email 'nobody@b.c'"),
])
def test_refusals(data_dir: Path, args: tuple[str, ...], words: str) -> None:
    done = clexproxy(data_dir, "users", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert words in done.stderr and "token=" not in done.stdout


def test_an_existing_email_is_refused(data_dir: Path) -> None:
    assert clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "a@b.c").returncode == 0
    done = clexproxy(data_dir, "users", "create", "--account", "acme", "--email", "A@b.c")
    assert done.returncode == 2 and "already exists" in done.stderr
