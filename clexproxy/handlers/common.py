"""What every handler needs: the request id, the app state it reads, and a bounded JSON body read.

A handler reads the narrowest app state that serves it: the catalog (`CATALOG`) and the admin token
(`ADMIN_TOKEN`) as values, the running components (`GATEWAY`) only where it uses them; never the settings.

Request ids are `req_<pid><random>_<n>`: the prefix is made again in every forked worker
(`os.register_at_fork`), so workers forked from one parent never issue the same ids.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from clexproxy.catalog import Catalog
from clexproxy.errors import InvalidRequest, RequestTooLarge
from clexproxy.gateway import Gateway
from clexproxy.handlers.validation import MAX_DEPTH, too_deep
from clexproxy.proxied_request import ProxiedHandler, ProxiedRequest

GATEWAY = web.AppKey("gateway", Gateway)
CATALOG = web.AppKey("catalog", Catalog)  # the one the gateway serves (with `--demo`, every model on the demo)
ADMIN_TOKEN = web.AppKey("admin_token", str)  # "" when the admin API is off
REQUEST_ID = web.RequestKey("request_id", str)
# The proxied endpoints' handlers by path, served by the connection itself (`ProxyConnection`), not the router.
PROXIED_HANDLERS: web.AppKey[Mapping[str, ProxiedHandler]] = web.AppKey("proxied_handlers")
MAX_CLIENT_REQUEST_ID = 128
# The codings aiohttp decodes on a request body; any other is its own 4xx before a handler runs.
CONTENT_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})

_prefix = ""
_counter = itertools.count(1)


def _new_prefix() -> None:
    """This process's request-id prefix and counter; run at import and again in every forked child."""
    global _prefix, _counter
    _prefix = f"req_{os.getpid():x}{os.urandom(3).hex()}_"
    _counter = itertools.count(1)


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def request_id(request: web.Request | ProxiedRequest) -> str:
    """The request's id, chosen once (see `pick_request_id`) and kept on the request."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = pick_request_id(request.headers.get("X-Request-Id"))
    return rid


def pick_request_id(sent: str | None) -> str:
    """The client's X-Request-Id when it sent a sane one, else a new process-unique id."""
    if sent and len(sent) <= MAX_CLIENT_REQUEST_ID and sent.isprintable() and sent.isascii():
        return sent
    return f"{_prefix}{next(_counter):x}"


async def read_json(request: web.Request | ProxiedRequest, max_bytes: int) -> Any:
    """One read and one parse of the body, with SPEC's 413 and 400s.

    The body comes off the stream, not from `request.read()`, which keeps a copy on the request
    for as long as the call lasts: 10,000 open streams would hold 10,000 copies.
    """
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestTooLarge(f"Request body is {length} bytes; the limit is {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > max_bytes:
                raise RequestTooLarge(f"Request body exceeds the limit of {max_bytes} bytes.")
            chunks.append(chunk)
    except web.RequestPayloadError:
        raise _undecodable(request) from None
    raw = b"".join(chunks)  # one chunk, the usual case, is not copied
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Malformed JSON in request body: {exc}.") from None
    # orjson reads JSON nested up to 1,024 deep but writes no more than MAX_DEPTH: a body it could
    # not send upstream is refused here. Nesting that deep needs that many brackets, so a normal
    # body is passed by a length test or two C-level counts, never walked.
    if len(raw) > 2 * MAX_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(doc):
        raise InvalidRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.")
    return doc


def _undecodable(request: web.Request | ProxiedRequest) -> InvalidRequest:
    """The 400 for a body aiohttp could not decode (a `Content-Encoding` it is not in, or broken framing).

    The connection cannot carry another request (its parser stopped mid-body): the handler's answer
    closes it (`body_unreadable`), and the stream is marked ended so aiohttp does not read it again
    after that answer, which would log the same failure as an unhandled exception.
    """
    request.content.feed_eof()
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in CONTENT_CODINGS:
        return InvalidRequest(
            f"The request body is not valid {encoding} data, as its Content-Encoding header says it is.",
            extra={"param": "Content-Encoding"},
        )
    return InvalidRequest("The request body could not be read: its framing is malformed.")


def body_unreadable(request: web.Request | ProxiedRequest) -> bool:
    """The request's body could not be read to its end: its answer must close the connection."""
    return request.content.exception() is not None


def whole_number(raw: str | None, low: int, high: int) -> int | None:
    """`raw` as an integer from `low` to `high`, or None: for numbers in paths, queries and forms.

    Only ASCII digits, at most 18 of them, are read: `str.isdigit` accepts '²' and other digits
    `int` refuses or reads, and `int` refuses more than 4,300 digits; either would be a 500.
    """
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    value = int(raw)
    return value if low <= value <= high else None
