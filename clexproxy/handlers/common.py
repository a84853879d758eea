"""What every handler needs: the request id, the gateway state, and a bounded JSON body read."""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson
from aiohttp import web

from clexproxy.errors import InvalidRequest, RequestTooLarge
from clexproxy.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
MAX_CLIENT_REQUEST_ID = 128

_prefix = f"req_{os.getpid():x}{os.urandom(3).hex()}_"
_counter = itertools.count(1)


def request_id(request: web.Request) -> str:
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


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """One read and one parse of the body, with SPEC's 413 and 400s.

    The body comes off the stream, not from `request.read()`, which keeps a copy on the request
    for as long as the call lasts: 10,000 open streams would hold 10,000 copies.
    """
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestTooLarge(f"Request body is {length} bytes; the limit is {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(f"Request body exceeds the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)  # one chunk, the usual case, is not copied
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Malformed JSON in request body: {exc}.") from None
