"""What the screen takes for one whole request: only the plain case; everything else goes to aiohttp."""

from __future__ import annotations

import pytest

from clexproxy.screen import whole_request

BODY = b'{"model":"m"}'


def req(*headers: str, body: bytes = BODY, length: int | None = None) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: t", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_one_whole_request() -> None:
    parsed = whole_request(req("Authorization: Bearer clex_x", "X-Request-Id:  r1 ", length=len(BODY)))
    assert parsed is not None
    line, headers = parsed
    assert line == b"POST /v1/chat/completions HTTP/1.1"
    assert headers[b"authorization"] == b"Bearer clex_x" and headers[b"x-request-id"] == b"r1"


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
        req("X-Folded: a", " continued", length=len(BODY)),  # an obsolete folded line
        req("Bad Name : x", length=len(BODY)),  # space before the colon
        req("NoColon", length=len(BODY)),
        req(length=-1),
        req(body=BODY),  # a body with no length
    ],
)
def test_anything_else_is_left_to_aiohttp(raw: bytes) -> None:
    assert whole_request(raw) is None


def test_a_request_without_a_body() -> None:
    assert whole_request(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n") is not None
