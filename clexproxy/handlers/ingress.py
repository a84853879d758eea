"""The protocols a proxied call may arrive in, each an `Ingress`: what the one path (`handle`) varies on.

Every ingress takes the same path: authenticate, count, parse, route, admit, send, relay,
settle. What differs is small and fixed per path, so it is data here rather than branches
spread through the handler: which upstream endpoint serves it, what kind of model it routes
to, how its body becomes a call (chat completions, embeddings and legacy completions are
their own bodies; Responses and Messages are translated onto chat completions by
`clexproxy.protocols`), how its errors look (SPEC's JSON, or Anthropic's on `/v1/messages`),
and which header may carry the key (Anthropic's SDKs send `x-api-key`).

The screen (`Screen`) answers refused calls from prebuilt SPEC-shaped bytes
and reads only the Authorization header: it screens the ingresses whose errors are SPEC's and
whose key is in that header (`SCREENED_PATHS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from clexproxy.catalog import ModelKind
from clexproxy.errors import ApiError
from clexproxy.protocols import messages, responses
from clexproxy.protocols.chunks import Translation

ErrorRenderer = Callable[[ApiError, Mapping[str, str]], web.Response]


def anthropic_error(error: ApiError, headers: Mapping[str, str]) -> web.Response:
    """An error as Anthropic's API answers it (`{"type": "error", "error": {"type", "message"}}`), SPEC's status."""
    return web.Response(body=messages.error_body(error), status=error.status, content_type="application/json",
                        headers={**headers, **error.headers})


@dataclass(frozen=True, slots=True)
class Ingress:
    api: str  # the metrics' and access lines' `api`: chat, embeddings, completions, responses, messages
    endpoint: str  # the upstream endpoint that serves it
    kind: ModelKind  # the kind of model it routes to
    # Builds the call from a Responses or Messages body; None: the body is the upstream endpoint's own.
    translate: Callable[[Any], Translation] | None = None
    render: ErrorRenderer = ApiError.to_response
    key_header: str | None = None  # a header that may carry the key when Authorization is absent

    @property
    def screened(self) -> bool:
        return self.render is ApiError.to_response and self.key_header is None


CHAT = Ingress("chat", "/chat/completions", "chat")
EMBEDDINGS = Ingress("embeddings", "/embeddings", "embedding")
COMPLETIONS = Ingress("completions", "/completions", "chat")
RESPONSES = Ingress("responses", "/chat/completions", "chat", translate=responses.translate)
MESSAGES = Ingress("messages", "/chat/completions", "chat", translate=messages.translate, render=anthropic_error,
                   key_header="x-api-key")

# The proxied paths, as clients send them, and the ingress each is: the connection that serves them, the
# router (for their 405s and preflights) and the screen read this one table.
PROXIED_PATHS: Mapping[str, Ingress] = {
    "/v1/chat/completions": CHAT,
    "/api/chat": CHAT,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
}
SCREENED_PATHS: Mapping[str, Ingress] = {path: i for path, i in PROXIED_PATHS.items() if i.screened}
