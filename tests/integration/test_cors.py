"""CORS on the bearer-key endpoints, against a real gateway: what a page on another origin's `fetch()` gets.

Preflights, and the CORS headers on every answer of those paths to a request with an Origin:
200 JSON and SSE, 400, 401, 404, 405, 429 (the screen's flood included), 500, 503. Never
`Access-Control-Allow-Credentials`, no CORS headers without an Origin, none on the other paths.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from clexproxy.cors import EXPOSED

from .conftest import GatewayFactory, RunningGateway
from .test_screen import exchange, request, screened, spend_rpm

CHEAP = "meta/llama-3.1-8b-instruct"
EMBED = "nvidia/nv-embedqa-e5-v5"
PAGE = "https://page.example"
HELLO = [{"role": "user", "content": "Hello!"}]
CHAT = {"model": CHEAP, "messages": HELLO, "stream": False}
ALLOW_ORIGIN = "Access-Control-Allow-Origin"
CREDENTIALS = "Access-Control-Allow-Credentials"
# (path, the methods its preflight allows)
BEARER_PATHS = [
    ("/v1/chat/completions", "POST"),
    ("/api/chat", "POST"),
    ("/v1/embeddings", "POST"),
    ("/v1/models", "GET, HEAD"),
    (f"/v1/models/{CHEAP}", "GET, HEAD"),
    ("/api/credits/pricing", "GET, HEAD"),
]

Headers = CIMultiDictProxy[str]


async def fetch(
    gw: RunningGateway, method: str, path: str, *, key: str | None = None, origin: str | None = PAGE,
    body: Any = None, **headers: str,
) -> tuple[int, Headers, bytes]:
    """One request as a browser's fetch() would send it: Origin, Bearer key, JSON body."""
    sent = dict(headers)
    if origin is not None:
        sent["Origin"] = origin
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = None if body is None else orjson.dumps(body)
    if data is not None:
        sent["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as session, session.request(
        method, gw.base_url + path, data=data, headers=sent
    ) as resp:
        return resp.status, resp.headers, await resp.read()


async def preflight(gw: RunningGateway, path: str, origin: str = PAGE, method: str = "POST",
                    requested: str = "authorization, content-type") -> tuple[int, Headers, bytes]:
    return await fetch(gw, "OPTIONS", path, origin=origin, **{
        "Access-Control-Request-Method": method, "Access-Control-Request-Headers": requested})


