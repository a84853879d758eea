"""build_app(settings) -> web.Application: routes, the error middleware, and the resources' lifecycle.

Every resource (the store, the upstream sessions, the in-process demo upstream, the sync
timers) is opened and closed in `cleanup_ctx`, so an app that started always cleans up. The app
state handlers read is typed and narrow (`GATEWAY`, `CATALOG`, `ADMIN_TOKEN`): no handler reads
the settings.

The bearer-key endpoints (the proxied calls and `BEARER_GETS`) answer browsers on other origins
(`CorsPolicy`, built once from `[cors] allow_origins`): their preflights, and the CORS headers on
every answer to a request with an Origin, errors included. No other path does: the health,
metrics and admin endpoints are not for pages on other origins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import BinaryIO

import orjson
from aiohttp import web

from clexproxy.catalog import Catalog, Provider
from clexproxy.clock import Clock, SystemClock
from clexproxy.config import Settings
from clexproxy.cors import ALLOW_ORIGIN, REQUEST_HEADERS, REQUEST_METHOD, CorsPolicy
from clexproxy.errors import ApiError, InternalError, MethodNotAllowed, NotFound, RequestTooLarge
from clexproxy.gateway import Gateway
from clexproxy.handlers import admin, health, key, models
from clexproxy.handlers.common import ADMIN_TOKEN, CATALOG, GATEWAY, PROXIED_HANDLERS, request_id
from clexproxy.handlers.ingress import PROXIED_PATHS
from clexproxy.handlers.protocol_endpoints import make_count_tokens, stored_response
from clexproxy.handlers.proxy import ProxiedEndpoint
from clexproxy.handlers.usage import api_usage
from clexproxy.observability.accesslog import text_value
from clexproxy.store import open_store
from clexproxy.web import accounts, keys, pages, signin, usage, users

log = logging.getLogger("clexproxy.app")

DEMO_PROVIDER = "demo"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler, cors: CorsPolicy | None = None) -> Handler:
    """SPEC's JSON errors and one access line, around every handler but the proxied calls.

    No app-wide middleware: the proxied calls (the traffic) answer their own errors and log
    their own, richer line, and should not pay for a wrapper on every request. With `cors` (a
    bearer-key endpoint), every answer to a request with an Origin carries the CORS headers.
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        response = await _respond(request, handler)
        if cors is not None and not response.prepared and ALLOW_ORIGIN not in response.headers:
            response.headers.update(cors.answer(request.headers.get("Origin")))
        # The path as sent (still percent-encoded, no query string): what the client wrote, never forgeable.
        request.app[GATEWAY].access_log.request(
            request_id(request), request.method, request.rel_url.raw_path, response.status, started
        )
        return response

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


async def _served_by_connection(request: web.Request) -> web.Response:
    """A proxied call that reached the router: the app runs without `GatewayRunner`, whose connections serve them."""
    rid = request_id(request)
    log.error("a proxied call reached aiohttp's router: serve the app with GatewayRunner, request_id=%s", rid)
    return InternalError("The gateway failed to handle this request.").to_response({"X-Request-Id": rid})


async def _not_found(request: web.Request) -> web.Response:
    raise NotFound(f"No such endpoint: {request.path}.")


