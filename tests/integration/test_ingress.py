"""Every ingress on the one path: Responses, Messages, legacy completions, count_tokens, on real sockets.

What the protocols' own tests cannot see: that each ingress is authenticated (Anthropic's
`x-api-key` too), charged the same credits as a chat call, answers its errors in its own shape
with the metering headers, and that the endpoints beside the calls (count_tokens, a stored
response) are free and say what they are.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from clexproxy.catalog import default_catalog
from tests.integration.conftest import GatewayFactory, RunningGateway

pytestmark = pytest.mark.asyncio

MODEL = "meta/llama-3.1-8b-instruct"  # cheap: 1 credit
LARGE = "meta/llama-3.3-70b-instruct"  # large: 3 credits
HELLO = [{"role": "user", "content": "Hello!"}]


async def _post(gw: RunningGateway, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.base_url + path, data=orjson.dumps(body),
                                headers={"Content-Type": "application/json", **headers}) as response:
            raw = await response.read()
            return response.status, response.headers, raw


def _json(raw: bytes) -> Any:
    return orjson.loads(raw)


def _events(raw: bytes) -> list[tuple[str | None, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, None if data == "[DONE]" else orjson.loads(data)))
    return out


async def test_messages_by_x_api_key_is_charged_as_chat(gw: RunningGateway, key: str) -> None:
    status, headers, raw = await _post(gw, "/v1/messages", {"model": LARGE, "max_tokens": 64, "messages": HELLO},
                                       {"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert status == 200, raw
    message = _json(raw)
    assert message["type"] == "message" and message["model"] == LARGE
    assert message["content"][0]["type"] == "text" and message["content"][0]["text"]
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] > 0
    assert headers["X-Clex-Credits-Remaining"] == "1997"  # pro: 2,000 a day, a large model costs 3


async def test_messages_errors_in_anthropics_shape_with_metering(gw: RunningGateway, key: str) -> None:
    status, _, raw = await _post(gw, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": HELLO},
                                 {"x-api-key": "clex_" + "x" * 40})
    assert status == 401
    error = _json(raw)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert set(error) == {"type", "error"}
    status, headers, raw = await _post(gw, "/v1/messages", {"model": MODEL, "messages": HELLO}, {"x-api-key": key})
    assert status == 400
    assert _json(raw)["error"]["type"] == "invalid_request_error" and "max_tokens" in _json(raw)["error"]["message"]
    assert headers["X-Clex-Credits-Remaining"] == "2000"  # refused: nothing charged
    status, _, raw = await _post(gw, "/v1/messages", {"model": "no/such", "max_tokens": 8, "messages": HELLO},
                                 {"Authorization": f"Bearer {key}"})
    assert status == 404 and _json(raw)["error"]["type"] == "not_found_error"


async def test_messages_stream_events_and_usage(gw: RunningGateway, key: str) -> None:
    status, headers, raw = await _post(
        gw, "/v1/messages", {"model": MODEL, "max_tokens": 64, "messages": HELLO, "stream": True}, {"x-api-key": key})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "content_block_delta" in names and "message_delta" in names
    for name, data in events:
        assert data["type"] == name
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0
    assert headers["X-Clex-Credits-Remaining"] == "1999"


async def test_responses_stream_and_json(gw: RunningGateway, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    status, headers, raw = await _post(gw, "/v1/responses", {"model": MODEL, "input": "Hi"}, auth)
    assert status == 200, raw
    response = _json(raw)
    assert response["object"] == "response" and response["status"] == "completed" and response["model"] == MODEL
    assert response["output"][0]["content"][0]["text"]
    assert response["usage"]["output_tokens"] > 0
    status, headers, raw = await _post(gw, "/v1/responses", {"model": MODEL, "input": "Hi", "stream": True}, auth)
    assert status == 200
    events = _events(raw)
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[-1][1]["response"]["usage"]["total_tokens"] > 0
    assert headers["X-Clex-Credits-Remaining"] == "1998"


async def test_responses_are_not_stored(gw: RunningGateway, key: str) -> None:
    status, _, raw = await _post(gw, "/v1/responses",
                                 {"model": MODEL, "input": "Hi", "previous_response_id": "resp_1"},
                                 {"Authorization": f"Bearer {key}"})
    assert status == 400 and "previous_response_id" in _json(raw)["error"]["message"]
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/v1/responses/resp_1", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 404
            assert "does not store responses" in (await r.json())["error"]["message"]
        async with session.get(gw.base_url + "/v1/responses/resp_1", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401


async def test_count_tokens_is_free_and_validated(gw: RunningGateway, key: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}]}
    status, headers, raw = await _post(gw, "/v1/messages/count_tokens", body, {"x-api-key": key})
    assert status == 200, raw
    assert set(_json(raw)) == {"input_tokens"} and _json(raw)["input_tokens"] > 0
    assert headers["X-Clex-Credits-Remaining"] == "2000"
    status, _, raw = await _post(gw, "/v1/messages/count_tokens", {**body, "model": "no/such"}, {"x-api-key": key})
    assert status == 404 and _json(raw)["error"]["type"] == "not_found_error"
    status, _, raw = await _post(gw, "/v1/messages/count_tokens", {"model": MODEL}, {"x-api-key": key})
    assert status == 400 and _json(raw)["type"] == "error"
    status, _, raw = await _post(gw, "/v1/messages/count_tokens", body, {})
    assert status == 401 and _json(raw)["error"]["type"] == "authentication_error"


async def test_legacy_completions_where_served(make_gateway: GatewayFactory, upstream: Any) -> None:
    gw = await make_gateway()
    key = await gw.add_key("acme", "pro")
    auth = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    status, headers, raw = await _post(gw, "/v1/completions", {"model": MODEL, "prompt": "Say hi"}, auth)
    assert status == 200, raw
    doc = _json(raw)
    assert doc["object"] == "text_completion" and doc["model"] == MODEL and doc["choices"][0]["text"]
    status, headers, raw = await _post(gw, "/v1/completions",
                                       {"model": MODEL, "prompt": "Say hi", "stream": True}, auth)
    assert status == 200
    events = _events(raw)
    assert events[-1] == (None, None) and all(e[1]["object"] == "text_completion" for e in events[:-1])
    assert headers["X-Clex-Credits-Remaining"] == "1998"
    status, _, raw = await _post(gw, "/v1/completions", {"model": MODEL}, auth)
    assert status == 400 and _json(raw)["error"]["param"] == "prompt"



async def test_legacy_completions_refused_where_not_served(make_gateway: GatewayFactory, upstream: Any) -> None:
    config = (f'[providers.plain]\nbase_url = "{upstream.url}"\n'
              f'[models."{MODEL}"]\ndeployments = [{{provider = "plain", model = "{MODEL}"}}]\n')
    gw = await make_gateway(config=config, demo=False)
    key = await gw.add_key("acme", "pro")
    status, headers, raw = await _post(gw, "/v1/completions", {"model": MODEL, "prompt": "Say hi"},
                                       {"Authorization": f"Bearer {key}"})
    assert status == 400
    error = _json(raw)["error"]
    assert error["param"] == "model" and "/v1/chat/completions" in error["message"]
    assert headers["X-Clex-Credits-Remaining"] == "2000"
    assert not default_catalog().models[MODEL].completions
