"""Pure-Python twin of the compiled `_scan`: `plain_request`, the screen's scan of a raw request.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. Every result
must match the compiled module exactly: the screen (`ScreeningRequestHandler`) reads the request
line, Authorization and X-Request-Id from a read only when it is one whole, plain request.
"""

from __future__ import annotations

import re

__all__ = ("plain_request",)

# RFC 9110's token characters (header names) and field-value characters (visible ASCII, space,
# tab and obs-text): anything else goes to aiohttp, which answers it with a 400.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)")
_REQUEST_LINE = re.compile(rb"[\x20-\x7e\x80-\xff]+")
_READ_NAMES = frozenset(
    {b"authorization", b"x-request-id", b"content-length", b"transfer-encoding", b"host", b"connection", b"expect",
     b"origin"}
)
# `Origin`: a browser's call, whose refusal must carry the CORS headers the full path adds (`CorsPolicy`).
_REFUSED_NAMES = frozenset({b"transfer-encoding", b"expect", b"origin"})


def plain_request(data: bytes) -> tuple[bytes, bytes | None, bytes | None] | None:
    """The request line, Authorization and X-Request-Id of `data` when it is one whole, plain request.

    None for anything the screen must leave to aiohttp's parser, which knows every case: part of
    a request or more than one, a body framed other than by one Content-Length, a repeated
    header the screen reads, a folded or malformed line, a control character, `Expect`,
    `Connection: close` (the full path closes such a connection after its answer), or `Origin`
    (a browser's call: its refusal needs the CORS headers only the full path adds).
    """
    if type(data) is not bytes:
        return None
    end = data.find(b"\r\n\r\n")
    if end <= 0:
        return None
    lines = data[:end].split(b"\r\n")
    if _REQUEST_LINE.fullmatch(lines[0]) is None:
        return None
    authorization = request_id = None
    length = 0
    seen: set[bytes] = set()
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return None  # no name, a folded line, white space before the colon, or a bad character
        name = match[1].lower()
        if name not in _READ_NAMES:
            continue
        if name in seen or name in _REFUSED_NAMES:
            return None
        seen.add(name)
        value = match[2].strip(b" \t")
        if name == b"authorization":
            authorization = value
        elif name == b"x-request-id":
            request_id = value
        elif name == b"content-length":
            if not value or len(value) > 18 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            return None
    if len(data) != end + 4 + length:
        return None
    return lines[0], authorization, request_id
