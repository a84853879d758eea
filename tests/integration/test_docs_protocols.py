"""The docs page's protocol sections on a real gateway: every endpoint shown, every curl example run as written.

Each section's curl lines are read back from the page (URL, headers, body), the key put in for
`$CLEX_API_KEY`, and sent to the same gateway: a documented example that stopped working fails here. The
refusals the page quotes are compared with what the gateway answers, so the page cannot drift from the code.
"""

from __future__ import annotations

import html as html_text
import json
import re
from typing import Any

import aiohttp

from clexproxy.demo.upstream import DemoServer

from .conftest import GatewayFactory, RunningGateway
from .test_console_docs import section
from .test_console_pages import fetch

ENDPOINTS = {  # anchor -> the endpoints its section documents
    "responses": ["/v1/responses"],
    "messages": ["/v1/messages", "/v1/messages/count_tokens"],
    "completions": ["/v1/completions"],
}
CURL = re.compile(r"<pre><code>curl (\S+) \\\n(.*?)</code></pre>", re.S)


def curls(part: str) -> list[tuple[str, dict[str, str], Any]]:
    """The curl examples in a piece of the page: (url, headers, JSON body) each."""
    found = []
    for url, rest in CURL.findall(part):
        rest = html_text.unescape(rest)
        headers = dict(h.split(": ", 1) for h in re.findall(r'-H "([^"]+)"', rest))
        body = re.search(r"-d '(.*)'", rest)
        assert body is not None, rest
        found.append((url, headers, json.loads(body.group(1))))
    return found


def plain(part: str) -> str:
    """A piece of the page as text: tags out, entities decoded, whitespace as single spaces."""
    return " ".join(html_text.unescape(re.sub(r"<[^>]+>", "", part)).split())


async def post(url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_docs_show_each_protocol_and_its_examples_work(gw: RunningGateway, key: str) -> None:
    status, html, _ = await fetch(gw, "/docs")
    assert status == 200
    model = gw.gateway.catalog.fallback_model
    for anchor, endpoints in ENDPOINTS.items():
        assert f'href="#{anchor}"' in html, anchor  # in the table of contents
        part = section(html, anchor)
        examples = curls(part)
        assert [url for url, _, _ in examples] == [gw.base_url + e for e in endpoints], anchor
        for endpoint in endpoints:
            assert f"<code>POST {endpoint}</code>" in part, endpoint
        for url, headers, body in examples:
            assert body["model"] == model
            sent = {name: value.replace("$CLEX_API_KEY", key) for name, value in headers.items()}
            status, answer = await post(url, sent, body)
            assert status == 200, (url, answer)
            if url.endswith("/responses"):
                assert answer["object"] == "response" and answer["status"] == "completed"
                assert answer["output"][0]["content"][0]["text"]
            elif url.endswith("/count_tokens"):
                assert set(answer) == {"input_tokens"} and answer["input_tokens"] > 0
            elif url.endswith("/messages"):
                assert "x-api-key" in headers and "Authorization" not in headers  # Anthropic's own header
                assert answer["type"] == "message" and answer["content"][0]["type"] == "text"
            else:
                assert answer["object"] == "text_completion" and answer["choices"][0]["text"]
    assert 'href="#clients"' in html
    clients = section(html, "clients")
    for snippet in (f'OpenAI(base_url="{gw.base_url}/v1"', "client.responses.create(",
                    f'Anthropic(base_url="{gw.base_url}"', f'export ANTHROPIC_BASE_URL="{gw.base_url}"',
                    "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY", f'createOpenAI({{ baseURL: "{gw.base_url}/v1"',
                    f'createAnthropic({{ baseURL: "{gw.base_url}/v1"', 'href="#completions"'):
        assert snippet in clients, snippet
    assert "https://" not in html


async def test_docs_quote_the_refusals_the_gateway_gives(gw: RunningGateway, key: str) -> None:
    html = (await fetch(gw, "/docs"))[1]
    model = gw.gateway.catalog.fallback_model
    bearer = {"Authorization": f"Bearer {key}"}
    responses, messages = plain(section(html, "responses")), plain(section(html, "messages"))

    status, answer = await post(gw.base_url + "/v1/responses", bearer,
                                {"model": model, "input": "Hi", "previous_response_id": "resp_1"})
    assert status == 400 and answer["error"]["param"] == "previous_response_id"
    assert f'"{answer["error"]["message"]}"' in responses
    status, body, _ = await fetch(gw, "/v1/responses/resp_1", **bearer)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert "404 not_found" in responses

    status, answer = await post(gw.base_url + "/v1/messages", {"x-api-key": key},
                                {"model": model, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 400
    assert f'"{answer["error"]["message"]}"' in messages
    assert json.dumps(answer, separators=(", ", ": ")) in messages  # the shape shown is the one sent
    status, answer = await post(gw.base_url + "/v1/messages", {"x-api-key": key}, {
        "model": model, "max_tokens": 8, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    said = answer["error"]["message"]
    shown = re.search(r'"(tools\.0\.type: server tools \(…\) are not supported[^"]*)"', messages)
    assert shown is not None and said == shown.group(1).replace("(…)", "('web_search_20250305')")
    status, answer = await post(gw.base_url + "/v1/messages", {"x-api-key": key}, {
        "model": model, "max_tokens": 8, "temperature": 1.5, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 400 and f'"{answer["error"]["message"]}"' in messages
    status, answer = await post(gw.base_url + "/v1/messages", {"x-api-key": key},
                                {"model": "claude-sonnet-4-5", "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 404 and answer["error"]["type"] == "not_found_error"
    assert "not_found_error" in plain(section(html, "clients"))  # what Claude Code gets with its own model ids


async def test_docs_quote_the_completions_refusal(make_gateway: GatewayFactory, upstream: DemoServer) -> None:
    """Outside demo mode a model is served on /v1/completions only when flagged; the page quotes the 400."""
    config = (f'[providers.plain]\nbase_url = "{upstream.url}"\napi_key_env = "PLAIN_TEST_KEY"\n'
              '[models."acme/plain"]\ntier = "cheap"\ndeployments = [{provider = "plain", model = "plain-m"}]\n')
    gw = await make_gateway(demo=False, config=config)
    key = await gw.add_key("acme", "pro")
    status, answer = await post(gw.base_url + "/v1/completions", {"Authorization": f"Bearer {key}"},
                                {"model": "acme/plain", "prompt": "def f():", "stream": False})
    assert status == 400 and answer["error"]["param"] == "model"
    documented = plain(section((await fetch(gw, "/docs"))[1], "completions"))
    assert answer["error"]["message"].replace("'acme/plain'", "'...'") in documented
    assert "completions = true" in documented
