"""The proxied calls' answers are aiohttp's bytes: the heads built directly against aiohttp's own `prepare`."""

from __future__ import annotations

import re
from typing import cast

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11

from clexproxy.answer_wire import SSEAnswer, _Writer, json_answer, response_bytes

HEADERS = {
    "X-Clex-Credits-Limit": "1000", "X-Clex-Credits-Remaining": "998", "X-Request-Id": "req_1",
    "Access-Control-Allow-Origin": "https://page.example", "Vary": "Origin",
}
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CASES = [(HttpVersion11, True), (HttpVersion11, False), (HttpVersion10, True), (HttpVersion10, False)]
_DATE = re.compile(rb"Date: [^\r]*\r\n")


def undated(data: bytes) -> bytes:
    """The answer with its Date line blanked: the two renderings may straddle a second."""
    assert len(_DATE.findall(data)) == 1, data
    return _DATE.sub(b"Date: -\r\n", data)


class Client:
    """The connection an `SSEAnswer` writes to, keeping what it was sent."""

    def __init__(self, version: HttpVersion, keep_alive: bool) -> None:
        self.version = version
        self.keep_alive = keep_alive
        self.output_size = 0
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)


def aiohttp_stream_head(headers: dict[str, str], version: HttpVersion, keep_alive: bool) -> tuple[bytes, bool]:
    """The head aiohttp's `StreamResponse` writes for a stream, and whether it chunks it."""
    response = web.StreamResponse(status=200, headers=headers)
    writer = _Writer(version, keep_alive, {})
    step = response.prepare(cast(web.BaseRequest, writer))
    with pytest.raises(StopIteration):
        step.send(None)
    return writer.head, writer.chunked


@pytest.mark.parametrize(("version", "keep_alive"), CASES)
def test_a_json_answer_is_what_aiohttp_writes(version: HttpVersion, keep_alive: bool) -> None:
    body = b'{"id":"chatcmpl-1","choices":[]}'
    ours = json_answer(version, keep_alive, HEADERS, body)
    theirs, kept = response_bytes(web.Response(body=body, content_type="application/json", headers=HEADERS),
                                  version, keep_alive)
    assert undated(ours) == undated(theirs)
    assert kept == keep_alive


@pytest.mark.parametrize(("version", "keep_alive"), CASES)
async def test_a_stream_is_what_aiohttp_writes(version: HttpVersion, keep_alive: bool) -> None:
    client = Client(version, keep_alive)
    answer = SSEAnswer(client, {**HEADERS, **SSE})
    answer.headers["X-Clex-Served-Model"] = "meta/llama-3.1-8b-instruct"  # joins before the first write
    head, chunked = aiohttp_stream_head({**HEADERS, **SSE, "X-Clex-Served-Model": "meta/llama-3.1-8b-instruct"},
                                        version, keep_alive)
    await answer.write(b"data: 1\n\n")
    await answer.write(b"")
    await answer.write_eof(b"data: [DONE]\n\n")
    assert chunked == (version == HttpVersion11)
    if chunked:
        body = b"9\r\ndata: 1\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    else:
        body = b"data: 1\n\ndata: [DONE]\n\n"
    # aiohttp drops keep-alive for a stream it cannot chunk (HTTP/1.0): its head says so, and so does ours.
    assert undated(b"".join(client.sent)) == undated(head + body)
    assert client.sent[0].startswith(b"HTTP/1.")  # the head left with the first bytes: one write
    assert answer.keep_alive == (keep_alive and chunked)
    assert client.output_size == len(b"".join(client.sent))


async def test_a_stream_ended_at_once_sends_its_head_and_the_terminator_in_one_write() -> None:
    client = Client(HttpVersion11, True)
    answer = SSEAnswer(client, dict(SSE))
    await answer.write_eof()
    assert len(client.sent) == 1 and client.sent[0].endswith(b"\r\n\r\n0\r\n\r\n")
    await answer.write_eof()  # a second end writes nothing
    assert len(client.sent) == 1
    with pytest.raises(RuntimeError):
        await answer.write(b"data: late\n\n")


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\x00b", "a\x7fb", "a\x1bb"])
async def test_a_header_with_a_control_character_is_refused_as_aiohttp_refuses_it(value: str) -> None:
    headers = {**HEADERS, "X-Clex-Served-Model": value}
    with pytest.raises(ValueError, match="Forbidden control character"):
        json_answer(HttpVersion11, True, headers, b"{}")
    with pytest.raises(ValueError, match="Forbidden control character"):
        response_bytes(web.Response(body=b"{}", content_type="application/json", headers=headers), HttpVersion11, True)
    with pytest.raises(ValueError, match="Forbidden control character"):
        await SSEAnswer(Client(HttpVersion11, True), {**SSE, "X-Bad": value}).write(b"x")


def test_a_tab_in_a_value_is_kept_as_aiohttp_keeps_it() -> None:
    headers = {"X-Request-Id": "a\tb"}
    ours = json_answer(HttpVersion11, True, headers, b"{}")
    theirs, _ = response_bytes(web.Response(body=b"{}", content_type="application/json", headers=headers),
                               HttpVersion11, True)
    assert undated(ours) == undated(theirs)
