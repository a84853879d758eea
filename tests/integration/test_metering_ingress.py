"""Issue 13, item 5, end to end: a call through each ingress shows its api in the metrics and the access line.

Real sockets: aiohttp clients → clexproxy → the demo upstream. Each protocol is called streamed and not (embeddings
only whole); a scrape must count each under its own `api` with the upstream endpoint that served it, and each
access line must name it right after the endpoint.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import aiohttp
import pytest

from tests.metrics_samples import Samples, parse_samples, sample_total

from .conftest import GatewayFactory, RunningGateway

MODEL = "meta/llama-3.3-70b-instruct"
EMBEDDING = "nvidia/nv-embedqa-e5-v5"
PROMPT = "a prompt about penguins"

# api → (path, the upstream endpoint it is served by, body, whether it streams)
CALLS: dict[str, tuple[str, str, dict[str, Any], bool]] = {
    "chat": ("/v1/chat/completions", "/chat/completions",
             {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}, True),
    "responses": ("/v1/responses", "/chat/completions", {"model": MODEL, "input": PROMPT}, True),
    "messages": ("/v1/messages", "/chat/completions",
                 {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]}, True),
    "completions": ("/v1/completions", "/completions", {"model": MODEL, "prompt": PROMPT}, True),
    "embeddings": ("/v1/embeddings", "/embeddings", {"model": EMBEDDING, "input": PROMPT}, False),
}  # fmt: skip


async def call_every_api(gw: RunningGateway, key: str) -> None:
    """Each api once whole and, where it streams, once streamed (with usage asked for where the protocol can)."""
    async with aiohttp.ClientSession() as session:
        for api, (path, _, body, streams) in CALLS.items():
            bodies = [{**body, "stream": False} if streams else body]  # chat's `stream` defaults to true (SPEC)
            if streams:
                extra: dict[str, Any] = {"stream": True}
                if api in ("chat", "completions"):
                    extra["stream_options"] = {"include_usage": True}
                bodies.append({**body, **extra})
            for sent in bodies:
                rid = f"{api}-{'s' if sent.get('stream') else 'w'}"
                headers = {"Authorization": f"Bearer {key}", "X-Request-Id": rid}
                async with session.post(gw.base_url + path, json=sent, headers=headers) as response:
                    raw = await response.read()
                    assert response.status == 200, (api, raw[:300])


async def scrape(gw: RunningGateway) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/metrics") as response:
        return parse_samples(await response.text())


async def test_every_api_is_counted_under_its_own_label(gw: RunningGateway, key: str) -> None:
    await call_every_api(gw, key)
    found = await scrape(gw)
    for api, (_, endpoint, _, streams) in CALLS.items():
        calls = 2 if streams else 1
        requests = sample_total(found, "clexproxy_requests_total", endpoint=endpoint, api=api, status_class="2xx")
        assert requests == calls, api
        assert sample_total(found, "clexproxy_request_duration_seconds_count", endpoint=endpoint, api=api) == calls, api
        assert sample_total(found, "clexproxy_gateway_overhead_seconds_count", endpoint=endpoint, api=api) == calls, api
        assert sample_total(found, "clexproxy_tokens_total", api=api, kind="prompt") > 0, api
        if streams:
            assert sample_total(found, "clexproxy_stream_ttft_seconds_count", api=api) == 1, api
            assert sample_total(found, "clexproxy_tokens_total", api=api, kind="completion") > 0, api
    apis = {dict(labels)["api"] for name, labels in found if name == "clexproxy_requests_total"}
    assert apis == set(CALLS)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_every_api_is_named_in_its_access_line(
    make_gateway: GatewayFactory, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")
    sink = io.BytesIO()
    gw = await make_gateway(access_stream=sink, log_format=fmt)
    key = await gw.add_key("metered", "pro")
    await call_every_api(gw, key)
    gw.gateway.access_log.flush()
    lines = sink.getvalue().decode().splitlines()
    for api, (_, endpoint, _, streams) in CALLS.items():
        for suffix in ("w", "s") if streams else ("w",):
            rid = f"{api}-{suffix}"
            if fmt == "json":
                line = next(json.loads(ln) for ln in lines if f'"request_id":"{rid}"' in ln)
                keys = list(line)
                assert line["api"] == api and line["endpoint"] == endpoint and line["status"] == 200
                assert keys[keys.index("endpoint") + 1] == "api"
            else:
                text = next(ln for ln in lines if f"request_id={rid} " in ln)
                assert f" endpoint={endpoint} api={api} model=" in text and " status=200 " in text
