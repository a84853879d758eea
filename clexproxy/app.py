"""build_app(settings) -> web.Application: routes, the error middleware, and the resources' lifecycle.

Every resource (the store, the upstream sessions, the in-process demo upstream, the sync
timers) is opened and closed in `cleanup_ctx`, so an app that started always cleans up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import BinaryIO

from aiohttp import web

from clexproxy.catalog import Provider
from clexproxy.clock import Clock, SystemClock
from clexproxy.config import Settings
from clexproxy.errors import ApiError, InternalError, MethodNotAllowed, NotFound, RequestTooLarge
from clexproxy.gateway import Gateway
from clexproxy.handlers import admin, health, models
from clexproxy.handlers.common import GATEWAY, request_id
from clexproxy.handlers.proxy import PROXIED_PATHS, make_handler
from clexproxy.store.base import open_store

log = logging.getLogger("clexproxy.app")

DEMO_PROVIDER = "demo"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """SPEC's JSON errors and one access line, around every handler but the proxied calls.

    No app-wide middleware: the proxied calls (the traffic) answer their own errors and log
    their own, richer line, and should not pay for a wrapper on every request.
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        response = await _respond(request, handler)
        request.app[GATEWAY].access_log.request(
            request_id(request), request.method, request.path, response.status, started
        )
        return response

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


async def _not_found(request: web.Request) -> web.Response:
    raise NotFound(f"No such endpoint: {request.path}.")


def _method_not_allowed(allowed: str) -> Handler:
    async def refuse(request: web.Request) -> web.Response:
        raise MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.path}; use {allowed}.", headers={"Allow": allowed}
        )

    return refuse


def _json_for_unrouted(router: web.UrlDispatcher) -> None:
    """405s and 404s as SPEC's JSON: a catch-all method on every resource, then a catch-all path."""
    for resource in list(router.resources()):
        if not isinstance(resource, web.Resource):
            continue
        methods = sorted({route.method for route in resource} - {"HEAD"})
        resource.add_route("*", guarded(_method_not_allowed(", ".join(methods))))
    router.add_route("*", "/{path:.*}", guarded(_not_found))


async def _respond(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or SPEC's JSON error for whatever it raised (never a trace)."""
    rid = {"X-Request-Id": request_id(request)}
    try:
        response = await handler(request)
    except ApiError as api_error:
        return api_error.to_response(rid)
    except web.HTTPRequestEntityTooLarge:
        return RequestTooLarge("Request body exceeds the configured limit.").to_response(rid)
    except web.HTTPException as exc:
        if exc.status >= 400:
            other = ApiError(exc.reason)
            other.status = exc.status  # type: ignore[misc]
            return other.to_response(rid)
        raise
    except Exception:
        log.exception("unhandled error, request_id=%s", rid["X-Request-Id"])
        return InternalError("The gateway failed to handle this request.").to_response(rid)
    if not response.prepared and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid["X-Request-Id"]
    return response


async def chat_get(request: web.Request) -> web.Response:
    raise MethodNotAllowed(
        "This endpoint expects a POST request with a JSON body, e.g. "
        '{"model": "meta/llama-3.3-70b-instruct", "messages": [{"role": "user", "content": "Hello!"}]}. '
        "It is an API endpoint for SDKs and HTTP clients, not a web page."
    )


def _gateway_context(
    settings: Settings, clock: Clock, access_stream: BinaryIO | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        demo_server = None
        effective = settings
        if settings.demo:
            url = settings.demo_upstream_url
            if not url:
                from clexproxy.demo_upstream import start_demo_upstream

                demo_server = await start_demo_upstream("127.0.0.1", 0)
                url = demo_server.url
            provider = Provider(DEMO_PROVIDER, url.rstrip("/"), pass_headers=("x-demo-",))
            effective = replace(settings, catalog=settings.catalog.with_all_models_on(provider))
        store = await open_store(settings.data_dir, settings.database_url)
        gateway = Gateway(effective, clock, store, access_stream)
        app[GATEWAY] = gateway
        try:
            await gateway.start()
            yield
        finally:
            await gateway.stop()
            if demo_server is not None:
                await demo_server.close()

    return context


def build_app(settings: Settings, clock: Clock | None = None, access_stream: BinaryIO | None = None) -> web.Application:
    """The gateway app; `access_stream` receives the access lines (stdout unless given: tests pass a buffer)."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app.cleanup_ctx.append(_gateway_context(settings, clock or SystemClock(), access_stream))
    router = app.router
    handlers = {endpoint: make_handler(endpoint) for endpoint in set(PROXIED_PATHS.values())}
    for path, endpoint in PROXIED_PATHS.items():
        router.add_post(path, handlers[endpoint])
        if path == "/v1/chat/completions":  # right after its POST: aiohttp merges them into one resource
            router.add_get(path, guarded(chat_get))  # a browser's GET gets a JSON 405 that explains
    router.add_get("/v1/models", guarded(models.list_models))
    router.add_get("/v1/models/{model_id:.+}", guarded(models.get_model))
    router.add_get("/api/credits/pricing", guarded(models.pricing))
    router.add_get("/healthz", guarded(health.healthz))
    router.add_get("/readyz", guarded(health.readyz))
    router.add_get("/metrics", guarded(health.metrics))
    for method, path, handler in admin.ROUTES:
        router.add_route(method, path, guarded(handler))
    _json_for_unrouted(router)
    return app
