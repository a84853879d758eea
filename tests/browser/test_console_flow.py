"""The console as a new owner walks it, in Chromium, on a real gateway: the issue's whole path in one test.

`clexproxy users create` prints a one-time link; the owner sets a password, signs in, creates a key
with a daily cap and copies its secret (read back from the clipboard), calls the API with it, sees
today's credits used go up by the call's cost on the usage page, sends a streamed chat from the docs
page's Explorer with no key (the session pays, the CSRF token in its header), revokes the key and sees
the API refuse it, and signs out. A second test throttles sign-in after five wrong passwords.

Screenshots land in the run's output folder as `flow-NN-STEP-desktop.png` / `-phone.png`.
"""

from __future__ import annotations

import aiohttp
from playwright.async_api import Page, Request

from tests.integration.conftest import RunningGateway

from .conftest import PASSWORD, Screenshot, is_signed_in, set_password, sign_in, users_create
from .test_explorer import COUNT_UPDATES, NO_VALUE, header, slow_chunks, status_says

OWNER = "owner@acme.test"
KEY_NAME = "flow key"
DAILY_CAP = 50


def number(text: str) -> int:
    """A figure as the console prints it ("1,998 credits" reads 1998)."""
    digits = "".join(c for c in text if c.isdigit())
    assert digits, text
    return int(digits)


async def credits_used(page: Page, gw: RunningGateway) -> int:
    await page.goto(gw.base_url + "/console/usage")
    return number(await page.inner_text("#credits-used"))


async def chat(gw: RunningGateway, key: str) -> int:
    """One non-streamed call with `key`: its status."""
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": gw.gateway.catalog.fallback_model, "stream": False,
              "messages": [{"role": "user", "content": "Hi"}]},
    ) as resp:
        await resp.read()
        return resp.status


async def test_owner_from_link_to_sign_out(gw: RunningGateway, page: Page, screenshot: Screenshot) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    model = gw.gateway.catalog.fallback_model
    assert model is not None
    cost = gw.gateway.catalog.cost(model)

    # 1. The link `users create` printed: set a password, then (if that did not already) sign in.
    link = await users_create(gw, OWNER, "owner", "acme")
    await page.goto(gw.base_url + link)
    await screenshot(page, "flow-01-set-password")
    await set_password(page, gw, link)
    if not await is_signed_in(page):
        assert await sign_in(page, gw, OWNER) == 200
    assert await is_signed_in(page)
    await page.goto(gw.base_url + "/console")
    assert page.url == gw.base_url + "/console/keys"
    await screenshot(page, "flow-02-keys")

    # 2. Create a key with a name and a daily cap; its secret shown once, copied by the Copy button.
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.base_url)
    await page.locator("input[name=name]").fill(KEY_NAME)
    await page.locator("input[name=daily_cap]").fill(str(DAILY_CAP))
    async with page.expect_navigation():
        await page.get_by_role("button", name="Create key").click()
    secret = (await page.locator("#new-key-secret").input_value()).strip()
    assert secret.startswith("clex_") and len(secret) >= 37
    assert secret not in page.url
    await page.get_by_role("button", name="Copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator("[data-key-id]", has_text=KEY_NAME)
    assert await row.count() == 1
    assert secret not in await row.inner_text()  # the table shows the hint only
    await screenshot(page, "flow-03-new-key")
    await page.goto(gw.base_url + "/console/keys")
    assert secret not in await page.content()  # shown once: gone on the next view

    # 3. The key works on the API; the usage page's credits used go up by the call's cost.
    before = await credits_used(page, gw)
    assert await chat(gw, secret) == 200
    assert await credits_used(page, gw) == before + cost
    await screenshot(page, "flow-04-usage")

    # 4. The Explorer, signed in: no key; the session pays, the CSRF token rides in its header.
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    await page.goto(gw.base_url + "/docs")
    await page.get_by_label("API key").wait_for(state="visible")
    assert "acme" in await page.inner_text("#ex-key-note")
    await page.evaluate(COUNT_UPDATES)
    await page.route("**/api/chat", slow_chunks)
    await page.get_by_label("User message").fill("Tell me a story")
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "done")
    assert (await page.inner_text("#ex-status")).startswith("200")
    assert (await page.inner_text("#ex-output")).strip()
    assert await page.evaluate("window.updates") > 1
    remaining = await page.inner_text(header("X-Clex-Credits-Remaining"))
    assert remaining != NO_VALUE and number(remaining) > 0
    calls = [r for r in requests if r.url.endswith("/api/chat")]
    assert len(calls) == 1
    sent = await calls[0].all_headers()
    assert "authorization" not in sent and sent.get("x-csrf-token")
    await page.locator("#explorer").scroll_into_view_if_needed()
    await screenshot(page, "flow-05-explorer-signed-in")
    assert await credits_used(page, gw) == before + 2 * cost

    # 5. Revoke the key (a confirm page first); the API refuses it at once.
    await page.goto(gw.base_url + "/console/keys")
    await page.locator("[data-key-id]", has_text=KEY_NAME).get_by_role("link", name="Revoke").click()
    await page.wait_for_url("**/revoke")
    await screenshot(page, "flow-06-revoke-confirm")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Revoke key").click()
    assert page.url.split("?")[0] == gw.base_url + "/console/keys"
    assert "revoked" in await page.locator("[data-key-id]", has_text=KEY_NAME).inner_text()
    assert await chat(gw, secret) == 401

    # 6. Sign out: the keys page sends the browser to sign in again.
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()
    assert not await is_signed_in(page)
    await page.goto(gw.base_url + "/console/keys")
    assert "/console/sign-in" in page.url
    await screenshot(page, "flow-07-signed-out")
    assert errors == []


async def test_sign_in_throttled_after_five_wrong_passwords(
    gw: RunningGateway, page: Page, screenshot: Screenshot
) -> None:
    email = "member@acme.test"
    await set_password(page, gw, await users_create(gw, email, "member", "acme"))
    await page.context.clear_cookies()  # whatever setting the password did, start signed out
    for _ in range(5):
        status = await sign_in(page, gw, email, "not the password")
        assert status in (200, 401, 403)
        assert not await is_signed_in(page)
    status = await sign_in(page, gw, email, PASSWORD)  # even the right password waits now
    assert status == 429
    assert not await is_signed_in(page)
    assert await page.locator("h1").is_visible()
    await screenshot(page, "flow-08-sign-in-throttled")
