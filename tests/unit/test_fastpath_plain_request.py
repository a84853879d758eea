"""What the screen takes from one whole request: only the plain case; everything else goes to aiohttp.

Runs on both implementations (`scan`), and checks that the two never disagree on random heads.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BODY = b'{"model":"m"}'
LINE = b"POST /v1/chat/completions HTTP/1.1"


def req(*headers: str, body: bytes = BODY, length: int | None = None) -> bytes:
    lines = [LINE.decode(), "Host: t", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_one_whole_request(scan: ModuleType) -> None:
    parsed = scan.plain_request(req("authorization: Bearer clex_x", "X-REQUEST-ID: \t r1 ", length=len(BODY)))
    assert parsed == (LINE, b"Bearer clex_x", b"r1")


def test_absent_headers_are_none(scan: ModuleType) -> None:
    assert scan.plain_request(req(length=len(BODY))) == (LINE, None, None)
    assert scan.plain_request(b"GET /v1/models HTTP/1.1\r\n\r\n") == (b"GET /v1/models HTTP/1.1", None, None)


def test_other_headers_may_repeat_and_carry_obs_text(scan: ModuleType) -> None:
    raw = req("Accept: a", "Accept: b", "X-Note: caf\xe9", "Connection: keep-alive", length=len(BODY))
    raw = raw.replace("caf\xe9".encode(), b"caf\xe9")
    assert scan.plain_request(raw) == (LINE, None, None)


def test_an_empty_authorization_is_empty_not_absent(scan: ModuleType) -> None:
    assert scan.plain_request(req("Authorization:", length=len(BODY))) == (LINE, b"", None)


@pytest.mark.parametrize(
    "raw",
    [
        req(length=len(BODY))[:-3],  # the body is not all there
        req(length=len(BODY))[:40],  # nor the head
        req(length=len(BODY)) * 2,  # two requests in one read
        req(length=len(BODY)) + b"POST",  # one and the start of the next
        req("Transfer-Encoding: chunked", body=b"d\r\n" + BODY + b"\r\n0\r\n\r\n"),
        req("Content-Length: 13", length=len(BODY)),  # the length said twice
        req("Authorization: Bearer a", "Authorization: Bearer b", length=len(BODY)),
        req("X-Request-Id: a", "x-request-id: b", length=len(BODY)),
        req("Host: again", length=len(BODY)),
        req("X-Folded: a", " continued", length=len(BODY)),  # an obsolete folded line
        req("Bad Name : x", length=len(BODY)),  # space before the colon
        req("Name : x", length=len(BODY)),
        req("NoColon", length=len(BODY)),
        req(": no name", length=len(BODY)),
        req("X-Ctl: a\x01b", length=len(BODY)),  # a control character in a value
        req("X-Nul: a\x00", length=len(BODY)),
        req("X-Del: \x7f", length=len(BODY)),
        req("X-Cr: a\rb", length=len(BODY)),  # a bare CR
        req("X-Lf: a\nb", length=len(BODY)),  # a bare LF
        req("X(y): 1", length=len(BODY)),  # not a token
        req("Expect: 100-continue", length=len(BODY)),
        req("Origin: https://app.example", length=len(BODY)),  # a browser's call: its refusal needs CORS headers
        req("origin: null", length=len(BODY)),
        req("Connection: Close", length=len(BODY)),
        req("Connection: keep-alive, close", length=len(BODY)),
        req(length=-1),
        req("Content-Length: +13", body=BODY),
        req("Content-Length: 1 3", body=BODY),
        req("Content-Length:", body=b""),
        req(length=10**20, body=BODY),
        req(body=BODY),  # a body with no length
        b"\r\n\r\n",
        b"POST /x HTTP/1.1\rX: y\r\n\r\n",
        b"POST /x\tHTTP/1.1\r\n\r\n",
        BODY,
    ],
)
def test_anything_else_is_left_to_aiohttp(scan: ModuleType, raw: bytes) -> None:
    assert scan.plain_request(raw) is None


@pytest.mark.parametrize("value", [bytearray(req(length=len(BODY))), memoryview(req(length=len(BODY))), "POST"])
def test_only_bytes(scan: ModuleType, value: object) -> None:
    assert scan.plain_request(value) is None


PIECES = st.sampled_from(
    [
        b"Authorization", b"authorization", b"X-Request-Id", b"Content-Length", b"content-length", b"Host",
        b"Connection", b"Expect", b"Transfer-Encoding", b"Accept", b":", b": ", b" ", b"\t", b"\r\n", b"\r", b"\n",
        b"Origin", b"origin", b"\x00", b"\x7f", b"\xe9", b"close", b"keep-alive", b"Bearer clex_k",
        b"0", b"5", b"13", b"-", b"(",
    ]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.lists(PIECES, max_size=24), body=st.binary(max_size=16))
def test_the_twins_agree(scan: ModuleType, scan_other: ModuleType, head: list[bytes], body: bytes) -> None:
    raw = LINE + b"\r\n" + b"".join(head) + b"\r\n\r\n" + body
    assert scan.plain_request(raw) == scan_other.plain_request(raw)
    framed = LINE + b"\r\n" + b"".join(head) + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    assert scan.plain_request(framed) == scan_other.plain_request(framed)