def readable(headers: Headers, origin: str = "*") -> None:
    """What a browser needs to hand the answer and its metering headers to the page's code."""
    assert headers[ALLOW_ORIGIN] == origin
    assert "Origin" in headers["Vary"]
    exposed = {name.strip().lower() for name in headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {name.lower() for name in EXPOSED}
    assert CREDENTIALS not in headers


def not_cors(headers: Headers) -> None:
    assert not [name for name in headers if name.lower().startswith("access-control-")], dict(headers)


@pytest.mark.parametrize(("path", "methods"), BEARER_PATHS)
async def test_preflight_on_every_bearer_path(gw: RunningGateway, path: str, methods: str) -> None:
    status, headers, body = await preflight(gw, path, method=methods.split(",")[0],
                                            requested="authorization, content-type, x-stainless-os, bad name")
    assert status == 204 and body == b""
    assert headers[ALLOW_ORIGIN] == "*"
    assert headers["Access-Control-Allow-Methods"] == methods
    allowed = [name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")]
    assert allowed == ["authorization", "content-type", "x-request-id", "accept", "x-stainless-os"]
    assert headers["Access-Control-Max-Age"] == "7200"
    assert CREDENTIALS not in headers
    assert "OPTIONS" in headers["Allow"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/admin/accounts"])
async def test_other_paths_answer_no_preflight(gw: RunningGateway, path: str) -> None:
    status, headers, _ = await preflight(gw, path, method="GET")
    assert status == 204 and "Allow" in headers
    not_cors(headers)
    status, headers, _ = await fetch(gw, "GET", path)
    not_cors(headers)


async def test_a_plain_options_keeps_its_answer(gw: RunningGateway) -> None:
    """OPTIONS without a preflight's headers: the 204 with Allow it always got (an Origin adds the answer's headers)."""
    status, headers, _ = await fetch(gw, "OPTIONS", "/v1/chat/completions", origin=None)
    assert status == 204 and headers["Allow"] == "POST, OPTIONS"
    not_cors(headers)


async def test_json_answer_is_readable(gw: RunningGateway, key: str) -> None:
    status, headers, body = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT)
    assert status == 200, body
    readable(headers)
    assert headers["X-Clex-Credits-Remaining"] == "1999"


async def test_stream_is_readable(gw: RunningGateway, key: str) -> None:
    status, headers, body = await fetch(gw, "POST", "/api/chat", key=key, body={**CHAT, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.rstrip().endswith(b"data: [DONE]")
    readable(headers)


async def test_embeddings_and_the_get_endpoints_are_readable(gw: RunningGateway, key: str) -> None:
    status, headers, _ = await fetch(gw, "POST", "/v1/embeddings", key=key, body={"model": EMBED, "input": "hi"})
    assert status == 200
    readable(headers)
    for path in ("/v1/models", f"/v1/models/{CHEAP}", "/api/credits/pricing"):
        status, headers, _ = await fetch(gw, "GET", path, key=key)
        assert status == 200, path
        readable(headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "sent", "expected"),
    [
        ("POST", "/v1/chat/completions", CHAT, "clex_" + "x" * 43, 401),  # a key no account holds
        ("POST", "/v1/chat/completions", CHAT, None, 401),  # no key
        ("POST", "/v1/chat/completions", {**CHAT, "model": "no/such-model"}, "key", 404),
        ("POST", "/v1/chat/completions", {"model": CHEAP}, "key", 400),
        ("GET", "/v1/chat/completions", None, "key", 405),
        ("GET", "/v1/models/no/such-model", None, "key", 404),
        ("DELETE", "/v1/models", None, "key", 405),
    ],
)
async def test_refusals_are_readable(
    gw: RunningGateway, key: str, method: str, path: str, body: Any, sent: str | None, expected: int
) -> None:
    status, headers, raw = await fetch(gw, method, path, key=key if sent == "key" else sent, body=body)
    assert status == expected, raw
    assert orjson.loads(raw)["error"]
    readable(headers)


@pytest.mark.parametrize(("knob", "expected"), [("500", 500), ("503", 503)])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failures_are_readable(
    gw: RunningGateway, key: str, knob: str, expected: int, stream: bool
) -> None:
    status, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, body={**CHAT, "stream": stream},
                                     **{"x-demo-status": knob})
    assert status == expected
    readable(headers)
    assert headers["X-Clex-Credits-Remaining"] == "2000"  # refunded, and the page can read it


async def test_a_bug_past_the_handler_is_a_readable_500(
    gw: RunningGateway, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected where no input reaches: the last catch-all's 500 carries the CORS headers too."""

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gateway.limits, "settle", broken)
    status, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT)
    assert status == 500
    readable(headers)


async def test_daily_credits_429_is_readable(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(config='[plans.tiny]\ncredits_per_day = 1\nrequests_per_minute = 100\nmax_keys = 5\n')
    key = await gw.add_key("tiny", "tiny")
    assert (await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT))[0] == 200
    status, headers, raw = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT)
    assert status == 429 and orjson.loads(raw)["error"]["limit"] == "daily_credits"
    readable(headers)
    assert headers["X-Clex-Credits-Remaining"] == "0" and "Retry-After" in headers


