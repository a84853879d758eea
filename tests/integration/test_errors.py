"""Every row of SPEC's error table, through the official openai client and raw HTTP.

Each error is SPEC's JSON with the HTTP status equal to `error.status`; a rejected or failed
call charges nothing; no provider URL or credential leaks into any error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from clexproxy.demo.recorder import DemoRecorder

from .conftest import GatewayFactory, RunningGateway

MODEL = "meta/llama-3.3-70b-instruct"
HELLO = [{"role": "user", "content": "Hello!"}]


async def post(gw: RunningGateway, key: str | None, body: Any, path: str = "/v1/chat/completions",
               **headers: str) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    hdrs = dict(headers)
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, str)) else None
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + path, data=data, json=None if data is not None else body, headers=hdrs
    ) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, doc, resp.headers


def assert_error(status: int, doc: dict[str, Any], expected_status: int, code: str) -> dict[str, Any]:
    assert status == expected_status, doc
    error = doc["error"]
    assert set(error) >= {"message", "type", "code", "status"}
    assert error["status"] == expected_status and error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b"", "empty"),
        ([1, 2], "object"),
        ({"messages": HELLO}, "model"),
        ({"model": 7, "messages": HELLO}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "temperature": 2.5}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "temperature": -0.1}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": HELLO, "top_p": True}, "top_p"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 1.5}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": HELLO, "stream_options": 1}, "stream_options"),
        ({"model": "nvidia/nv-embedqa-e5-v5", "messages": HELLO}, "embedding"),
    ],
)
async def test_400_names_the_field_and_charges_nothing(gw: RunningGateway, key: str, body: Any, field: str) -> None:
    status, doc, headers = await post(gw, key, body)
    error = assert_error(status, doc, 400, "invalid_request_error")
    assert field in error["message"]
    assert headers["X-Clex-Credits-Remaining"] == "2000"
    assert headers["x-ratelimit-limit-requests"] == "200"
    assert headers["X-Request-Id"]


async def test_400_embeddings_input(gw: RunningGateway, key: str) -> None:
    status, doc, _ = await post(gw, key, {"model": "nvidia/nv-embedqa-e5-v5", "input": [None]}, "/v1/embeddings")
    assert "input[0]" in assert_error(status, doc, 400, "invalid_request_error")["message"]
    status, doc, _ = await post(gw, key, {"model": MODEL, "input": "x"}, "/v1/embeddings")
    assert "chat" in assert_error(status, doc, 400, "invalid_request_error")["message"]


async def test_400_through_openai_client(gw: RunningGateway, key: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, temperature=9)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-clex-key", "Bearer clex_short",
     "Bearer clex_" + "A" * 43],
)
async def test_401_missing_malformed_unknown(gw: RunningGateway, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, doc, resp_headers = await post(gw, None, {"model": MODEL, "messages": HELLO}, **headers)
    assert_error(status, doc, 401, "authentication_error")
    assert resp_headers["X-Request-Id"]


async def test_401_revoked_key_and_openai_client(gw: RunningGateway, key: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        await gw.client("clex_" + "b" * 40).chat.completions.create(model=MODEL, messages=HELLO)
    keys = await gw.gateway.store.list_keys("acme")
    await gw.gateway.store.revoke_key(keys[0].id)
    await gw.gateway.sync.sync_store(force=True)
    status, doc, _ = await post(gw, key, {"model": MODEL, "messages": HELLO})
    assert_error(status, doc, 401, "authentication_error")


async def test_404_unknown_model(gw: RunningGateway, key: str) -> None:
    status, doc, headers = await post(gw, key, {"model": "meta/llama-nonexistent", "messages": HELLO})
    error = assert_error(status, doc, 404, "model_not_found")
    assert "meta/llama-nonexistent" in error["message"] and "/v1/models" in error["message"]
    assert headers["X-Clex-Credits-Remaining"] == "2000"
    with pytest.raises(openai.NotFoundError):
        await gw.client(key).chat.completions.create(model="nope/nope", messages=HELLO)


async def test_404_when_upstream_says_model_does_not_exist(gw: RunningGateway, key: str) -> None:
    for stream in (False, True):
        status, doc, headers = await post(
            gw, key, {"model": MODEL, "messages": HELLO, "stream": stream}, **{"x-demo-model-missing": "1"}
        )
        assert_error(status, doc, 404, "model_not_found")
        assert headers["X-Clex-Credits-Remaining"] == "2000"  # refunded


async def test_405(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/v1/chat/completions") as resp:
            doc = await resp.json()
            error = assert_error(resp.status, doc, 405, "method_not_allowed")
            assert "POST" in error["message"] and "JSON" in error["message"]
        async with session.delete(gw.base_url + "/v1/models") as resp:
            assert_error(resp.status, await resp.json(), 405, "method_not_allowed")
            assert "GET" in resp.headers["Allow"]


async def test_413_body_over_the_limit(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(max_body_bytes=4096)
    key = await gw.add_key("big", "pro")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000}]}
    status, doc, headers = await post(gw, key, body)
    assert_error(status, doc, 413, "request_too_large")
    assert headers["X-Clex-Credits-Remaining"] == "2000"


async def chunked(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """A body sent without Content-Length: the gateway only learns its size by reading it."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_413_for_a_chunked_body_over_the_limit_and_200_under_it(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(max_body_bytes=4096)
    key = await gw.add_key("chunky", "pro")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    over = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000}]})
    under = orjson.dumps({"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "x" * 3_000}]})
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.base_url + "/v1/chat/completions", data=chunked(over), headers=headers) as resp:
            assert "Content-Length" not in resp.request_info.headers
            error = assert_error(resp.status, await resp.json(), 413, "request_too_large")
            assert "4096 bytes" in error["message"]
            assert resp.headers["X-Clex-Credits-Remaining"] == "2000"
        async with session.post(gw.base_url + "/v1/chat/completions", data=chunked(under), headers=headers) as resp:
            assert resp.status == 200  # read in several pieces, parsed whole
            assert (await resp.json())["object"] == "chat.completion"


async def test_413_default_limit_is_16_mib(gw: RunningGateway, key: str) -> None:
    near = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "x" * (15 * 1024 * 1024)}]}
    status, _, _ = await post(gw, key, near)
    assert status == 200
    over = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]}
    status, doc, _ = await post(gw, key, over)
    assert_error(status, doc, 413, "request_too_large")


