"""Liveness, readiness and the metrics exposition."""

from __future__ import annotations

import orjson
from aiohttp import web

from clexproxy.handlers.common import CATALOG, GATEWAY


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """Ready once the catalog, keys and usage are loaded and the store answers."""
    checks = {"catalog": bool(request.app[CATALOG].models), "store": request.app[GATEWAY].ready}
    ok = all(checks.values())
    return web.Response(
        body=orjson.dumps({"status": "ready" if ok else "not_ready", "checks": checks}),
        status=200 if ok else 503,
        content_type="application/json",
    )


async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[GATEWAY].metrics
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.content_type
    return response
