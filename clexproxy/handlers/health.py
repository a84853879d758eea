"""Liveness, readiness and the metrics exposition."""

from __future__ import annotations

import orjson
from aiohttp import web

from clexproxy.handlers.common import GATEWAY


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """Ready once the catalog, keys and usage are loaded and the store answers."""
    gateway = request.app[GATEWAY]
    checks = {"catalog": bool(gateway.catalog.models), "store": gateway.ready}
    ok = all(checks.values())
    return web.Response(
        body=orjson.dumps({"status": "ready" if ok else "not_ready", "checks": checks}),
        status=200 if ok else 503,
        content_type="application/json",
    )


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    response = web.Response(body=gateway.metrics.render())
    response.headers["Content-Type"] = gateway.metrics.content_type
    return response
