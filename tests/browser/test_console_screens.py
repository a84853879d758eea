"""Every console page in Chromium, photographed at desktop and phone widths in light and dark, and checked.

Each page must show its one heading, give every control an accessible name (read from Chromium's own
accessibility tree, so a placeholder or a missing `for` does not pass), and fit a phone's width without
scrolling sideways. The pages: signed out `/`, `/docs`, `/models`, `/console/sign-in` and a one-time
link's `/console/set-password`; an owner's `/console/keys` with a new key's secret shown, a key's revoke
confirmation, `/console/usage` with a week of usage written through the store, `/console/users` with an
invited user's link shown, and `/docs` signed in; an operator's `/console/accounts` and another account's keys.

Screenshots land in the run's output folder as `screen-PAGE-SCHEME-desktop.png` / `-phone.png`.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from playwright.async_api import Page

from clexproxy.clock import utc_day
from clexproxy.store.base import KeyUsageRow
from tests.integration.conftest import NOON, RunningGateway

from .conftest import PHONE, Screenshot, console_user, users_create

Scheme = Literal["light", "dark"]
SCHEMES = pytest.mark.parametrize("scheme", ["light", "dark"])
# The roles a control has in Chromium's accessibility tree; each must have a non-empty name.
CONTROL_ROLES = {"textbox", "searchbox", "combobox", "checkbox", "radio", "spinbutton", "slider", "listbox",
                 "button", "switch", "menulistpopup"}


async def unnamed_controls(page: Page) -> list[str]:
    """The controls Chromium gives no accessible name, as `role (tag#id)` strings; empty when all are labelled."""
    cdp = await page.context.new_cdp_session(page)
    try:
        tree: dict[str, Any] = await cdp.send("Accessibility.getFullAXTree")
    finally:
        await cdp.detach()
    unnamed = []
    for node in tree["nodes"]:
        role = (node.get("role") or {}).get("value")
        name = str((node.get("name") or {}).get("value") or "").strip()
        if not node.get("ignored") and role in CONTROL_ROLES and not name:
            unnamed.append(f"{role} (node {node.get('backendDOMNodeId')})")
    return unnamed


async def check(page: Page, screenshot: Screenshot, name: str, scheme: Scheme, heading: str) -> None:
    """The page's one visible heading, every control named, no sideways scroll on a phone; then photographed."""
    h1 = page.locator("h1")
    assert await h1.count() == 1, name
    assert await h1.is_visible(), name
    assert heading in await h1.inner_text(), name
    assert await unnamed_controls(page) == [], name
    await page.set_viewport_size(PHONE)
    scroll_width, inner_width = await page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    assert scroll_width <= inner_width, f"{name} scrolls sideways on a phone: {scroll_width} > {inner_width}"
    written = await screenshot(page, f"screen-{name}-{scheme}")
    assert all(path.stat().st_size > 0 for path in written)


async def open_page(page: Page, gw: RunningGateway, path: str) -> None:
    response = await page.goto(gw.base_url + path)
    assert response is not None and response.status == 200, path


async def write_usage(gw: RunningGateway, account: str) -> None:
    """A week of past days' usage by the account's first key on two models, written as a flush writes it."""
    store = gw.gateway.store
    row = await store.get_account(account)
    assert row is not None
    keys = await store.list_keys(account)
    models = [m.id for m in gw.gateway.catalog.models.values() if m.kind == "chat"][:2]
    today = utc_day(NOON)
    deltas: list[tuple[int, int, int, int, int, int]] = []
    detail: list[KeyUsageRow] = []
    for back in range(1, 8):
        day = today - back
        per_model = [(model, 3 * back + i, back + i) for i, model in enumerate(models)]
        credits, calls = sum(c for _, c, _ in per_model), sum(n for _, _, n in per_model)
        deltas.append((row.id, day, credits, calls, 40 * back, 90 * back))
        detail += [KeyUsageRow(row.id, keys[0].id, model, day, credits, calls, 20 * back, 45 * back)
                   for model, credits, calls in per_model]
    await store.add_usage(deltas, detail)


@SCHEMES
async def test_public_pages(gw: RunningGateway, page: Page, screenshot: Screenshot, scheme: Scheme) -> None:
    await page.emulate_media(color_scheme=scheme)
    for path, name, heading in (("/", "home", "One API key"), ("/docs", "docs", "API documentation"),
                                ("/models", "models", "Models"), ("/console/sign-in", "sign-in", "Sign in")):
        await open_page(page, gw, path)
        await check(page, screenshot, name, scheme, heading)
    link = await users_create(gw, f"new-{scheme}@acme.test", "owner", "acme")
    await open_page(page, gw, link)
    await check(page, screenshot, "set-password", scheme, "")
    assert await page.get_by_label("New password").is_visible()


@SCHEMES
async def test_owner_pages(gw: RunningGateway, page: Page, screenshot: Screenshot, scheme: Scheme) -> None:
    await page.emulate_media(color_scheme=scheme)
    await write_usage(gw, "acme")
    await console_user(page, gw, f"owner-{scheme}@acme.test", "owner", "acme")

    await open_page(page, gw, "/console/keys")
    await page.locator("input[name=name]").fill("screens")
    await page.locator("input[name=daily_cap]").fill("100")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Create key").click()
    assert (await page.locator("#new-key-secret").input_value()).startswith("clex_")
    assert await page.get_by_role("button", name="Copy").is_visible()
    await check(page, screenshot, "keys-new-secret", scheme, "API keys")

    await open_page(page, gw, "/console/keys")
    await page.locator("[data-key-id]", has_text="screens").get_by_role("link", name="Revoke").click()
    await page.wait_for_url("**/revoke")
    assert await page.get_by_role("button", name="Revoke key").is_visible()
    await check(page, screenshot, "revoke-confirm", scheme, "Revoke")

    await open_page(page, gw, "/console/usage")
    assert await page.locator("svg#usage-chart").is_visible()
    assert await page.get_by_role("link", name="Download CSV").is_visible()
    await check(page, screenshot, "usage", scheme, "Usage")

    await open_page(page, gw, "/console/users")
    await page.get_by_label("Email").fill(f"invited-{scheme}@acme.test")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Invite user").click()
    assert "/console/set-password?token=" in await page.locator("#new-user-link").input_value()
    assert await page.get_by_role("button", name="Copy").is_visible()
    await check(page, screenshot, "users-new-link", scheme, "Users")

    await open_page(page, gw, "/docs")
    await page.get_by_label("API key").wait_for(state="visible")
    assert "acme" in await page.inner_text("#ex-key-note")
    await page.locator("#explorer").scroll_into_view_if_needed()
    await check(page, screenshot, "docs-signed-in", scheme, "API documentation")


@SCHEMES
async def test_operator_pages(gw: RunningGateway, page: Page, screenshot: Screenshot, scheme: Scheme) -> None:
    await page.emulate_media(color_scheme=scheme)
    await console_user(page, gw, f"operator-{scheme}@clex.test", "operator")
    await open_page(page, gw, "/console/accounts")
    assert await page.get_by_role("link", name="Keys of acme").is_visible()
    await check(page, screenshot, "accounts", scheme, "Accounts")
    await page.get_by_role("link", name="Keys of acme").click()
    await page.wait_for_url(lambda url: url.endswith("/console/keys?account=acme"))
    await check(page, screenshot, "operator-keys", scheme, "API keys")
