"""The public, key-less endpoints: the model list, one model, the pricing map, health, readiness, metrics, 404s."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from clexproxy.catalog import DEFAULT_MODELS, DEFAULT_PLANS, DEFAULT_TIERS

from .conftest import GatewayFactory, RunningGateway

LARGE = "meta/llama-3.3-70b-instruct"
CLEX_FIELDS = ("publisher", "context_length", "max_output_tokens", "credits_per_call", "tier", "use_case")


async def get(gw: RunningGateway, path: str, **headers: str) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json(), resp.headers
        return resp.status, await resp.text(), resp.headers


def check_model(entry: dict[str, Any]) -> None:
    """OpenAI's model object plus CLEX's fields, consistent with the shipped catalog."""
    model = DEFAULT_MODELS[entry["id"]]
    assert entry["object"] == "model"
    assert isinstance(entry["created"], int)
    assert entry["owned_by"] == entry["id"].split("/", 1)[0]
    assert entry["publisher"] == entry["id"].split("/", 1)[0]
    assert entry["context_length"] == model.context_length
    assert entry["max_output_tokens"] == model.max_output_tokens
    assert entry["tier"] == model.tier
    assert entry["credits_per_call"] == DEFAULT_TIERS[model.tier]
    assert entry["use_case"] == model.use_case and entry["use_case"]  # every shipped model says what it is for


async def test_list_models_raw(gw: RunningGateway) -> None:
    status, doc, headers = await get(gw, "/v1/models")
    assert status == 200 and headers["X-Request-Id"]
    assert doc["object"] == "list"
    assert {m["id"] for m in doc["data"]} == set(DEFAULT_MODELS)
    for entry in doc["data"]:
        check_model(entry)


async def test_list_models_openai_client(gw: RunningGateway, key: str) -> None:
    async with gw.client(key) as client:
        page = await client.models.list()
        models = [m async for m in page]
    assert {m.id for m in models} == set(DEFAULT_MODELS)
    for m in models:
        assert m.object == "model"
        dumped = m.model_dump()
        for name in CLEX_FIELDS:
            assert name in dumped, (m.id, name)
        check_model(dumped)
    large = next(m for m in models if m.id == LARGE)
    assert large.model_dump()["credits_per_call"] == 3 and large.model_dump()["tier"] == "large"


async def test_use_case_from_the_settings_file(make_gateway: GatewayFactory) -> None:
    """A `use_case` in a model table reaches the list and the single model; a new model without one gets ""."""
    gw = await make_gateway(config=f"""
[models."{LARGE}"]
use_case = "Our house chat model"

[models."local/plain"]
deployments = [{{ provider = "nvidia", model = "plain" }}]
""")
    _, doc, _ = await get(gw, "/v1/models")
    listed = {m["id"]: m for m in doc["data"]}
    assert listed[LARGE]["use_case"] == "Our house chat model"
    assert listed["local/plain"]["use_case"] == ""
    status, one, _ = await get(gw, f"/v1/models/{LARGE}")
    assert status == 200 and one["use_case"] == "Our house chat model"


async def test_models_need_no_key(gw: RunningGateway) -> None:
    """The catalog is public: with no key, or even a bad one, the list is served."""
    assert (await get(gw, "/v1/models"))[0] == 200
    assert (await get(gw, "/v1/models", Authorization="Bearer nope"))[0] == 200


async def test_retrieve_model_with_a_slash_raw(gw: RunningGateway) -> None:
    status, doc, _ = await get(gw, f"/v1/models/{LARGE}")
    assert status == 200
    assert doc["id"] == LARGE
    check_model(doc)


async def test_retrieve_model_with_a_slash_openai_client(gw: RunningGateway, key: str) -> None:
    """The SDK percent-encodes the slash (`meta%2Fllama-...`); the gateway must still find the model."""
    async with gw.client(key) as client:
        model = await client.models.retrieve(LARGE)
    assert model.id == LARGE
    check_model(model.model_dump())


async def test_retrieve_percent_encoded_raw(gw: RunningGateway) -> None:
    status, doc, _ = await get(gw, "/v1/models/meta%2Fllama-3.3-70b-instruct")
    assert status == 200, doc
    assert doc["id"] == LARGE


async def test_unknown_model_is_404(gw: RunningGateway, key: str) -> None:
    status, doc, headers = await get(gw, "/v1/models/acme/no-such-model")
    assert status == 404 and headers["X-Request-Id"]
    error = doc["error"]
    assert set(error) >= {"message", "type", "code", "status"}
    assert error["code"] == "model_not_found" and error["status"] == 404
    assert "acme/no-such-model" in error["message"]
    async with gw.client(key) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("acme/no-such-model")
    assert info.value.status_code == 404


async def test_pricing_without_a_key(gw: RunningGateway) -> None:
    status, doc, _ = await get(gw, "/api/credits/pricing")
    assert status == 200
    assert doc["default_credits"] == 1
    tiers = {t["tier"]: t for t in doc["tiers"]}
    assert {name: t["credits"] for name, t in tiers.items()} == dict(DEFAULT_TIERS)
    assert LARGE in tiers["large"]["models"]
    assert sum(len(t["models"]) for t in tiers.values()) == len(DEFAULT_MODELS)
    assert doc["models"] == {mid: DEFAULT_TIERS[m.tier] for mid, m in DEFAULT_MODELS.items()}
    plans = {p["plan"]: (p["credits_per_day"], p["requests_per_minute"], p["max_keys"]) for p in doc["plans"]}
    assert plans == {n: (p.credits_per_day, p.requests_per_minute, p.max_keys) for n, p in DEFAULT_PLANS.items()}


async def test_healthz_and_readyz(gw: RunningGateway) -> None:
    status, doc, _ = await get(gw, "/healthz")
    assert status == 200 and doc["status"] == "ok"
    status, doc, _ = await get(gw, "/readyz")
    assert status == 200
    assert doc["status"] == "ready"
    assert doc["checks"] and all(doc["checks"].values())
    assert {"catalog", "store"} <= set(doc["checks"])


async def test_metrics_after_a_request(gw: RunningGateway, key: str) -> None:
    async with gw.client(key) as client:
        await client.chat.completions.create(model=LARGE, messages=[{"role": "user", "content": "Hi"}], stream=False)
    status, text, headers = await get(gw, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "# TYPE clexproxy_requests_total counter" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("clexproxy_requests_total{"))
    assert f'model="{LARGE}"' in line and 'status_class="2xx"' in line
    assert float(line.rsplit(" ", 1)[1]) == 1.0
    assert "clexproxy_gateway_overhead_seconds_bucket" in text
    # Bounded labels: no account or key in the exposition.
    assert key not in text and "acme" not in text


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v2/chat/completions", "/admin"])
async def test_unknown_path_is_404_json(gw: RunningGateway, path: str) -> None:
    status, doc, headers = await get(gw, path, **{"X-Request-Id": "trace-404"})
    assert status == 404
    assert headers["X-Request-Id"] == "trace-404"
    error = doc["error"]
    assert error["status"] == 404 and error["code"] and error["message"]
    assert path in error["message"]
