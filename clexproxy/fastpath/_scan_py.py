"""Pure-Python twin of the compiled `_scan`: `request_head`, the lean connection's scan of a request head.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. Every result
must match the compiled module exactly.
"""

from __future__ import annotations

import re

__all__ = ("request_head",)

INCOMPLETE = 0
MAX_LEAN_HEAD = 8190
MAX_LEAN_HEADERS = 100

# RFC 9110's token characters (header names) and field-value characters (visible ASCII, space,
# tab and obs-text): anything else goes to aiohttp, which answers it with a 400.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)")
_LEAN_REQUEST_LINE = re.compile(rb"POST ([\x21-\x7e]+) HTTP/1\.1")
# Names aiohttp's parser lets appear once; names that send the request to aiohttp (see `request_head`).
_ONCE = frozenset({b"content-length", b"host", b"connection", b"content-type", b"user-agent", b"content-location",
                   b"content-range", b"etag", b"max-forwards", b"server"})
_TO_AIOHTTP = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"cookie",
                         b"sec-websocket-key1"})

LeanHead = tuple[int, str, list[tuple[str, str]], int, bool, str | None, str | None, bool]


def request_head(data: bytes) -> LeanHead | int | None:
    """The head at the start of `data` when it is a plain `POST` with a `Content-Length` body, else None.

    Returns `INCOMPLETE` (0) while the head's blank line has not arrived within `MAX_LEAN_HEAD`
    bytes, and for a plain head `(head_size, target, headers, content_length, keep_alive,
    authorization, request_id, origin)`: `head_size` counts the blank line, `headers` are
    `(name, value)` pairs as aiohttp's parser decodes them (values stripped of surrounding spaces
    and tabs, UTF-8 with surrogateescape); then the first Authorization and X-Request-Id values
    (None when absent) and whether an Origin came, which the screen reads without a header map.
    None for anything the lean connection leaves to aiohttp's parser, which knows every case and
    its answer: another method or version, a request line or header that is not plain (a control
    character, a bare CR or LF, a folded line, white space before a colon), no or a repeated
    Content-Length, a repeated header aiohttp allows once, no Host, more than `MAX_LEAN_HEADERS`
    headers, a Connection other than `keep-alive` or `close`, and Transfer-Encoding,
    Content-Encoding, Expect, Upgrade or Cookie (aiohttp's framing, decoding and protocol
    switches; a console session's cookie).
    """
    if type(data) is not bytes:
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_LEAN_HEAD + 4)
    if end < 0:
        return None if len(data) >= MAX_LEAN_HEAD + 4 else INCOMPLETE
    lines = data[:end].split(b"\r\n")
    line = _LEAN_REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    if len(lines) - 1 > MAX_LEAN_HEADERS:
        return None
    headers: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    length = -1
    keep_alive = True
    authorization: str | None = None
    request_id: str | None = None
    origin = False
    for raw in lines[1:]:
        match = _HEADER_LINE.fullmatch(raw)
        if match is None:
            return None
        name = match[1].lower()
        value = match[2].strip(b" \t")
        if name in _TO_AIOHTTP or name in seen:
            return None
        if name in _ONCE:
            seen.add(name)
            if name == b"content-length":
                if not value or len(value) > 18 or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"connection":
                lowered = value.lower()
                if lowered == b"close":
                    keep_alive = False
                elif lowered != b"keep-alive":
                    return None
        text = value.decode("utf-8", "surrogateescape")
        if name == b"authorization" and authorization is None:
            authorization = text
        elif name == b"x-request-id" and request_id is None:
            request_id = text
        elif name == b"origin":
            origin = True
        headers.append((match[1].decode("ascii"), text))
    if length < 0 or b"host" not in seen:
        return None
    return end + 4, line[1].decode("ascii"), headers, length, keep_alive, authorization, request_id, origin