def _method_not_allowed(methods: list[str], example: bytes | None, cors: CorsPolicy | None) -> Handler:
    """The answer to any other method on a known path: OPTIONS learns the methods, the rest get a JSON 405.

    `example` is a body the path takes (the API endpoints): a GET there (a browser, a curl
    without a body) is told how to call it instead. With `cors` (a bearer-key endpoint), an
    OPTIONS with Origin and Access-Control-Request-Method is a browser's preflight: its 204 also
    says what an allowed origin may send (`CorsPolicy.preflight`); an origin not allowed gets the
    plain 204, and its browser gives up.
    """
    with_head = [*methods, *(["HEAD"] if "GET" in methods else [])]
    allow = ", ".join([*with_head, "OPTIONS"])
    cross_origin = ", ".join(with_head)
    use = " or ".join(methods)

    async def refuse(request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            headers = request.headers
            if cors is not None and REQUEST_METHOD in headers:
                preflight = cors.preflight(headers.get("Origin"), cross_origin, headers.get(REQUEST_HEADERS))
                return web.Response(status=204, headers={"Allow": allow, **preflight})
            return web.Response(status=204, headers={"Allow": allow})
        path = request.path
        if example is not None and request.method in ("GET", "HEAD"):
            raise MethodNotAllowed(
                f"{path} is an API endpoint for SDKs and HTTP clients, not a web page: send it a POST with a "
                f"JSON body (Content-Type: application/json) and your key as 'Authorization: Bearer <key>', "
                f"e.g. {example.decode()}.",
                headers={"Allow": allow},
            )
        raise MethodNotAllowed(f"{path} does not take {request.method}; use {use}.", headers={"Allow": allow})

    return refuse


def _examples(catalog: Catalog) -> dict[str, bytes]:
    """A body each API endpoint takes, for its 405 to a GET: the fallback (cheap) model, or the first of its kind."""
    def model(kind: str) -> str:
        fallback = catalog.models.get(catalog.fallback_model or "")
        if fallback is not None and fallback.kind == kind:
            return fallback.id
        return next((m.id for m in catalog.models.values() if m.kind == kind), "<model id>")

    chat, hello = model("chat"), [{"role": "user", "content": "Hello!"}]
    bodies = {
        "chat": {"model": chat, "messages": hello},
        "embeddings": {"model": model("embedding"), "input": "Hello!"},
        "completions": {"model": chat, "prompt": "Hello!"},
        "responses": {"model": chat, "input": "Hello!"},
        "messages": {"model": chat, "max_tokens": 256, "messages": hello},
    }
    return {path: orjson.dumps(bodies[ingress.api]) for path, ingress in PROXIED_PATHS.items()}


def _json_for_unrouted(
    router: web.UrlDispatcher, examples: Mapping[str, bytes], cors: CorsPolicy | None, bearer: set[str]
) -> None:
    """405s and 404s as SPEC's JSON: a catch-all method on every resource, then a catch-all path.

    The resources in `bearer` (canonical paths) answer preflights and put the CORS headers on their 405s.
    """
    for resource in list(router.resources()):
        if not isinstance(resource, web.Resource):
            continue
        methods = sorted({route.method for route in resource} - {"HEAD"})
        example = examples.get(resource.canonical)
        policy = cors if resource.canonical in bearer else None
        resource.add_route("*", guarded(_method_not_allowed(methods, example, policy), policy))
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
        log.exception("unhandled error, request_id=%s", text_value(rid["X-Request-Id"]))
        return InternalError("The gateway failed to handle this request.").to_response(rid)
    if not response.prepared and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid["X-Request-Id"]
    return response


def _gateway_context(
    settings: Settings, clock: Clock, access_stream: BinaryIO | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        demo_server = None
        effective = settings
        if settings.server.demo:
            url = settings.demo.upstream_url
            if not url:
                from clexproxy.demo.upstream import start_demo_upstream

                demo_server = await start_demo_upstream("127.0.0.1", 0)
                url = demo_server.url
            provider = Provider(DEMO_PROVIDER, url.rstrip("/"), pass_headers=("x-demo-",))
            effective = replace(settings, catalog=settings.catalog.with_all_models_on(provider))
        store = await open_store(settings.server.data_dir, settings.database.url)
        gateway = Gateway(effective, clock, store, access_stream)
        app[GATEWAY] = gateway
        app[CATALOG] = gateway.catalog
        try:
            await gateway.start()
            yield
        finally:
            await gateway.stop()
            if demo_server is not None:
                await demo_server.close()

    return context


# The console's modules, each with its ROUTES as (method, path, handler): served when `[console] enabled`.
CONSOLE_MODULES = (pages, signin, keys, usage, accounts, users)

# The bearer-key GET endpoints: with the proxied calls, what pages on other origins may call (CORS). One line each.
BEARER_GETS: dict[str, Handler] = {
    "/v1/models": models.list_models,
    "/v1/models/{model_id:.+}": models.get_model,
    "/api/credits/pricing": models.pricing,
    "/api/key": key.key_info,
    "/api/usage": api_usage,
}


def build_app(settings: Settings, clock: Clock | None = None, access_stream: BinaryIO | None = None) -> web.Application:
    """The gateway app; `access_stream` receives the access lines (stdout unless given: tests pass a buffer)."""
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[ADMIN_TOKEN] = settings.server.admin_token
    app.cleanup_ctx.append(_gateway_context(settings, clock or SystemClock(), access_stream))
    router = app.router
    policy = CorsPolicy(settings.cors.allow_origins)
    cors = policy if policy.enabled else None
    handlers = {
        ingress.api: ProxiedEndpoint(ingress, settings.server.max_body_bytes, settings.sse.json_user_agents, policy)
        for ingress in PROXIED_PATHS.values()
    }
    app[PROXIED_HANDLERS] = {path: handlers[ingress.api] for path, ingress in PROXIED_PATHS.items()}
    bearer: set[str] = set()
    for path in PROXIED_PATHS:
        # The POST route is never called (the connection serves these calls); it names the method for the
        # preflights and the 405s, and a GET gets a JSON 405 that says what to send (_json_for_unrouted).
        bearer.add(router.add_post(path, _served_by_connection).resource.canonical)  # type: ignore[union-attr]
    for path, handler in BEARER_GETS.items():
        bearer.add(router.add_get(path, guarded(handler, cors)).resource.canonical)  # type: ignore[union-attr]
    count_tokens = guarded(make_count_tokens(settings.server.max_body_bytes), cors)
    bearer.add(router.add_post("/v1/messages/count_tokens", count_tokens).resource.canonical)  # type: ignore[union-attr]
    stored = router.add_resource("/v1/responses/{response_id}")
    stored.add_route("GET", guarded(stored_response, cors))
    stored.add_route("DELETE", guarded(stored_response, cors))
    bearer.add(stored.canonical)
    router.add_get("/healthz", guarded(health.healthz))
    router.add_get("/readyz", guarded(health.readyz))
    router.add_get("/metrics", guarded(health.metrics))
    for method, path, handler in admin.ROUTES:
        router.add_route(method, path, guarded(handler))
    if settings.console.enabled:  # off: the pages are unknown paths, SPEC's JSON 404
        pages.setup(app)
        for module in CONSOLE_MODULES:
            for method, path, page in module.ROUTES:
                router.add_route(method, path, guarded(page))
    _json_for_unrouted(router, _examples(settings.catalog), cors, bearer)
    return app
