"""The console's public pages (`/`, `/docs`, `/models`) and their static files, and the headers every page carries.

`setup` gives the app its Jinja2 environment (templates from the package, autoescaped) and reads
the static files once into memory: two small files, served from a dict with a content hash as
their ETag and in their URL (`?v=`), so a browser caches them for a day and a new release is
fetched at once. `ROUTES` are plain handlers: `build_app` wraps them like every non-proxied
handler, so an error is still SPEC's JSON and each request gets its access line.

Every page says `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and a
Content-Security-Policy of this origin only (no inline script or style, no other host), so
catalog text rendered into a page can never run as code even if autoescaping were bypassed.

`page` renders every console page, with the signed-in user (`signed_in`) and their session's CSRF
token in the context, so the shared layout shows Keys / Usage / Sign out, or Sign in, on every page.

The models page reads the catalog the API's `/v1/models` and `/api/credits/pricing` read, through
the same `model_object`, so a page never shows a price the API does not charge. The docs page
takes its plans, tiers and model list from that catalog too; its API Explorer (a static script)
calls `/api/chat` on this origin with a key the user pastes, held in the page's memory only.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from clexproxy.errors import NotFound
from clexproxy.handlers.common import CATALOG, request_id
from clexproxy.handlers.models import model_object
from clexproxy.web import session
from clexproxy.web.session import signed_in

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}
# Pages show the live catalog: a browser asks again every time (the ETag-less HTML is small).
PAGE_CACHE = "no-cache"
STATIC_CACHE = "public, max-age=86400"
STATIC_FILES = ("console.css", "console.js", "explorer.js", "keys.js")


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One static file held in memory: its bytes, type and the hash that names this version."""

    body: bytes
    content_type: str
    etag: str

    @property
    def version(self) -> str:
        return self.etag.strip('"')


STATIC: web.AppKey[dict[str, StaticFile]] = web.AppKey("console_static", dict)


def _load_static() -> dict[str, StaticFile]:
    folder = resources.files(__package__ or "clexproxy.web") / "static"
    files = {}
    for name in STATIC_FILES:
        body = (folder / name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        files[name] = StaticFile(body, kind, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return files


def setup(app: web.Application) -> None:
    """The Jinja2 environment (package templates, autoescaped, undefined names an error) and the static files."""
    static = _load_static()
    app[STATIC] = static
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("clexproxy.web", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_url"] = lambda name: f"/static/{name}?v={static[name].version}"
    session.setup(app)


def base_url(request: web.Request) -> str:
    """This gateway's own address as the browser reached it: what an SDK's base URL should be."""
    return str(request.url.origin())


async def page(request: web.Request, template: str, nav: str, context: dict[str, Any]) -> web.Response:
    """Render a console page with the signed-in user (`user`, `csrf_token`: None signed out) and the page headers."""
    user = await signed_in(request)
    full = {"nav": nav, "base_url": base_url(request), "user": user, "csrf_token": user.csrf_token if user else None,
            **context}
    response = aiohttp_jinja2.render_template(template, request, full)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = PAGE_CACHE
    response.headers["X-Request-Id"] = request_id(request)
    return response


async def home(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    cheap = catalog.fallback_model if catalog.fallback_model in catalog.models else None
    example = cheap or next((m.id for m in catalog.models.values() if m.kind == "chat"), "<model id>")
    return await page(request, "index.html", "home", {
        "base_url": base_url(request),
        "example_model": example,
        "model_count": len(catalog.models),
    })


async def models_page(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    rows = [model_object(model, catalog) for model in catalog.models.values()]
    return await page(request, "models.html", "models", {"models": rows, "base_url": base_url(request)})


async def docs_page(request: web.Request) -> web.Response:
    """The API reference for this gateway's base URL, with plans and tiers from the catalog, and the Explorer."""
    catalog = request.app[CATALOG]
    chat = [model_object(m, catalog) for m in catalog.models.values() if m.kind == "chat"]
    cheap = catalog.fallback_model if catalog.fallback_model in catalog.models else None
    tiers = [
        {"name": name, "credits": credits, "models": [m.id for m in catalog.models.values() if m.tier == name]}
        for name, credits in sorted(catalog.tiers.items(), key=lambda item: (item[1], item[0]))
    ]
    return await page(request, "docs.html", "docs", {
        "base_url": base_url(request),
        "chat_models": chat,
        "example_model": cheap or (chat[0]["id"] if chat else "<model id>"),
        "plans": sorted(catalog.plans.values(), key=lambda plan: (plan.credits_per_day, plan.name)),
        "tiers": tiers,
        "default_credits": catalog.default_credits,
    })


async def static_file(request: web.Request) -> web.Response:
    """A console static file by name; its ETag answers a revalidation with a 304."""
    name = request.match_info["name"]
    found = request.app[STATIC].get(name)
    if found is None:
        raise NotFound(f"No such file: {request.path}.")
    headers = {
        "ETag": found.etag,
        "Cache-Control": STATIC_CACHE,
        "X-Content-Type-Options": "nosniff",
        "X-Request-Id": request_id(request),
    }
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, content_type=found.content_type, charset="utf-8", headers=headers)


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/", home),
    ("GET", "/docs", docs_page),
    ("GET", "/models", models_page),
    ("GET", "/static/{name}", static_file),
)
