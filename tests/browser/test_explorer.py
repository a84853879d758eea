"""The docs page's API Explorer in Chromium: a key pasted into the page, a streamed chat sent to `/api/chat`,
tokens shown as they arrive with the metering headers, a bad key's 401 shown with the gateway's own message,
the key never in the code shown nor anywhere but the call's Authorization header, and the page photographed.
Signed in (the full signed-in call is in `test_console_flow`): a pasted key still wins and goes without the
cookie, an ended session's 401 is shown with its message, and an operator is asked for a key.

Screenshots land in the run's output folder (`output_dir`): `docs-light-*.png`, `docs-dark-*.png`,
`explorer-light-*.png`, `explorer-dark-*.png`, each `-desktop` and `-phone`.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
import pytest
from playwright.async_api import Page, Request, Route

from tests.integration.conftest import RunningGateway

from .conftest import Screenshot, console_user

Scheme = Literal["light", "dark"]
BAD_KEY = "clex_" + "x" * 40
NO_VALUE = "\u2013"  # an en dash: the Explorer's cell for a header the answer did not carry
# Counts the answer's changes: a streamed answer grows in several steps, not in one.
COUNT_UPDATES = """() => {
  window.updates = 0;
  new MutationObserver(() => { window.updates += 1; })
    .observe(document.getElementById("ex-output"), {childList: true, characterData: true, subtree: true});
}"""


async def slow_chunks(route: Route) -> None:
    """The real call, plus the demo upstream's knob that spaces its chunks, so each arrives in its own read."""
    await route.continue_(headers={**route.request.headers, "x-demo-delay-ms": "40"})


async def status_says(page: Page, text: str) -> None:
    """Waits for the Explorer's status line to say `text` (a locator wait: the page's CSP forbids eval)."""
    await page.locator("#ex-status", has_text=text).wait_for()


def header(name: str) -> str:
    return f"#ex-headers dd[data-header='{name.lower()}']"


