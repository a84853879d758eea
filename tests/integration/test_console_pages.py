"""The console's pages on a real gateway: `/` and `/models`, their static files, headers and escaping.

The models page is read back with the standard library's HTML parser, row by row, and compared
with what the API says (`/api/credits/pricing`, `/v1/models`) on the same gateway: a page never
shows a price the API does not charge.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import aiohttp

from .conftest import GatewayFactory, RunningGateway

NO_OUTPUT = "\u2013"  # an en dash: an embedding model writes no tokens
COLUMNS = ("id", "publisher", "context", "max_output", "credits", "tier", "type", "use_case")
EVIL_ID = 'evil/<script>alert("x")</script>&amp'
EVIL_CONFIG = f"""
[models.'{EVIL_ID}']
tier = "premium"
context_length = 4096
max_output_tokens = 512
use_case = "<b>bold</b> & 'quoted'"
deployments = [{{ provider = "nvidia", model = "x" }}]

[models."local/plain"]
deployments = [{{ provider = "nvidia", model = "plain" }}]
"""


class CatalogRows(HTMLParser):
    """The text of each cell of each row in the table's body, and every `<script>` element's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.scripts: list[dict[str, str | None]] = []
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def fetch(gw: RunningGateway, path: str, **headers: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def api(gw: RunningGateway, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path) as resp:
        assert resp.status == 200
        return await resp.json()


def models_table(html: str) -> dict[str, dict[str, str]]:
    parser = CatalogRows()
    parser.feed(html)
    table = {}
    for row in parser.rows:
        assert len(row) == len(COLUMNS), row
        cells = dict(zip(COLUMNS, row, strict=True))
        table[cells["id"]] = cells
    return table


def assert_page_headers(headers: Any) -> None:
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assert headers["X-Request-Id"]


async def test_home_page(gw: RunningGateway) -> None:
    status, html, headers = await fetch(gw, "/")
    assert status == 200
    assert_page_headers(headers)
    assert "<title>CLEX" in html
    assert f'export CLEX_BASE_URL="{gw.base_url}/v1"' in html  # the quick start names this gateway
    assert f"curl {gw.base_url}/v1/chat/completions" in html
    assert 'href="/models"' in html
    assert "https://" not in html and "//cdn" not in html  # nothing fetched from another host


async def test_models_page_lists_every_model_at_the_api_price(gw: RunningGateway) -> None:
    status, html, headers = await fetch(gw, "/models")
    assert status == 200
    assert_page_headers(headers)
    table = models_table(html)
    pricing = await api(gw, "/api/credits/pricing")
    listed = {m["id"]: m for m in (await api(gw, "/v1/models"))["data"]}
    assert set(table) == set(pricing["models"]) == set(listed)
    for model_id, row in table.items():
        model = listed[model_id]
        assert row["credits"] == str(pricing["models"][model_id]), model_id
        assert row["publisher"] == model["publisher"]
        assert row["context"] == f"{model['context_length']:,}"
        assert row["max_output"] == (f"{model['max_output_tokens']:,}" if model["max_output_tokens"] else NO_OUTPUT)
        assert row["tier"] == model["tier"] and row["type"] == model["type"]
        assert row["use_case"] == model["use_case"] and row["use_case"], model_id
    # The filter: present for JS (hidden until its script runs), labelled; the script is this origin's.
    assert '<label for="model-filter">' in html and 'id="model-filter"' in html
    assert '<th scope="col">Use case</th>' in html and 'data-label="Use case"' in html  # phones: a labelled line
    parser = CatalogRows()
    parser.feed(html)
    assert [(s.get("src") or "").split("?")[0] for s in parser.scripts] == ["/static/console.js"]


async def test_catalog_text_is_escaped(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=EVIL_CONFIG)
    status, html, _ = await fetch(gw, "/models")
    assert status == 200
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;amp" in html
    table = models_table(html)
    assert table[EVIL_ID]["credits"] == "5"  # premium, as the API says
    assert "<b>bold" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; &#39;quoted&#39;" in html
    assert table[EVIL_ID]["use_case"] == "<b>bold</b> & 'quoted'"
    assert table["local/plain"]["use_case"] == NO_OUTPUT  # no use case: a dash, not an empty cell
    assert (await api(gw, "/api/credits/pricing"))["models"][EVIL_ID] == 5


async def test_static_files_cached_and_revalidated(gw: RunningGateway) -> None:
    _, html, _ = await fetch(gw, "/models")
    for name, kind in (("console.css", "text/css"), ("console.js", "text/javascript")):
        status, body, headers = await fetch(gw, f"/static/{name}")
        assert status == 200 and body
        assert headers["Content-Type"].split(";")[0] in (kind, "application/javascript")
        assert headers["Cache-Control"] == "public, max-age=86400"
        assert headers["X-Content-Type-Options"] == "nosniff"
        version = headers["ETag"].strip('"')
        assert f"/static/{name}?v={version}" in html  # a new version is a new URL
        status, body, _ = await fetch(gw, f"/static/{name}", **{"If-None-Match": headers["ETag"]})
        assert status == 304 and body == ""
    assert "prefers-color-scheme: dark" in (await fetch(gw, "/static/console.css"))[1]
    status, body, headers = await fetch(gw, "/static/missing.css")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert '"error"' in body


async def test_other_methods_and_paths_stay_json(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session, session.post(gw.base_url + "/models") as resp:
        assert resp.status == 405 and resp.content_type == "application/json"
        assert "GET" in resp.headers["Allow"]
    status, _, headers = await fetch(gw, "/no-such-page")
    assert status == 404 and headers["Content-Type"].startswith("application/json")


async def test_console_disabled_pages_are_json_404s(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(console_enabled=False)
    for path in ("/", "/models", "/static/console.css"):
        status, body, headers = await fetch(gw, path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("application/json"), path
        assert "error" in body
    assert (await api(gw, "/v1/models"))["data"]  # the API is the same


async def test_console_disabled_by_environment(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(env={"CLEX_CONSOLE_ENABLED": "false"})
    assert gw.settings.console.enabled is False
    assert (await fetch(gw, "/models"))[0] == 404
