"""A real browser for the tests: Debian's Chromium, headless, driven by Playwright for Python.

Playwright's own browser download is not reachable, so the browser is the system's `chromium`
(``make test-tools`` installs it). One Chromium process serves the whole session; each test gets a
fresh, isolated browser context and page. Playwright's async objects belong to the event loop that
created them, and the gateway fixtures run on each test's own loop, so every test opens its own
Playwright connection to the session's Chromium (over the DevTools protocol, on loopback) rather than
sharing one Playwright across loops.

`screenshot(page, name)` writes `NAME-desktop.png` (1280x800) and `NAME-phone.png` (390x844) to the
run's output folder: ``$CLEX_TEST_OUTPUT`` if set, else the ``output`` folder beside these tests
(ignored by git).

The gateway fixtures (`make_gateway`, `gw`, `key`, with `clock` and `recorder` they rest on) are the
integration tests' own, imported here so browser tests start the same real gateway and demo upstream.

The console's users come the way an operator makes them: `users_create` runs `clexproxy users create`
on the gateway's data dir and keeps the one-time link it prints (never shown in a failure), and
`set_password` / `sign_in` / `console_user` drive the console's own forms in the browser.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, ViewportSize, async_playwright

from tests.integration.conftest import RunningGateway, clock, gw, key, make_gateway, recorder

__all__ = ["clock", "gw", "key", "make_gateway", "recorder"]

CHROMIUM = Path(os.environ.get("CLEX_CHROMIUM", "/usr/bin/chromium"))
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
START_TIMEOUT = 30.0

Screenshot = Callable[[Page, str], Awaitable[list[Path]]]
PASSWORD = "a long test passphrase, 7 words"
LINK = re.compile(r"/console/set-password\?token=([A-Za-z0-9_\-]+)")


@dataclass(frozen=True)
class Chromium:
    """The session's browser process: where Playwright connects, and its stderr log for failures."""

    endpoint: str
    log: Path


def output_dir() -> Path:
    """The run's output folder for screenshots, created on first use."""
    folder = Path(os.environ.get("CLEX_TEST_OUTPUT") or Path(__file__).resolve().parent / "output")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium_args(profile: Path) -> list[str]:
    """Headless, on a throwaway profile, DevTools on a free loopback port; no sandbox only as root."""
    args = [
        str(CHROMIUM), "--headless", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
        "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
    return args


def wait_for_devtools(process: subprocess.Popen[bytes], profile: Path, log: Path) -> str:
    """The browser's DevTools URL, from the port file Chromium writes into its profile once it listens."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if port_file.exists():
            lines = port_file.read_text().splitlines()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{CHROMIUM} did not start (exit {process.poll()}):\n{tail}")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's Chromium, headless, for the whole session; stopped at its end."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-tools` installs Debian's chromium", pytrace=False)
    profile = Path(tempfile.mkdtemp(prefix="clex-chromium-"))
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(chromium_args(profile), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        yield Chromium(wait_for_devtools(process, profile, log), log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
        log.unlink(missing_ok=True)


@pytest.fixture
async def page(chromium: Chromium) -> AsyncIterator[Page]:
    """A page in a browser context of the test's own (no cookies or storage from another), desktop-sized."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(chromium.endpoint)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            try:
                yield await context.new_page()
            finally:
                await context.close()
        finally:
            await browser.close()  # disconnects; the session's Chromium goes on


@pytest.fixture
def screenshot() -> Screenshot:
    """`await screenshot(page, name)`: the page at desktop and phone widths, full length, as PNGs."""

    async def take(page: Page, name: str) -> list[Path]:
        folder = output_dir()
        written = []
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            await page.set_viewport_size(size)
            path = folder / f"{name}-{label}.png"
            await page.screenshot(path=path, full_page=True)
            written.append(path)
        await page.set_viewport_size(DESKTOP)
        return written

    return take


async def users_create(gw: RunningGateway, email: str, role: str, account: str | None = None) -> str:
    """`clexproxy users create` on the gateway's data dir, as an operator runs it: the one-time link's path."""
    args = [sys.executable, "-m", "clexproxy", "users", "create", "--data-dir", str(gw.settings.server.data_dir),
            "--email", email, "--role", role]
    if account is not None:
        args += ["--account", account]
    env = {name: value for name, value in os.environ.items() if not name.startswith("CLEX_")}
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    found = LINK.search(out.decode())
    assert found is not None, "users create printed no /console/set-password link"
    return f"/console/set-password?token={found.group(1)}"


async def is_signed_in(page: Page) -> bool:
    """The page carries the console's CSRF token only for a signed-in user."""
    return await page.locator('meta[name="csrf-token"]').count() > 0


async def set_password(page: Page, gw: RunningGateway, link: str, password: str = PASSWORD) -> None:
    """Opens a one-time link and sets the password through its form."""
    await page.goto(gw.base_url + link)
    await page.get_by_label("New password").fill(password)
    await page.get_by_label("Repeat password").fill(password)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Set password").click()


async def sign_in(page: Page, gw: RunningGateway, email: str, password: str = PASSWORD) -> int:
    """Signs in through the form; the status of the form's answer (after any redirect)."""
    await page.goto(gw.base_url + "/console/sign-in")
    await page.locator("input[name=email]").fill(email)
    await page.locator("input[name=password]").fill(password)
    async with page.expect_navigation() as navigation:
        await page.get_by_role("button", name="Sign in").click()
    response = await navigation.value
    return response.status if response is not None else 0


async def console_user(page: Page, gw: RunningGateway, email: str, role: str, account: str | None = None) -> None:
    """A user made by the CLI, their password set from the link, signed in on `page`."""
    await set_password(page, gw, await users_create(gw, email, role, account))
    if not await is_signed_in(page):
        await sign_in(page, gw, email)
    assert await is_signed_in(page)