async def open_explorer(gw: RunningGateway, page: Page) -> list[str]:
    """The docs page with its Explorer ready; the returned list collects console errors."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    await page.goto(gw.base_url + "/docs")
    await page.get_by_label("API key").wait_for(state="visible")  # the script ran under the strict CSP
    return errors


async def test_streamed_chat_shows_tokens_and_credits(gw: RunningGateway, key: str, page: Page) -> None:
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    errors = await open_explorer(gw, page)
    model = gw.gateway.catalog.fallback_model
    assert model is not None
    assert await page.get_by_label("Model", exact=True).input_value() == model
    assert await page.get_by_label("Stream the answer").is_checked()  # streaming is the default
    await page.evaluate(COUNT_UPDATES)
    await page.route("**/api/chat", slow_chunks)
    # By keyboard: the key typed into its field, Enter submits the form.
    await page.get_by_label("API key").focus()
    await page.keyboard.type(key)
    await page.get_by_label("User message").fill("Tell me a story")
    await page.get_by_label("API key").press("Enter")
    await status_says(page, "done")

    assert (await page.inner_text("#ex-status")).startswith("200")
    answer = await page.inner_text("#ex-output")
    assert answer.strip()
    assert await page.evaluate("window.updates") > 1  # tokens arrived one after another
    plan = gw.gateway.catalog.plans["pro"]
    credits = plan.credits_per_day - gw.gateway.catalog.cost(model)
    assert await page.inner_text(header("X-Clex-Credits-Remaining")) == str(credits)
    assert await page.inner_text(header("x-ratelimit-remaining-requests")) != NO_VALUE
    assert (await page.inner_text(header("X-Request-Id"))).strip() not in ("", NO_VALUE)

    # The key went only into the one call's Authorization header; the page kept it nowhere.
    calls = [r for r in requests if r.url.endswith("/api/chat")]
    assert len(calls) == 1 and calls[0].method == "POST"
    assert (await calls[0].all_headers())["authorization"] == f"Bearer {key}"
    body = calls[0].post_data_json
    assert body is not None
    assert body["stream"] is True and body["model"] == model and body["messages"][-1]["content"] == "Tell me a story"
    for request in requests:
        assert key not in request.url and key not in (request.post_data or "")
        if request is not calls[0]:
            assert key not in str(await request.all_headers())
    stored = await page.evaluate("JSON.stringify([localStorage, sessionStorage, document.cookie])")
    assert key not in stored
    assert errors == []


async def test_bad_key_shows_the_401_message(gw: RunningGateway, page: Page) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/api/chat", headers={"Authorization": f"Bearer {BAD_KEY}"},
        json={"model": gw.gateway.catalog.fallback_model, "messages": [{"role": "user", "content": "Hi"}]},
    ) as resp:
        assert resp.status == 401
        message = (await resp.json())["error"]["message"]
    await open_explorer(gw, page)
    await page.get_by_label("API key").fill(BAD_KEY)
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "Error")
    assert await page.inner_text("#ex-status") == f"Error 401: {message}"
    assert await page.inner_text("#ex-output") == ""


async def test_code_shown_names_the_variable_not_the_key(gw: RunningGateway, key: str, page: Page) -> None:
    await open_explorer(gw, page)
    await page.get_by_label("API key").fill(key)
    await page.get_by_label("Temperature").fill("0.2")
    await page.get_by_label("Max tokens (blank: the model's default)").fill("64")
    await page.get_by_label("Stream the answer").uncheck()
    curl = await page.inner_text("#ex-curl")
    python = await page.inner_text("#ex-python")
    assert key not in curl and key not in python
    assert 'Authorization: Bearer $CLEX_API_KEY' in curl and "os.environ['CLEX_API_KEY']" in python
    assert f"curl {gw.base_url}/v1/chat/completions" in curl
    assert '"temperature": 0.2' in curl and '"max_tokens": 64' in curl and '"stream": false' in curl
    assert '"stream": False' in python and '"max_tokens": 64' in python
    await page.get_by_role("button", name="Send").click()  # not streamed: one JSON answer
    await status_says(page, "done")
    assert (await page.inner_text("#ex-output")).strip()


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots(gw: RunningGateway, key: str, page: Page, screenshot: Screenshot, scheme: Scheme) -> None:
    await page.emulate_media(color_scheme=scheme)
    await open_explorer(gw, page)
    written = await screenshot(page, f"docs-{scheme}")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "done")
    await page.locator("#explorer").scroll_into_view_if_needed()
    written += await screenshot(page, f"explorer-{scheme}")
    assert all(p.stat().st_size > 0 for p in written)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(15, 20, 25)") == (scheme == "dark")


async def test_signed_in_a_pasted_key_wins_and_an_ended_session_says_401(
    gw: RunningGateway, key: str, page: Page
) -> None:
    await console_user(page, gw, "ann@acme.test", "owner", "acme")
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    await open_explorer(gw, page)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "done")
    sent = await next(r for r in requests if r.url.endswith("/api/chat")).all_headers()
    assert sent["authorization"] == f"Bearer {key}"
    assert "cookie" not in sent and "x-csrf-token" not in sent  # a key's call carries no session

    found = await gw.gateway.store.user_by_email("ann@acme.test")
    assert found is not None
    await gw.gateway.store.delete_sessions(found[0].id)  # the session ends while the page is open
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/api/chat", headers={"Cookie": "clex_session=ended", "Origin": gw.base_url,
                                             "X-CSRF-Token": "x"},
        json={"model": gw.gateway.catalog.fallback_model, "messages": [{"role": "user", "content": "Hi"}]},
    ) as resp:
        assert resp.status == 401
        message = (await resp.json())["error"]["message"]
    await page.get_by_label("API key").fill("")
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "Error")
    assert await page.inner_text("#ex-status") == f"Error 401: {message}"


async def test_an_operator_is_asked_for_a_key(gw: RunningGateway, page: Page) -> None:
    await console_user(page, gw, "op@clex.test", "operator")
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    await open_explorer(gw, page)
    assert "operator" in await page.inner_text("#ex-key-note")
    await page.get_by_role("button", name="Send").click()
    await status_says(page, "Operators call with a key")
    assert not [r for r in requests if r.url.endswith("/api/chat")]
