"""`CorsPolicy`: which other origins' browser code may call the bearer-key endpoints, and read the answers.

A page on another origin that `fetch()`es `/v1/chat/completions` needs two things from the
gateway: a preflight answered (its JSON body and Authorization header make the browser ask
first), and `Access-Control-Allow-Origin` plus `Access-Control-Expose-Headers` on every answer,
a refusal included, or its code sees neither the status nor `X-Clex-Credits-Remaining`.

The policy is built once from `[cors] allow_origins` and hands out prebuilt, read-only header
maps, so a call pays one dictionary lookup for its Origin and nothing when it sent none.

It never says `Access-Control-Allow-Credentials`. These endpoints are authorised by a bearer key
the page itself holds, never by a cookie; without that header a browser neither sends a
credentialed cross-origin request past its preflight nor lets a page read the answer to one, so
an answer that a cookie could have authorised (the console's session) is never readable by
another origin, whatever `allow_origins` says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from clexproxy.headers import (
    METERING,
    OVERHEAD_MS,
    REQUEST_ID,
    RETRY_AFTER,
    RETRY_AFTER_MS,
    SERVED_MODEL,
)

ALLOW_ORIGIN: Final = "Access-Control-Allow-Origin"
EXPOSE_HEADERS: Final = "Access-Control-Expose-Headers"
ALLOW_METHODS: Final = "Access-Control-Allow-Methods"
ALLOW_HEADERS: Final = "Access-Control-Allow-Headers"
MAX_AGE: Final = "Access-Control-Max-Age"
REQUEST_METHOD: Final = "Access-Control-Request-Method"
REQUEST_HEADERS: Final = "Access-Control-Request-Headers"

ALLOW_ANY: Final = "*"
# Chromium's ceiling for a cached preflight: two hours.
MAX_AGE_SECONDS: Final = 7200
# What every answer lets the page's code read, beyond the CORS-safelisted few (Content-Type...).
EXPOSED: Final = (REQUEST_ID, *METERING, RETRY_AFTER, RETRY_AFTER_MS, SERVED_MODEL, OVERHEAD_MS)
# The request headers a caller always may send; others it asks for are echoed when they are header names.
ALLOWED_REQUEST_HEADERS: Final = ("Authorization", "Content-Type", REQUEST_ID, "Accept")
# A preflight's Access-Control-Request-Headers echoed at most this many names (an SDK sends a dozen).
MAX_ECHOED_HEADERS: Final = 64

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's header-name characters
# scheme://host[:port], as a browser serialises an Origin: no path, query, user or trailing slash.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/?#@]+")
_NOTHING: Mapping[str, str] = MappingProxyType({})


def parse_origins(text: str) -> tuple[str, ...]:
    """The `allow_origins` setting as a tuple: `("*",)`, the listed origins, or `()` (CORS off).

    Raises ValueError, naming the entry, for anything a browser would never send as an Origin
    (a path, a trailing slash, `null`) or for `*` beside named origins.
    """
    origins = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if ALLOW_ANY in origins:
        if len(origins) > 1:
            raise ValueError(f"'*' allows every origin and cannot be listed with others: {text!r}")
        return origins
    for origin in origins:
        if _ORIGIN.fullmatch(origin) is None:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path or trailing slash)")
    return origins


class CorsPolicy:
    """The CORS headers for an answer or a preflight, given the request's Origin.

    `answer(origin)` is what every answer of a bearer-key endpoint adds; `preflight(...)` answers
    an OPTIONS with Access-Control-Request-Method. An origin not allowed gets nothing: the
    browser then keeps the answer from the page, which is the refusal.
    """

    __slots__ = ("_answers", "_any", "_any_answer", "_origins", "enabled")

    def __init__(self, allow_origins: str) -> None:
        origins = parse_origins(allow_origins)
        self.enabled = bool(origins)
        self._any = origins == (ALLOW_ANY,)
        self._origins = frozenset(origins)
        exposed = ", ".join(EXPOSED)
        # Vary: Origin even for `*`: a request without Origin gets no CORS headers, so the answer does depend on it.
        self._any_answer: Mapping[str, str] = MappingProxyType(
            {ALLOW_ORIGIN: ALLOW_ANY, EXPOSE_HEADERS: exposed, "Vary": "Origin"}
        )
        # One prebuilt map per listed origin: looking the Origin up is the whole per-call cost.
        self._answers: dict[str, Mapping[str, str]] = {
            origin: MappingProxyType({ALLOW_ORIGIN: origin, EXPOSE_HEADERS: exposed, "Vary": "Origin"})
            for origin in self._origins
            if origin != ALLOW_ANY
        }

    def allows(self, origin: str | None) -> bool:
        """`origin` may read the answers (never True for a request without one, nor with CORS off)."""
        return origin is not None and (self._any or origin in self._origins)

    def answer(self, origin: str | None) -> Mapping[str, str]:
        """The headers an answer to a request from `origin` adds: empty when it sent none or is not allowed."""
        if origin is None or not self.enabled:
            return _NOTHING
        if self._any:
            return self._any_answer
        return self._answers.get(origin, _NOTHING)

    def preflight(self, origin: str | None, methods: str, requested_headers: str | None) -> dict[str, str]:
        """The CORS headers of the 204 to a preflight for a path taking `methods` (`"POST"`).

        Empty for an origin not allowed. The requested headers are echoed when each is a header
        name (a token), so an SDK's own headers (`X-Stainless-*`, say) pass; anything else is
        left out, and the browser then refuses the call itself.
        """
        answer = self.answer(origin)
        if not answer:
            return {}
        return {
            ALLOW_ORIGIN: answer[ALLOW_ORIGIN],
            ALLOW_METHODS: methods,
            ALLOW_HEADERS: ", ".join(_allowed_headers(requested_headers)),
            MAX_AGE: str(MAX_AGE_SECONDS),
            "Vary": f"Origin, {REQUEST_METHOD}, {REQUEST_HEADERS}",
        }

    def __repr__(self) -> str:
        return f"CorsPolicy({', '.join(sorted(self._origins)) or 'off'})"


def _allowed_headers(requested: str | None) -> list[str]:
    """The always-allowed request headers, then the requested names that are header-name tokens."""
    names = list(ALLOWED_REQUEST_HEADERS)
    seen = {name.lower() for name in names}
    for part in (requested or "").split(",")[:MAX_ECHOED_HEADERS]:
        name = part.strip().lower()
        if name and name not in seen and _TOKEN.fullmatch(name):
            seen.add(name)
            names.append(name)
    return names
