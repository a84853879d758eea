"""The console's pages in Chromium: `/` and `/models` load, the models filter narrows the rows as one types
(use case words too), the keyboard reaches it, and each page is photographed at desktop and phone widths in
light and dark.

Screenshots land in the run's output folder (`output_dir`): `home-light-*.png`, `home-dark-*.png`,
`models-light-*.png`, `models-dark-*.png`, each `-desktop` and `-phone`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pytest
from playwright.async_api import Page

from clexproxy.catalog import Model
from tests.integration.conftest import RunningGateway

from .conftest import Screenshot

Scheme = Literal["light", "dark"]
SHOWN = "document.querySelectorAll('#models tbody tr:not([hidden])').length === "


async def visible_rows(page: Page) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#models tbody tr:not([hidden]) th", "cells => cells.map(c => c.textContent.trim())"
    )
    return ids


async def test_home_page(gw: RunningGateway, page: Page) -> None:
    response = await page.goto(gw.base_url + "/")
    assert response is not None and response.status == 200
    assert (await page.title()).startswith("CLEX")
    assert gw.base_url + "/v1" in await page.inner_text("main")
    await page.get_by_role("link", name="Browse the models").click()
    await page.wait_for_url(gw.base_url + "/models")
    assert await page.get_by_role("heading", name="Models").is_visible()


async def test_models_filter_narrows_rows(gw: RunningGateway, page: Page) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    await page.goto(gw.base_url + "/models")
    catalog = gw.gateway.catalog.models
    filter_box = page.get_by_label("Filter models")
    await filter_box.wait_for(state="visible")  # the script ran under the strict CSP
    assert sorted(await visible_rows(page)) == sorted(catalog)

    await filter_box.press_sequentially("qwen")
    expected = sorted(m for m in catalog if "qwen" in m)
    await page.wait_for_function(SHOWN + str(len(expected)))
    assert sorted(await visible_rows(page)) == expected
    assert await page.inner_text("#model-count") == f"{len(expected)} of {len(catalog)} models"

    await filter_box.fill("meta premium")  # every word must match: no meta model is premium
    await page.wait_for_selector("#no-match:not([hidden])")
    assert await visible_rows(page) == []
    await filter_box.fill("embedding")
    await page.wait_for_function(SHOWN + "1")
    assert await visible_rows(page) == [m for m, model in catalog.items() if model.kind == "embedding"]
    await filter_box.fill("")
    await page.wait_for_function(SHOWN + str(len(catalog)))
    assert errors == []  # no CSP violation, no script error


def matching(models: Mapping[str, Model], typed: str) -> list[str]:
    """The ids the filter should keep: every typed word in the row's id, publisher, tier, type or use case."""
    def text(m: Model) -> str:
        return " ".join((m.id, m.publisher, m.tier, m.kind, m.use_case)).lower()
    return sorted(mid for mid, m in models.items() if all(word in text(m) for word in typed.lower().split()))


async def test_models_filter_matches_use_case(gw: RunningGateway, page: Page) -> None:
    await page.goto(gw.base_url + "/models")
    catalog = gw.gateway.catalog.models
    filter_box = page.get_by_label("Filter models")
    await filter_box.wait_for(state="visible")
    # Words found only in use cases: no id, publisher, tier or type holds them.
    for typed in ("reasoning", "Reasoning premium", "search retrieval"):
        expected = matching(catalog, typed)
        assert expected and all(typed.split()[0].lower() not in mid for mid in expected), typed
        await filter_box.fill(typed)
        await page.wait_for_function(SHOWN + str(len(expected)))
        assert sorted(await visible_rows(page)) == expected, typed
    assert await page.inner_text("#model-count") == f"1 of {len(catalog)} models"  # the embedding model
    use_case = await page.inner_text("#models tbody tr:not([hidden]) td[data-label='Use case']")
    assert use_case == catalog[expected[0]].use_case


async def test_keyboard_reaches_the_filter(gw: RunningGateway, page: Page) -> None:
    await page.goto(gw.base_url + "/models")
    await page.get_by_label("Filter models").wait_for(state="visible")
    focused: list[str] = []
    for _ in range(10):
        await page.keyboard.press("Tab")
        focused.append(await page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        if focused[-1] == "model-filter":
            break
    assert focused[-1] == "model-filter", focused
    assert focused[0] == "Skip to content"  # the first stop skips the header
    await page.keyboard.type("nvidia")
    rows = await visible_rows(page)
    assert rows and all("nvidia" in r for r in rows)
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots(gw: RunningGateway, page: Page, screenshot: Screenshot, scheme: Scheme) -> None:
    await page.emulate_media(color_scheme=scheme)
    background = {}
    for name, path in (("home", "/"), ("models", "/models")):
        await page.goto(gw.base_url + path)
        background[name] = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        written = await screenshot(page, f"{name}-{scheme}")
        assert all(p.stat().st_size > 0 for p in written)
    dark = background["home"] == "rgb(15, 20, 25)"
    assert dark == (scheme == "dark"), background
    assert background["home"] == background["models"]
