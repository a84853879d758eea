"""A browser app on another origin calls the API with a key and reads the metering headers.

The page is served by a second aiohttp server on another port, so for Chromium it is another
origin than the gateway: its `fetch()` with an `Authorization` header needs the gateway's CORS
answers (the preflight, `Access-Control-Allow-Origin`, the exposed X-Clex-* headers) to get through
and to be readable. What the page saw is read back with `page.evaluate`, and shown on the page for
the screenshots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page

from tests.integration.conftest import RunningGateway

from .conftest import Screenshot

CHEAP = "meta/llama-3.1-8b-instruct"  # 1 credit a call

# The other origin's app: plain fetch(), a ReadableStream reader for the stream, nothing else.
APP = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Another origin</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; margin: 1rem; max-width: 60rem; }
  pre { white-space: pre-wrap; word-break: break-word; background: #f3f3f3; padding: .5rem; }
</style>
</head>
<body>
<h1>A browser app on another origin</h1>
<p>Calls the gateway's <code>/v1/chat/completions</code> with a key and reads its headers.</p>
<pre id="log" aria-label="What the calls returned"></pre>
<script>
const log = (label, value) => {
  document.getElementById("log").textContent += label + ": " + JSON.stringify(value, null, 1) + "\\n\\n";
  return value;
};

const metering = (response) => ({
  status: response.status,
  remaining: response.headers.get("X-Clex-Credits-Remaining"),
  limit: response.headers.get("X-Clex-Credits-Limit"),
  rpmRemaining: response.headers.get("x-ratelimit-remaining-requests"),
  requestId: response.headers.get("X-Request-Id"),
});

const call = (base, key, stream) => fetch(base + "/v1/chat/completions", {
  method: "POST",
  headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
  body: JSON.stringify({model: "__MODEL__", messages: [{role: "user", content: "Hello there!"}], stream}),
});

window.chat = async (base, key) => {
  const response = await call(base, key, false);
  const body = await response.json();
  const text = response.ok ? body.choices[0].message.content : null;
  return log("chat", {...metering(response), text, error: response.ok ? null : body.error});
};

window.streamChat = async (base, key) => {
  const response = await call(base, key, true);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "", done = false, reads = 0;
  const tokens = [];
  for (;;) {
    const {value, done: finished} = await reader.read();
    if (finished) break;
    reads += 1;
    buffered += decoder.decode(value, {stream: true});
    const events = buffered.split("\\n\\n");
    buffered = events.pop();
    for (const event of events) {
      for (const line of event.split("\\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") { done = true; continue; }
        const chunk = JSON.parse(data);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) tokens.push(delta.content);
      }
    }
  }
  return log("stream", {
    ...metering(response), contentType: response.headers.get("Content-Type"),
    tokens, text: tokens.join(""), done, reads,
  });
};
</script>
</body>
</html>
""".replace("__MODEL__", CHEAP)


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """The app's own server: 127.0.0.1 on a free port, another origin than the gateway's."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=APP, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


async def test_a_page_on_another_origin_calls_the_api_and_reads_the_credits(
    page: Page, gw: RunningGateway, key: str, other_origin: str, screenshot: Screenshot
) -> None:
    await page.goto(other_origin)
    assert await page.evaluate("location.origin") != gw.base_url

    first: dict[str, Any] = await page.evaluate("([base, key]) => chat(base, key)", [gw.base_url, key])
    assert first["status"] == 200, first
    assert first["text"]
    assert first["remaining"] is not None and first["limit"] is not None, first
    assert int(first["remaining"]) == int(first["limit"]) - 1  # the call's one credit is gone
    assert first["rpmRemaining"] is not None and first["requestId"]

    streamed: dict[str, Any] = await page.evaluate("([base, key]) => streamChat(base, key)", [gw.base_url, key])
    assert streamed["status"] == 200, streamed
    assert streamed["contentType"].startswith("text/event-stream")
    assert streamed["done"] and len(streamed["tokens"]) > 1
    assert streamed["text"] == first["text"]  # the demo upstream answers the same prompt the same way
    assert int(streamed["remaining"]) == int(first["remaining"]) - 1

    await screenshot(page, "cors-other-origin")


async def test_a_bad_key_from_another_origin_gets_a_readable_401(
    page: Page, gw: RunningGateway, other_origin: str
) -> None:
    await page.goto(other_origin)
    answer: dict[str, Any] = await page.evaluate(
        "([base, key]) => chat(base, key)", [gw.base_url, "clex_" + "b" * 40]
    )
    assert answer["status"] == 401, answer
    error = answer["error"]
    assert error["status"] == 401 and error["code"] == "authentication_error"
    assert isinstance(error["message"], str) and error["message"]
    assert answer["requestId"]