@pytest.mark.parametrize("stream", [False, True])
async def test_500_upstream_failure_refunds(gw: RunningGateway, key: str, stream: bool) -> None:
    status, doc, headers = await post(
        gw, key, {"model": MODEL, "messages": HELLO, "stream": stream}, **{"x-demo-status": "500"}
    )
    assert_error(status, doc, 500, "internal_server_error")
    assert headers["X-Clex-Credits-Remaining"] == "2000"


@pytest.mark.parametrize("upstream_status", ["503", "429", "502"])
async def test_503_upstream_overloaded(gw: RunningGateway, key: str, upstream_status: str) -> None:
    status, doc, headers = await post(
        gw, key, {"model": MODEL, "messages": HELLO}, **{"x-demo-status": upstream_status}
    )
    assert_error(status, doc, 503, "service_unavailable")
    assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert headers["X-Clex-Credits-Remaining"] == "2000"


async def test_503_upstream_unreachable_and_no_url_leaks(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(demo_upstream_url="http://127.0.0.1:9/v1", upstream_connect_timeout=2.0)
    key = await gw.add_key("lonely", "pro")
    status, doc, headers = await post(gw, key, {"model": MODEL, "messages": HELLO, "stream": False})
    error = assert_error(status, doc, 503, "service_unavailable")
    assert "127.0.0.1" not in str(doc) and ":9" not in error["message"]
    assert headers["Retry-After"]
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 503


async def test_retry_then_fallback(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    """A failing deployment is retried on the fallback model before any error reaches the client."""
    status, doc, _ = await post(
        gw, key, {"model": MODEL, "messages": HELLO, "stream": False},
        **{"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": "fb-1"},
    )
    assert status == 200, doc
    models = [r.body.get("model") for r in recorder.requests[-2:]]
    assert models == [MODEL, "meta/llama-3.1-8b-instruct"]


async def test_errors_never_leak_provider_url_or_credential(
    make_gateway: GatewayFactory, upstream: Any, tmp_path: Any
) -> None:
    """A provider configured by TOML with a real credential: errors mention neither it nor the URL."""
    secret = "nvapi-SECRET-credential-value"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[providers.local]\nbase_url = "{upstream.url}"\napi_key_env = "TEST_PROVIDER_KEY"\n'
        'pass_headers = ["x-demo-"]\n'
        '[catalog]\nfallback_model = ""\n'
        '[models."local/model"]\ntier = "standard"\ndeployments = [{provider = "local", model = "m"}]\n'
    )
    from clexproxy.config import load_settings

    from .conftest import start_gateway

    settings = load_settings(config, env={"TEST_PROVIDER_KEY": secret}, overrides={"data_dir": str(tmp_path / "d")})
    gw = await start_gateway(settings)
    try:
        key = await gw.add_key("cfg", "pro")
        for knob in ({"x-demo-status": "500"}, {"x-demo-status": "400"}, {"x-demo-status": "503"}):
            status, doc, _ = await post(gw, key, {"model": "local/model", "messages": HELLO, "stream": False}, **knob)
            assert status >= 400
            assert secret not in str(doc) and upstream.url not in str(doc) and "127.0.0.1" not in str(doc)
        status, doc, _ = await post(gw, key, {"model": "local/model", "messages": HELLO, "stream": False})
        assert status == 200
        assert upstream.recorder.requests[-1].headers["authorization"] == f"Bearer {secret}"
        assert upstream.recorder.requests[-1].body["model"] == "m"
    finally:
        await gw.stop()