async def test_a_browsers_429_in_a_flood_is_readable(gw: RunningGateway) -> None:
    """While the screen answers a spent key from the raw bytes, a call with an Origin still takes the full path."""
    flooder = await gw.add_key("flooder", "free")
    await spend_rpm(gw, flooder)
    await exchange(gw, request(flooder, close=True))  # the full path refuses it, and marks the key
    await exchange(gw, request(flooder))
    before = screened(gw)
    assert before >= 1  # the screen is answering this key
    (status, headers, body), = await exchange(gw, request(flooder, extra=f"Origin: {PAGE}\r\n"))
    assert status == 429 and orjson.loads(body)["error"]["limit"] == "requests_per_minute"
    assert screened(gw) == before  # not screened: the full path answered it
    assert headers["access-control-allow-origin"] == "*"
    assert "x-clex-credits-remaining" in headers["access-control-expose-headers"].lower()
    assert headers["x-ratelimit-remaining-requests"] == "0" and "retry-after" in headers
    (status, headers, _), = await exchange(gw, request(flooder))
    assert status == 429 and screened(gw) == before + 1  # calls without an Origin are still screened
    assert "access-control-allow-origin" not in headers


async def test_no_origin_no_cors_headers(gw: RunningGateway, key: str) -> None:
    for method, path, body, sent in [
        ("POST", "/v1/chat/completions", CHAT, key),
        ("POST", "/v1/chat/completions", CHAT, "clex_" + "x" * 43),
        ("POST", "/api/chat", {**CHAT, "stream": True}, key),
        ("GET", "/v1/models", None, key),
        ("GET", "/v1/chat/completions", None, key),
    ]:
        _, headers, _ = await fetch(gw, method, path, key=sent, body=body, origin=None)
        not_cors(headers)
        assert "Vary" not in headers


async def test_listed_and_unlisted_origins(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cors_allow_origins=f"{PAGE}, http://localhost:3000")
    key = await gw.add_key("acme")
    for origin in (PAGE, "http://localhost:3000"):
        status, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT, origin=origin)
        assert status == 200
        readable(headers, origin)
        status, headers, _ = await fetch(gw, "GET", "/v1/models", key=key, origin=origin)
        readable(headers, origin)
        status, headers, _ = await preflight(gw, "/v1/chat/completions", origin=origin)
        assert status == 204 and headers[ALLOW_ORIGIN] == origin
    for origin in ("https://evil.example", "null", PAGE + ".evil.example"):
        status, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT, origin=origin)
        assert status == 200  # the gateway serves it; the browser keeps the answer from the page
        not_cors(headers)
        status, headers, _ = await preflight(gw, "/v1/chat/completions", origin=origin)
        assert status == 204 and "Allow" in headers
        not_cors(headers)


async def test_cors_off(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(cors_allow_origins="")
    key = await gw.add_key("acme")
    _, headers, _ = await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT)
    not_cors(headers)
    _, headers, _ = await fetch(gw, "GET", "/v1/models", key=key)
    not_cors(headers)
    status, headers, _ = await preflight(gw, "/v1/chat/completions")
    assert status == 204
    not_cors(headers)


@pytest.mark.parametrize("allow", ["*", PAGE])
async def test_a_request_with_cookies_never_gets_allow_credentials(
    make_gateway: GatewayFactory, allow: str
) -> None:
    """Only bearer keys authorise these calls: a cookie-carrying request is never told it may share credentials."""
    gw = await make_gateway(cors_allow_origins=allow)
    key = await gw.add_key("acme")
    cookie = {"Cookie": "clex_session=s3cret"}
    answers = [
        await fetch(gw, "POST", "/v1/chat/completions", key=key, body=CHAT, **cookie),
        await fetch(gw, "POST", "/api/chat", body=CHAT, **cookie),  # a cookie, no key: 401
        await fetch(gw, "GET", "/v1/models", key=key, **cookie),
        await fetch(gw, "OPTIONS", "/api/chat", **cookie, **{"Access-Control-Request-Method": "POST"}),
    ]
    for _status, headers, _ in answers:
        assert CREDENTIALS not in headers
        assert headers[ALLOW_ORIGIN] == allow
    assert answers[1][0] == 401


async def test_the_openai_client_is_unaffected(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHEAP, messages=[{"role": "user", "content": "Hello!"}], stream=False
    )
    assert raw.http_response.status_code == 200 and orjson.loads(raw.content)["choices"][0]["message"]["content"]
    assert ALLOW_ORIGIN not in raw.headers and "Vary" not in raw.headers
    models = await client.models.list()
    assert any(model.id == CHEAP for model in models.data)
