"""The catalog as clients see it: OpenAI's model list plus CLEX's fields, and the pricing map."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from clexproxy.catalog import Catalog, Model
from clexproxy.errors import ModelNotFound
from clexproxy.handlers.common import CATALOG, request_id

PUBLIC_CACHE = "public, max-age=60"


def model_object(model: Model, catalog: Catalog) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.publisher,
        "publisher": model.publisher,
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "credits_per_call": catalog.cost(model.id),
        "tier": model.tier,
        "type": model.kind,
        "use_case": model.use_case,
    }


def _json(payload: Any, request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={"X-Request-Id": request_id(request), "Cache-Control": PUBLIC_CACHE},
    )


async def list_models(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    return _json({"object": "list", "data": [model_object(m, catalog) for m in catalog.models.values()]}, request)


async def get_model(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    model_id = request.match_info["model_id"]
    model = catalog.models.get(model_id)
    if model is None:
        raise ModelNotFound(f"Model '{model_id}' is not available. Check /v1/models for supported models.")
    return _json(model_object(model, catalog), request)


async def pricing(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    payload = {
        "currency": "credits",
        "default_credits": catalog.default_credits,
        "reset": "00:00 UTC",
        "tiers": [
            {"tier": tier, "credits": credits, "models": [m.id for m in catalog.models.values() if m.tier == tier]}
            for tier, credits in catalog.tiers.items()
        ],
        "models": {m.id: catalog.cost(m.id) for m in catalog.models.values()},
        "plans": [
            {
                "plan": p.name,
                "credits_per_day": p.credits_per_day,
                "requests_per_minute": p.requests_per_minute,
                "max_keys": p.max_keys,
            }
            for p in catalog.plans.values()
        ],
    }
    return _json(payload, request)
