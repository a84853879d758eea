"""The docs page on a real gateway: `/docs` written for this gateway's base URL, its plans and tiers and its
API Explorer's model list read from the catalog the API reads, its headers, its script, and its escaping.

The page is read back with the standard library's HTML parser and compared with the API's own answers
(`/v1/models`, `/api/credits/pricing`, `/api/usage`) on the same gateway. Signed in, the Explorer says who
pays: an account's user needs no key, an operator is asked for one.
"""

from __future__ import annotations

import html as html_text
import json
import re
from html.parser import HTMLParser
from typing import Any

from .conftest import GatewayFactory, RunningGateway
from .test_console_pages import EVIL_CONFIG, EVIL_ID, api, assert_page_headers, fetch
from .test_console_signin import signed_in_user


class DocsPage(HTMLParser):
    """The Explorer's model options, the rows of the plans and tiers tables, scripts, and every label's target."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[str] = []
        self.selected: list[str] = []
        self.scripts: list[str] = []
        self.labels: set[str] = set()
        self.ids: set[str] = set()
        self.rows: dict[str, list[list[str]]] = {"plans": [], "tiers": []}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if tag == "option":
            self.options.append(found.get("value") or "")
            if "selected" in found:
                self.selected.append(found.get("value") or "")
        elif tag == "script":
            self.scripts.append((found.get("src") or "").split("?")[0])
        elif tag == "label" and found.get("for"):
            self.labels.add(found["for"] or "")
        elif tag == "table" and found.get("id") in self.rows:
            self._table = found["id"]
        elif tag == "tr" and self._table:
            self.rows[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> DocsPage:
    parser = DocsPage()
    parser.feed(html)
    return parser


async def test_docs_page_is_written_for_this_gateway(gw: RunningGateway) -> None:
    status, html, headers = await fetch(gw, "/docs")
    assert status == 200
    assert_page_headers(headers)
    assert headers["Cache-Control"] == "no-cache"
    assert f'export CLEX_BASE_URL="{gw.base_url}/v1"' in html
    assert f"curl {gw.base_url}/v1/chat/completions" in html
    assert f'OpenAI(base_url="{gw.base_url}/v1"' in html  # the OpenAI SDK
    assert f'url = "{gw.base_url}/v1/chat/completions"' in html  # requests
    assert f'fetch("{gw.base_url}/v1/chat/completions"' in html  # Node
    assert f"curl {gw.base_url}/api/key" in html
    for section in ("quick-start", "authentication", "chat", "streaming", "errors", "credits", "key", "explorer"):
        assert f'id="{section}"' in html, section
    for code in ("invalid_request_error", "authentication_error", "model_not_found", "rate_limit_exceeded",
                 "internal_server_error", "service_unavailable"):
        assert f"<code>{code}</code>" in html, code
    assert "data: [DONE]" in html and "default <code>true</code>" in html  # streaming is the default
    assert "https://" not in html and "clex_xxx" not in html
    assert '<a href="/docs" aria-current="page">Docs</a>' in html
    home = (await fetch(gw, "/"))[1]
    assert '<a href="/docs">Docs</a>' in home  # the nav on every page


async def test_docs_lists_the_catalogs_chat_models_plans_and_tiers(gw: RunningGateway) -> None:
    page = parse((await fetch(gw, "/docs"))[1])
    listed = (await api(gw, "/v1/models"))["data"]
    chat = [m["id"] for m in listed if m["type"] == "chat"]
    assert page.options == chat and len(chat) < len(listed)  # no embedding model in the Explorer
    assert page.selected == [gw.gateway.catalog.fallback_model]
    pricing = await api(gw, "/api/credits/pricing")  # plans and tiers as the API states them
    plans = {row[0]: row[1:] for row in page.rows["plans"][1:]}
    assert plans == {
        p["plan"]: [f"{p['credits_per_day']:,}", f"{p['requests_per_minute']:,}", str(p["max_keys"])]
        for p in pricing["plans"]
    }
    tiers = {row[0]: row[1:] for row in page.rows["tiers"][1:]}
    assert tiers == {t["tier"]: [str(t["credits"]), f"{len(t['models'])} (see them)"] for t in pricing["tiers"]}
    assert [row[0] for row in page.rows["tiers"][1:]] == [
        t["tier"] for t in sorted(pricing["tiers"], key=lambda t: (t["credits"], t["tier"]))
    ]


async def test_explorer_is_labelled_and_its_script_is_this_origins(gw: RunningGateway) -> None:
    status, html, _ = await fetch(gw, "/docs")
    page = parse(html)
    assert page.scripts == ["/static/explorer.js"]
    controls = {"ex-key", "ex-model", "ex-system", "ex-user", "ex-temperature", "ex-max-tokens", "ex-stream"}
    assert controls <= page.ids and controls <= page.labels  # every control has its label
    assert 'id="ex-key" type="password" autocomplete="off"' in html
    version = (await fetch(gw, "/static/explorer.js"))[2]["ETag"].strip('"')
    assert f"/static/explorer.js?v={version}" in html
    status, script, headers = await fetch(gw, "/static/explorer.js")
    assert status == 200 and headers["Content-Type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert "localStorage" not in script and "sessionStorage" not in script and "/api/chat" in script


async def test_docs_escapes_catalog_text(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config=EVIL_CONFIG)
    status, html, _ = await fetch(gw, "/docs")
    assert status == 200
    assert "<script>alert" not in html
    assert 'value="evil/&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;amp"' in html
    assert EVIL_ID in parse(html).options


async def test_docs_off_with_the_console(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(console_enabled=False)
    for path in ("/docs", "/static/explorer.js"):
        status, _, headers = await fetch(gw, path)
        assert status == 404 and headers["Content-Type"].startswith("application/json"), path


def section(html: str, anchor: str) -> str:
    """The HTML of the docs section whose heading has id `anchor`."""
    start = html.index(f'id="{anchor}"')
    return html[start:html.index("</section>", start)]


def shape(value: Any) -> Any:
    """A JSON value's keys, nested (lists by their first item): what a documented example must share with an answer."""
    if isinstance(value, dict):
        return {name: shape(item) for name, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


async def test_docs_document_usage_key_limits_and_the_console(gw: RunningGateway, key: str) -> None:
    html = (await fetch(gw, "/docs"))[1]
    for anchor in ("key-limits", "usage", "console"):
        assert f'href="#{anchor}"' in html, anchor  # in the table of contents
    limits = section(html, "key-limits")
    for words in ("Expiry", "Daily credit cap", "Model allow-list", "<code>daily_credits</code>",
                  "<code>model_not_allowed</code>", "401", "403", "429", "X-Clex-Credits-Remaining"):
        assert words in limits, words
    assert "<code>model_not_allowed</code>" in section(html, "errors")
    usage = section(html, "usage")
    assert f'curl "{gw.base_url}/api/usage?days=7" -H "Authorization: Bearer $CLEX_API_KEY"' in usage
    assert "1\u201390, default 30" in usage  # an en dash
    # The documented answer has the live answer's shape, to the models inside a day.
    example = re.search(r'<pre><code>(\{"object": "usage".*?)</code></pre>', usage, re.S)
    assert example is not None
    await gw.client(key).chat.completions.create(model=gw.gateway.catalog.fallback_model or "", stream=False,
                                                 messages=[{"role": "user", "content": "Hi"}])
    status, body, _ = await fetch(gw, "/api/usage?days=7", Authorization=f"Bearer {key}")
    assert status == 200
    live = json.loads(body)
    assert live["days"] and shape(json.loads(html_text.unescape(example.group(1)))) == shape(live)
    console = section(html, "console")
    assert "clexproxy users create --account NAME --email EMAIL --role owner" in console
    for role in ("owner", "member", "operator"):
        assert f'<th scope="row">{role}</th>' in console, role


async def test_the_explorer_signed_in_says_who_pays(gw: RunningGateway) -> None:
    html = (await fetch(gw, "/docs"))[1]
    assert "data-account" not in html and 'id="ex-key-note"' not in html and 'name="csrf-token"' not in html

    owner = await signed_in_user(gw, "ann@acme.test", "owner", "acme")
    try:
        status, html, _ = await owner.get("/docs")
        assert status == 200
        assert '<form id="explorer-form" class="explorer" data-account="acme" hidden>' in html
        assert 'name="csrf-token"' in html and 'aria-describedby="ex-key-note"' in html
        note = section(html, "explorer")
        said = " ".join(note.split())
        assert "Signed in as ann@acme.test: calls are charged to <strong>acme</strong>; or paste a key." in said
        assert 'placeholder="optional: clex_..."' in note
    finally:
        await owner.http.close()

    operator = await signed_in_user(gw, "op@clex.test", "operator", None)
    try:
        html = (await operator.get("/docs"))[1]
        assert "data-account" not in html and 'name="csrf-token"' in html
        assert "an operator: operators belong to no account, so the Explorer calls with a key" in " ".join(html.split())
    finally:
        await operator.http.close()
