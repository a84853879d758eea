"""What the lean connection takes from a request head: only the plain case; everything else goes to aiohttp.

Runs on both implementations (`scan`). Every head `request_head` takes is also parsed by aiohttp's
own parser, which must accept it and read the same headers, length and keep-alive from it: the
lean path is never laxer than aiohttp (what it leaves, aiohttp answers as before).
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clexproxy.fastpath import scan as selector

LINE = b"POST /v1/chat/completions HTTP/1.1"


def head(*headers: str | bytes, line: bytes = LINE, host: bool = True, length: int | None = 13) -> bytes:
    lines = [line, *([b"Host: t"] if host else [])]
    lines += [h.encode("latin-1") if isinstance(h, str) else h for h in headers]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def aiohttp_reads(raw: bytes) -> Any:
    """aiohttp's C parser's message for `raw` (its head and a body of the length it says), or the refusal."""
    loop = asyncio.new_event_loop()
    try:
        protocol: Any = type("P", (), {"_reading_paused": False, "transport": None})()
        parser = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, _upgraded, _tail = parser.feed_data(raw)
        except HttpProcessingError as exc:
            return exc
        return messages[0][0] if messages else None
    finally:
        loop.close()


def test_a_plain_head(scan: ModuleType) -> None:
    raw = head("Authorization: Bearer clex_x", "X-Request-Id: \t r1 ", "X-Note: caf\xe9")
    size, target, headers, length, keep_alive, authorization, request_id, origin = scan.request_head(
        raw + b'{"model":"m"}'
    )
    assert (size, target, length, keep_alive) == (len(raw), "/v1/chat/completions", 13, True)
    assert headers == [("Host", "t"), ("Authorization", "Bearer clex_x"), ("X-Request-Id", "r1"),
                       ("X-Note", "caf\udce9"), ("Content-Length", "13")]
    assert (authorization, request_id, origin) == ("Bearer clex_x", "r1", False)


def test_the_first_authorization_and_request_id_are_read_and_an_origin_is_seen(scan: ModuleType) -> None:
    parsed = scan.request_head(head("authorization: a", "Authorization: b", "x-request-id: 1", "X-REQUEST-ID: 2",
                                    "Origin: https://app.example"))
    assert parsed[5:] == ("a", "1", True)
    assert scan.request_head(head())[5:] == (None, None, False)
    assert scan.request_head(head("Authorization:"))[5] == ""  # empty, not absent


def test_connection_close_and_keep_alive(scan: ModuleType) -> None:
    assert scan.request_head(head("Connection: Close"))[4] is False
    assert scan.request_head(head("connection: KEEP-ALIVE"))[4] is True


def test_an_unfinished_head_is_incomplete_until_it_is_too_long(scan: ModuleType) -> None:
    raw = head("Authorization: Bearer x")
    assert scan.request_head(raw[:-1]) == scan.INCOMPLETE == selector.INCOMPLETE == 0
    assert scan.request_head(b"") == 0
    long = LINE + b"\r\nX-Long: " + b"a" * (scan.MAX_LEAN_HEAD - 60)
    assert scan.request_head(long) == 0
    assert scan.request_head(long + b"a" * 100) is None  # past the lean limit: aiohttp's limits answer it
    assert scan.request_head(head("X-Big: " + "a" * (scan.MAX_LEAN_HEAD - 60))) is None


def test_at_most_max_lean_headers(scan: ModuleType) -> None:
    many = [f"X-{i}: v" for i in range(scan.MAX_LEAN_HEADERS - 2)]
    assert scan.request_head(head(*many)) is not None
    assert scan.request_head(head(*many, "X-One-More: v")) is None


@pytest.mark.parametrize(
    "raw",
    [
        head(line=b"GET /v1/chat/completions HTTP/1.1"),
        head(line=b"post /v1/chat/completions HTTP/1.1"),
        head(line=b"POST /v1/chat/completions HTTP/1.0"),
        head(line=b"POST /v1/chat/completions HTTP/1.1 "),
        head(line=b"POST  /v1/chat/completions HTTP/1.1"),
        head(line=b"POST /v1/chat/completions\tHTTP/1.1"),
        head(line=b"POST /v1/caf\xe9 HTTP/1.1"),
        head(host=False),
        head("Host: again"),
        head(length=None),
        head("Content-Length: 13"),  # the length said twice
        head("Content-Length: +13", length=None),
        head("Content-Length: 1 3", length=None),
        head("Content-Length:", length=None),
        head(f"Content-Length: {10**19}", length=None),
        head("Transfer-Encoding: chunked", length=None),
        head("Transfer-Encoding: chunked"),
        head("Content-Encoding: gzip"),
        head("Expect: 100-continue"),
        head("Upgrade: websocket", "Connection: upgrade"),
        head("Connection: keep-alive, close"),
        head("Connection: upgrade"),
        head("Connection: close", "Connection: close"),
        head("Cookie: clex_session=s"),
        head("Sec-WebSocket-Key1: x"),
        head("Content-Type: a", "content-type: b"),
        head("User-Agent: a", "User-Agent: b"),
        head("Max-Forwards: 1", "Max-Forwards: 2"),
        head("ETag: a", "ETag: b"),
        head("X-Folded: a", " continued"),  # an obsolete folded line
        head("Bad Name : x"),
        head("Name : x"),
        head("NoColon"),
        head(": no name"),
        head("X(y): 1"),
        head("X-Ctl: a\x01b"),
        head("X-Nul: a\x00"),
        head("X-Del: \x7f"),
        head("X-Cr: a\rb"),
        head("X-Lf: a\nb"),
        LINE + b"\nHost: t\r\nContent-Length: 0\r\n\r\n",  # a bare LF ends the request line
        LINE + b"\r\nHost: t\nContent-Length: 0\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_anything_else_is_left_to_aiohttp(scan: ModuleType, raw: bytes) -> None:
    assert scan.request_head(raw) is None


def test_singletons_may_appear_once_and_others_repeat(scan: ModuleType) -> None:
    parsed = scan.request_head(head("Content-Type: a", "Max-Forwards: 1", "Accept: a", "Accept: b"))
    assert parsed is not None and [v for n, v in parsed[2] if n == "Accept"] == ["a", "b"]


@pytest.mark.parametrize("value", [bytearray(head()), memoryview(head()), "POST"])
def test_only_bytes(scan: ModuleType, value: object) -> None:
    assert scan.request_head(value) is None


def assert_as_aiohttp_reads(parsed: Any, raw: bytes) -> None:
    message = aiohttp_reads(raw)
    assert not isinstance(message, Exception), message  # aiohttp takes every head the lean path takes
    size, target, headers, length, keep_alive, authorization, request_id, origin = parsed
    assert authorization == message.headers.get("Authorization")
    assert request_id == message.headers.get("X-Request-Id")
    assert origin is ("Origin" in message.headers)
    assert message.method == "POST" and message.path == target and message.version == (1, 1)
    # aiohttp spells the names it knows its own way (`X-Request-ID`): a header's name is matched without case
    assert [(name.lower(), value) for name, value in message.headers.items()] == [
        (name.lower(), value) for name, value in headers
    ]
    assert int(message.headers["Content-Length"]) == length
    assert message.should_close is not keep_alive
    assert not message.chunked and not message.upgrade and message.compression is None
    assert raw[size - 4:size] == b"\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        head("Authorization: Bearer clex_x", "X-Request-Id:  r1 \t"),
        head("Connection: close", "Accept: a", "Accept: b", "X-Empty:", "X-Tab:\tv\t"),
        head("X-Obs: caf\xe9", "Content-Type: application/json", "User-Agent: OpenAI/Python 1.0"),
        head(length=0),
    ],
)
def test_what_it_takes_aiohttp_reads_the_same(scan: ModuleType, raw: bytes) -> None:
    assert_as_aiohttp_reads(scan.request_head(raw), raw)


PIECES = st.sampled_from(
    [
        b"Authorization", b"X-Request-Id", b"Origin", b"Content-Length", b"content-length", b"Host", b"Connection",
        b"Expect", b"Transfer-Encoding", b"Accept", b"Cookie", b"Content-Type", b"User-Agent", b":", b": ", b" ",
        b"\t", b"\r\n", b"\r", b"\n", b"\x00", b"\x7f", b"\xe9", b"close", b"keep-alive", b"chunked", b"Bearer clex_k",
        b"0", b"5", b"13", b"-", b"(", b"/",
    ]
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(PIECES, max_size=24))
def test_never_laxer_than_aiohttp_and_the_twins_agree(scan: ModuleType, scan_other: ModuleType,
                                                       pieces: list[bytes]) -> None:
    raw = LINE + b"\r\nHost: t\r\n" + b"".join(pieces) + b"\r\n\r\n"
    parsed = scan.request_head(raw)
    assert parsed == scan_other.request_head(raw)
    if parsed:
        assert_as_aiohttp_reads(parsed, raw)
