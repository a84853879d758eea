"""The upstream answer parser, on both implementations.

The gateway relays what this parser takes from a provider to its own clients and reuses the
connection when it says so, so the framing must come out the same however the socket cuts the
bytes, anything outside the strict grammar must be refused (with the same message from both
implementations), and the two implementations must never disagree on any input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

Result = tuple[bytes, int, bool, bool, bytes, dict[str, str]]  # body, status, keep_alive, done, extra, headers

STATUS_LINE = "the answer does not start with an HTTP/1.x status line"
NOT_A_FIELD = "a header line is not a field"
BAD_LENGTH = "a Content-Length that is not a length"
TWO_LENGTHS = "two different Content-Lengths"
LENGTH_AND_CODING = "both a Content-Length and a Transfer-Encoding"
BAD_CODING = "a Transfer-Encoding other than one chunked"
TOO_MANY_LINES = "the answer has too many header lines"
HEAD_TOO_LARGE = "the answer's head is too large"
TRAILERS_TOO_LARGE = "the answer's trailers are too large"
CHUNK_LINE_TOO_LONG = "a chunk-size line is too long"
NOT_A_CHUNK_SIZE = "a chunk-size line is not a chunk size"
NO_CRLF_AFTER_DATA = "a chunk's data is not followed by CRLF"
CUT_SHORT = "the connection closed before the answer's end"
SWITCHING = "a 101 (Switching Protocols) that was not asked for"


def head(*headers: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return b"\r\n".join([status, *headers]) + b"\r\n\r\n"


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body: one chunk per piece, the last chunk, the trailer lines (each ending in CRLF), the blank line."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n" + trailers + b"\r\n"


CHUNKED = head(b"Transfer-Encoding: chunked")


def run(h1: ModuleType, chunks: Iterable[bytes], *, eof: bool = False) -> Result:
    parser = h1.ResponseParser()
    body = b"".join([parser.feed(chunk) for chunk in chunks])
    if eof:
        parser.feed_eof()
    return body, parser.status, parser.keep_alive, parser.done, parser.extra, parser.headers


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The data in two reads at every byte boundary, then one byte a read."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]


def assert_split_invariant(h1: ModuleType, data: bytes, *, eof: bool = False) -> Result:
    """The result of feeding `data` whole, after checking every split gives the same."""
    whole = run(h1, [data], eof=eof)
    for chunks in splits(data):
        assert run(h1, chunks, eof=eof) == whole, chunks
    return whole


def refusal(h1: ModuleType, chunks: Iterable[bytes], *, eof: bool = False) -> str:
    with pytest.raises(h1.ResponseError) as info:
        run(h1, chunks, eof=eof)
    return str(info.value)


def assert_refused(h1: ModuleType, data: bytes, message: str, *, eof: bool = False) -> None:
    """Refused with `message` whether fed whole or split anywhere."""
    assert refusal(h1, [data], eof=eof) == message
    for chunks in splits(data):
        assert refusal(h1, chunks, eof=eof) == message, chunks


def is_compiled(h1: ModuleType) -> bool:
    return not h1.__name__.endswith("_py")


# --- Content-Length -----------------------------------------------------------------------------


def test_a_whole_answer_in_one_read(h1: ModuleType) -> None:
    wire = head(b"Content-Type: text/plain", b"Content-Length: 5") + b"hello"
    assert run(h1, [wire]) == (b"hello", 200, True, True, b"", {"content-type": "text/plain", "content-length": "5"})


def test_a_length_body_split_anywhere(h1: ModuleType) -> None:
    wire = head(b"Content-Length: 11", status=b"HTTP/1.1 201 Created") + b"hello world"
    assert assert_split_invariant(h1, wire)[:5] == (b"hello world", 201, True, True, b"")


def test_state_before_the_head_and_before_the_end(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert (parser.status, parser.keep_alive, parser.done, parser.extra, parser.headers) == (0, False, False, b"", {})
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r") == b""
    assert (parser.status, parser.done) == (0, False)
    assert parser.feed(b"\nab") == b"ab"
    assert (parser.status, parser.keep_alive, parser.done) == (200, True, False)
    assert parser.feed(b"") == b""
    assert parser.feed(b"cd") == b"cd"
    assert parser.done


def test_a_body_that_is_the_whole_read_is_returned(h1: ModuleType) -> None:
    for wire, read in [
        (head(b"Content-Length: 10"), b"0123456789"),
        (head(b"Content-Length: 20"), b"0123456789"),
        (CHUNKED + b"a\r\n", b"0123456789"),
        (head(), b"0123456789"),
    ]:
        parser = h1.ResponseParser()
        assert parser.feed(wire) == b""
        body = parser.feed(read)
        assert body == read
        if is_compiled(h1):
            assert body is read  # parsed where it lies, not copied


def test_bytes_past_the_end_go_to_extra(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(head(b"Content-Length: 2") + b"hiHTTP/1.1 200") == b"hi"
    assert parser.done
    assert parser.extra == b"HTTP/1.1 200"
    assert parser.feed(b" OK\r\n") == b""
    assert parser.extra == b"HTTP/1.1 200 OK\r\n"
    parser.feed_eof()  # after the end: fine
    assert parser.done


def test_extra_split_anywhere(h1: ModuleType) -> None:
    wire = head(b"Content-Length: 3") + b"abcXYZ" + CHUNKED
    assert assert_split_invariant(h1, wire)[:5] == (b"abc", 200, True, True, b"XYZ" + CHUNKED)


def test_begin_reuses_the_parser_for_the_next_answer(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(head(b"Content-Length: 3", b"X-First: 1") + b"one") == b"one"
    assert (parser.status, parser.keep_alive, parser.done, parser.extra) == (200, True, True, b"")
    parser.begin()
    assert (parser.status, parser.keep_alive, parser.done, parser.headers) == (0, False, False, {})
    second = head(b"Transfer-Encoding: chunked", b"X-Second: 2", status=b"HTTP/1.1 404 Not Found")
    assert parser.feed(second + chunked(b"tw", b"o")[:-1]) == b"two"
    assert not parser.done
    assert parser.feed(b"\n") == b""
    assert (parser.status, parser.keep_alive, parser.done, parser.extra) == (404, True, True, b"")
    assert parser.headers == {"transfer-encoding": "chunked", "x-second": "2"}
    parser.begin()
    assert parser.feed(head(b"Content-Length: 0", status=b"HTTP/1.1 304 Not Modified")) == b""
    assert (parser.status, parser.done) == (304, True)


def test_begin_after_a_cut_head_drops_what_was_held(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Le")
    parser.begin()
    assert parser.feed(head(b"Content-Length: 1", status=b"HTTP/1.1 500 Oops") + b"x") == b"x"
    assert (parser.status, parser.done) == (500, True)


def test_two_equal_content_lengths_are_one(h1: ModuleType) -> None:
    wire = head(b"Content-Length: 5", b"content-length: 05") + b"hello"
    assert run(h1, [wire])[:4] == (b"hello", 200, True, True)
    assert run(h1, [wire])[5]["content-length"] == "5, 05"


def test_a_content_length_of_eighteen_digits(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(head(b"Content-Length: 999999999999999999") + b"abc") == b"abc"
    assert (parser.status, parser.done) == (200, False)


# --- chunked ------------------------------------------------------------------------------------


def test_a_chunked_body(h1: ModuleType) -> None:
    wire = CHUNKED + chunked(b"hello", b" ", b"world")
    assert run(h1, [wire])[:5] == (b"hello world", 200, True, True, b"")


def test_chunk_extensions_trailers_uppercase_hex_split_anywhere(h1: ModuleType) -> None:
    body = (
        b"5;name=value\r\nhello\r\n"
        b'1 ; a ; b="c d"\r\n,\r\n'
        b"0000A\r\n0123456789\r\n"
        b"c\t;x\r\n hello world\r\n"
        b"0;last\r\nX-Trailer: 1\r\nX-Other:  two \r\n\r\n"
    )
    wire = head(b"transfer-encoding: CHUNKED") + body + b"NEXT"
    result = assert_split_invariant(h1, wire)
    assert result == (
        b"hello,0123456789 hello world",
        200,
        True,
        True,
        b"NEXT",
        {"transfer-encoding": "CHUNKED"},  # the trailers are not headers
    )


def test_a_zero_size_last_chunk_alone(h1: ModuleType) -> None:
    assert assert_split_invariant(h1, CHUNKED + b"0\r\n\r\n")[:5] == (b"", 200, True, True, b"")
    assert run(h1, [CHUNKED + b"0" * 15 + b"\r\n\r\n"])[3]


def test_the_largest_chunk_size(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(CHUNKED + b"F" * 15 + b"\r\nabc") == b"abc"
    assert not parser.done


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\rX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello world\r\n0\r\n\r\n",
        b"5\r\nhello\r\r\n0\r\n\r\n",
    ],
)
def test_chunk_data_not_followed_by_crlf(h1: ModuleType, body: bytes) -> None:
    assert_refused(h1, CHUNKED + body, NO_CRLF_AFTER_DATA)


@pytest.mark.parametrize(
    "line",
    [
        b"0000000000000005",  # 16 hex digits
        b"10000000000000000",
        b"",
        b"-5",
        b"+5",
        b"0x5",
        b"g",
        b" 5",
        b"\t5",
        b"5 x",
        b"5=x",
        b"5,6",
        b"5\r",
        b"5;a\rb",
        b"5;a\x00",
        b"5;\x7f",
        b"5;a\nb",
    ],
)
def test_not_a_chunk_size(h1: ModuleType, line: bytes) -> None:
    assert_refused(h1, CHUNKED + line + b"\r\nhello\r\n0\r\n\r\n", NOT_A_CHUNK_SIZE)


@pytest.mark.parametrize("line", [b"5 ", b"5\t", b"5  \t ", b"0 "])
def test_whitespace_after_a_chunk_size_needs_an_extension(h1: ModuleType, line: bytes) -> None:
    """Whitespace may come before a `;` (BWS), never on its own."""
    assert_refused(h1, CHUNKED + line + b"\r\nhello\r\n0\r\n\r\n", NOT_A_CHUNK_SIZE)


def test_a_chunk_size_line_up_to_the_limit(h1: ModuleType) -> None:
    line = b"5;" + b"x" * (h1.MAX_CHUNK_LINE - 4) + b"\r\n"
    assert len(line) == h1.MAX_CHUNK_LINE
    wire = CHUNKED + line + b"hello\r\n0\r\n\r\n"
    assert run(h1, [wire])[:4] == (b"hello", 200, True, True)
    cut = len(CHUNKED) + len(line)
    for at in (cut - 3, cut - 2, cut - 1, cut):
        assert run(h1, [wire[:at], wire[at:]])[:4] == (b"hello", 200, True, True)
    assert run(h1, [wire[i : i + 7] for i in range(0, len(wire), 7)])[:4] == (b"hello", 200, True, True)


def test_a_chunk_size_line_past_the_limit(h1: ModuleType) -> None:
    line = b"5;" + b"x" * (h1.MAX_CHUNK_LINE - 3) + b"\r\n"
    wire = CHUNKED + line + b"hello\r\n0\r\n\r\n"
    assert refusal(h1, [wire]) == CHUNK_LINE_TOO_LONG
    cut = len(CHUNKED) + len(line)
    for at in (cut - 3, cut - 2, cut - 1, cut, len(CHUNKED) + 1):
        assert refusal(h1, [wire[:at], wire[at:]]) == CHUNK_LINE_TOO_LONG
    # Never ended: refused once a whole line's worth is in, not before.
    parser = h1.ResponseParser()
    parser.feed(CHUNKED + b"5" * (h1.MAX_CHUNK_LINE - 1))
    with pytest.raises(h1.ResponseError, match=re.escape(CHUNK_LINE_TOO_LONG)):
        parser.feed(b";")


def test_bad_trailers(h1: ModuleType) -> None:
    assert_refused(h1, CHUNKED + b"0\r\nX-T : 1\r\n\r\n", NOT_A_FIELD)
    assert_refused(h1, CHUNKED + b"0\r\nno colon\r\n\r\n", NOT_A_FIELD)
    assert_refused(h1, CHUNKED + b"0\r\nX: a\r\n b\r\n\r\n", NOT_A_FIELD)
    assert_refused(h1, CHUNKED + b"0\r\nX: \x00\r\n\r\n", NOT_A_FIELD)
    assert_refused(h1, CHUNKED + b"0\r\n\rX: 1\r\n\r\n", NOT_A_FIELD)


def test_trailer_lines_up_to_the_limit(h1: ModuleType) -> None:
    lines = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(h1.MAX_HEADERS))
    assert run(h1, [CHUNKED + b"0\r\n" + lines + b"\r\n"])[3]
    more = lines + b"X-Last: 1\r\n"
    assert refusal(h1, [CHUNKED + b"0\r\n" + more + b"\r\n"]) == TOO_MANY_LINES


def test_trailers_too_large(h1: ModuleType) -> None:
    room = h1.MAX_HEAD - len(b"X: \r\n\r\n")
    fits = b"0\r\nX: " + b"t" * room + b"\r\n\r\n"
    assert run(h1, [CHUNKED, fits[:100], fits[100:]])[3]
    assert run(h1, [CHUNKED + fits])[3]
    over = b"0\r\nX: " + b"t" * (room + 1) + b"\r\n\r\n"
    assert refusal(h1, [CHUNKED + over]) == TRAILERS_TOO_LARGE
    assert refusal(h1, [CHUNKED, over[:100], over[100:]]) == TRAILERS_TOO_LARGE
    never_ended = b"0\r\nX: " + b"t" * h1.MAX_HEAD
    assert refusal(h1, [CHUNKED + never_ended]) == TRAILERS_TOO_LARGE


# --- until close, keep-alive, no body -----------------------------------------------------------


def test_a_body_until_close(h1: ModuleType) -> None:
    wire = head(b"Content-Type: text/event-stream") + b"data: 1\n\ndata: 2\n\n"
    before = assert_split_invariant(h1, wire)
    assert before[:5] == (b"data: 1\n\ndata: 2\n\n", 200, False, False, b"")
    after = assert_split_invariant(h1, wire, eof=True)
    assert after[:5] == (b"data: 1\n\ndata: 2\n\n", 200, False, True, b"")


def test_feed_eof_ends_an_empty_body_until_close(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(head(status=b"HTTP/1.1 200")) == b""
    assert not parser.done
    parser.feed_eof()
    assert parser.done
    parser.feed_eof()
    assert parser.done


@pytest.mark.parametrize(
    "wire",
    [
        head(b"Content-Length: 2", status=b"HTTP/1.0 200 OK") + b"ok",
        head(b"Content-Length: 2", b"Connection: keep-alive", status=b"HTTP/1.0 200 OK") + b"ok",
        head(b"Transfer-Encoding: chunked", status=b"HTTP/1.0 200 OK") + chunked(b"ok"),
        head(b"Content-Length: 2", b"Connection: close") + b"ok",
        head(b"Content-Length: 2", b"connection: Close") + b"ok",
        head(b"Content-Length: 2", b"CONNECTION: CLOSE") + b"ok",
        head(b"Content-Length: 2", b"Connection: keep-alive, close") + b"ok",
        head(b"Content-Length: 2", b"Connection: upgrade,close ,te") + b"ok",
        head(b"Content-Length: 2", b"Connection: \t close \t") + b"ok",
        head(b"Content-Length: 2", b"Connection: keep-alive", b"Connection: close") + b"ok",
        head(b"Transfer-Encoding: chunked", b"Connection: close") + chunked(b"ok"),
    ],
)
def test_never_kept_alive(h1: ModuleType, wire: bytes) -> None:
    assert assert_split_invariant(h1, wire)[:4] == (b"ok", 200, False, True)


@pytest.mark.parametrize(
    "connection",
    [b"keep-alive", b"closed", b"close-ish", b"x close", b"clo se", b"", b"Upgrade", b"keep-alive,,"],
)
def test_kept_alive_without_a_close_token(h1: ModuleType, connection: bytes) -> None:
    wire = head(b"Content-Length: 2", b"Connection: " + connection) + b"ok"
    assert run(h1, [wire])[:4] == (b"ok", 200, True, True)


@pytest.mark.parametrize(
    "wire",
    [
        head(status=b"HTTP/1.1 204 No Content"),
        head(status=b"HTTP/1.1 304 Not Modified"),
        head(b"Content-Length: 10", status=b"HTTP/1.1 304 Not Modified"),
        head(b"Transfer-Encoding: chunked", status=b"HTTP/1.1 204 No Content"),
        head(b"Content-Length: 0"),
        head(b"Content-Length: 000", status=b"HTTP/1.1 500 Internal Server Error"),
    ],
)
def test_done_at_the_head(h1: ModuleType, wire: bytes) -> None:
    result = assert_split_invariant(h1, wire + b"more")
    assert result[2:5] == (True, True, b"more")
    assert result[0] == b""


def test_a_204_over_http_1_0_is_done_and_not_kept(h1: ModuleType) -> None:
    assert run(h1, [head(status=b"HTTP/1.0 204 No Content")])[:4] == (b"", 204, False, True)


# --- interim answers ----------------------------------------------------------------------------


def test_interim_heads_are_skipped(h1: ModuleType) -> None:
    wire = (
        head(status=b"HTTP/1.1 100 Continue")
        + head(b"Link: </style.css>; rel=preload", status=b"HTTP/1.1 103 Early Hints")
        + head(b"Content-Length: 2", b"X-Final: yes", status=b"HTTP/1.1 200 OK")
        + b"ok"
    )
    assert assert_split_invariant(h1, wire) == (
        b"ok",
        200,
        True,
        True,
        b"",
        {"content-length": "2", "x-final": "yes"},
    )


def test_an_interim_head_alone_is_not_the_answer(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(head(b"Connection: close", status=b"HTTP/1.1 100 Continue")) == b""
    assert (parser.status, parser.done, parser.headers) == (0, False, {})
    with pytest.raises(h1.ResponseError, match=re.escape(CUT_SHORT)):
        parser.feed_eof()
    parser = h1.ResponseParser()
    parser.feed(head(b"Connection: close", status=b"HTTP/1.1 100 Continue") + head(b"Content-Length: 0"))
    assert (parser.status, parser.keep_alive, parser.done) == (200, True, True)  # the 100's close is not the answer's


def test_interim_heads_are_checked(h1: ModuleType) -> None:
    assert_refused(h1, head(b"Bad Name: x", status=b"HTTP/1.1 100 Continue"), NOT_A_FIELD)
    assert_refused(h1, head(b"Content-Length: x", status=b"HTTP/1.1 103 Early Hints"), BAD_LENGTH)


@pytest.mark.parametrize(
    "wire",
    [
        head(b"Upgrade: websocket", b"Connection: Upgrade", status=b"HTTP/1.1 101 Switching Protocols"),
        head(status=b"HTTP/1.1 101"),
        head(status=b"HTTP/1.1 100 Continue") + head(status=b"HTTP/1.1 101 Switching Protocols"),
    ],
)
def test_an_unasked_switch_is_refused(h1: ModuleType, wire: bytes) -> None:
    assert_refused(h1, wire, SWITCHING)


# --- strictness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", STATUS_LINE),  # bare LF
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\nX: y\r\n\r\n", NOT_A_FIELD),
        (b"HTTP/1.1 200 OK\r\nX: y\n\r\n\r\n", NOT_A_FIELD),
        (b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n", STATUS_LINE),  # bare CR
        (head(b"X: a\rb", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a\r", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"\rX: a", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a", b" b", b"Content-Length: 0"), NOT_A_FIELD),  # obs-fold
        (head(b"X: a", b"\tb", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a", b" Y: b", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X : a", b"Content-Length: 0"), NOT_A_FIELD),  # a space before the colon
        (head(b"X\t: a", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"Content-Length : 0"), NOT_A_FIELD),
        (head(b": a", b"Content-Length: 0"), NOT_A_FIELD),  # an empty name
        (head(b"No colon", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X(y): a", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X-\xe9: a", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a\x00b", b"Content-Length: 0"), NOT_A_FIELD),  # control bytes in a value
        (head(b"X: \x7f", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a\x01", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: \x1b[0m", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"X: a\x0bb", b"Content-Length: 0"), NOT_A_FIELD),
        (head(b"Content-Length: 0", b"X: a\x00"), NOT_A_FIELD),
    ],
)
def test_not_a_field(h1: ModuleType, wire: bytes, message: str) -> None:
    assert_refused(h1, wire, message)


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/2 200",
        b"HTTP/2.0 200 OK",
        b"HTTP/1.2 200 OK",
        b"HTTP/1.1 20",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 600 X",
        b"HTTP/1.1 099 X",
        b"HTTP/1.1 abc",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1\t200 OK",
        b"HTTP/1.1 200\tOK",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 O\x7fK",
        b"HTTP/1.1 200 O\nK",
        b"http/1.1 200 OK",
        b" HTTP/1.1 200 OK",
        b"ICY 200 OK",
        b"HTTP/1.1",
        b"",
    ],
)
def test_not_a_status_line(h1: ModuleType, line: bytes) -> None:
    assert_refused(h1, head(b"Content-Length: 0", status=line), STATUS_LINE)


@pytest.mark.parametrize(
    "line",
    [b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.0 599 \t\xe9 x!", b"HTTP/1.1 200 OK \t", b"HTTP/1.1 451  two  spaces"],
)
def test_status_lines_accepted(h1: ModuleType, line: bytes) -> None:
    result = run(h1, [head(b"Content-Length: 0", status=line)])
    assert result[1] == int(line[9:12])
    assert result[3]


def test_an_empty_head_is_not_a_status_line(h1: ModuleType) -> None:
    assert_refused(h1, b"\r\n\r\n", STATUS_LINE)
    assert_refused(h1, b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", STATUS_LINE)


def test_an_all_lf_head_never_ends(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok") == b""
    assert parser.status == 0
    with pytest.raises(h1.ResponseError, match=re.escape(CUT_SHORT)):
        parser.feed_eof()


@pytest.mark.parametrize(
    "value",
    [b"+5", b"-5", b"5 5", b"0x5", b"5,5", b"5, 5", b"5.0", b"five", b"", b"\xe9", b"1" * 19, b"0" * 19],
)
def test_not_a_content_length(h1: ModuleType, value: bytes) -> None:
    assert_refused(h1, head(b"Content-Length: " + value) + b"hello", BAD_LENGTH)


@pytest.mark.parametrize(
    "headers",
    [
        (b"Content-Length: 5", b"Content-Length: 6"),
        (b"Content-Length: 5", b"X: y", b"content-length: 0"),
        (b"Content-Length: 5", b"Content-Length: 5", b"CONTENT-LENGTH: 50"),
    ],
)
def test_two_different_content_lengths(h1: ModuleType, headers: tuple[bytes, ...]) -> None:
    assert_refused(h1, head(*headers) + b"hello", TWO_LENGTHS)


@pytest.mark.parametrize(
    "headers",
    [
        (b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"Content-Length: 5"),
        (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
    ],
)
def test_a_length_with_a_coding(h1: ModuleType, headers: tuple[bytes, ...]) -> None:
    assert_refused(h1, head(*headers) + chunked(b"hello"), LENGTH_AND_CODING)


@pytest.mark.parametrize(
    "headers",
    [
        (b"Transfer-Encoding: gzip",),
        (b"Transfer-Encoding: gzip, chunked",),
        (b"Transfer-Encoding: chunked, chunked",),
        (b"Transfer-Encoding: chunked,",),
        (b"Transfer-Encoding: chunked;q=1",),
        (b"Transfer-Encoding: identity",),
        (b"Transfer-Encoding:",),
        (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"transfer-encoding: gzip"),
    ],
)
def test_not_one_chunked_coding(h1: ModuleType, headers: tuple[bytes, ...]) -> None:
    assert_refused(h1, head(*headers) + chunked(b"hello"), BAD_CODING)


def test_header_lines_up_to_the_limit(h1: ModuleType) -> None:
    lines = [b"X-%d: %d" % (i, i) for i in range(h1.MAX_HEADERS - 1)]
    assert run(h1, [head(*lines, b"Content-Length: 0")])[3]
    assert refusal(h1, [head(*lines, b"X-Last: 1", b"Content-Length: 0")]) == TOO_MANY_LINES


def padded_head(size: int) -> bytes:
    """An answer's head of exactly `size` bytes, its blank line included."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def test_a_head_exactly_at_the_limit(h1: ModuleType) -> None:
    wire = padded_head(h1.MAX_HEAD)
    assert len(wire) == h1.MAX_HEAD
    for cuts in ([], [1], [100], [len(wire) - 4], [len(wire) - 2], [len(wire) - 1], [1000, 50000, len(wire) - 3]):
        chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        assert run(h1, chunks)[:4] == (b"", 200, True, True), cuts


def test_a_head_past_the_limit(h1: ModuleType) -> None:
    wire = padded_head(h1.MAX_HEAD + 1)
    for cuts in ([], [1], [len(wire) - 4], [len(wire) - 1], [h1.MAX_HEAD - 1]):
        chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        assert refusal(h1, chunks) == HEAD_TOO_LARGE, cuts


def test_a_head_that_never_ends(h1: ModuleType) -> None:
    endless = padded_head(h1.MAX_HEAD + 10)[: h1.MAX_HEAD]
    parser = h1.ResponseParser()
    assert parser.feed(endless[:-1]) == b""  # a byte short of the limit: still waiting
    with pytest.raises(h1.ResponseError, match=re.escape(HEAD_TOO_LARGE)):
        parser.feed(endless[-1:])
    assert refusal(h1, [endless]) == HEAD_TOO_LARGE
    assert refusal(h1, [endless[:7], endless[7:]]) == HEAD_TOO_LARGE


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r",
        head(b"Content-Length: 5") + b"hell",
        CHUNKED,
        CHUNKED + b"5",
        CHUNKED + b"5\r",
        CHUNKED + b"5\r\nhel",
        CHUNKED + b"5\r\nhello",
        CHUNKED + b"5\r\nhello\r",
        CHUNKED + b"5\r\nhello\r\n",
        CHUNKED + b"5\r\nhello\r\n0\r\n",
        CHUNKED + b"5\r\nhello\r\n0\r\n\r",
        CHUNKED + b"5\r\nhello\r\n0\r\nX: 1\r\n",
        head(status=b"HTTP/1.1 100 Continue"),
    ],
)
def test_eof_before_the_end_is_a_cut_answer(h1: ModuleType, wire: bytes) -> None:
    assert_refused(h1, wire, CUT_SHORT, eof=True)


def test_eof_after_the_end_is_fine(h1: ModuleType) -> None:
    for wire in [head(b"Content-Length: 2") + b"ok", CHUNKED + chunked(b"ok"), head(status=b"HTTP/1.1 204 No Content")]:
        result = assert_split_invariant(h1, wire + b"x", eof=True)
        assert result[3:5] == (True, b"x")


# --- headers ------------------------------------------------------------------------------------


def test_headers_by_lower_case_name(h1: ModuleType) -> None:
    wire = head(
        b"Content-Type: application/json",
        b"X-Request-ID:  \t abc \t ",
        b"x-request-id: def",
        b"X-REQUEST-ID:",
        b"Retry-After:5",
        b"X-Note: caf\xe9 \x80\xff",
        b"X-Empty:",
        b"X-Inner:  a \t b ",
        b"Content-Length: 0",
    )
    assert run(h1, [wire])[5] == {
        "content-type": "application/json",
        "x-request-id": "abc, def, ",
        "retry-after": "5",
        "x-note": "caf\xe9 \x80\xff",
        "x-empty": "",
        "x-inner": "a \t b",
        "content-length": "0",
    }


def test_headers_of_a_body_until_close_are_there_before_the_end(h1: ModuleType) -> None:
    parser = h1.ResponseParser()
    parser.feed(head(b"Content-Type: text/event-stream", status=b"HTTP/1.1 429 Too Many Requests") + b"x")
    assert parser.headers == {"content-type": "text/event-stream"}
    assert parser.status == 429


# --- linear time --------------------------------------------------------------------------------


def test_a_large_head_one_byte_a_read(h1: ModuleType) -> None:
    lines = [b"X-%d: %s" % (i, b"v" * 460) for i in range(120)]
    wire = head(*lines, b"Content-Length: 2") + b"ok"
    assert len(wire) > 55_000
    parser = h1.ResponseParser()
    body = b"".join([parser.feed(wire[i : i + 1]) for i in range(len(wire))])
    assert (body, parser.status, parser.done) == (b"ok", 200, True)
    assert len(parser.headers) == 121


# --- properties ---------------------------------------------------------------------------------

TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING = ("content-length", "transfer-encoding", "connection")
FIELD_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])


def onto(alphabet: bytes) -> bytes:
    """A `bytes.translate` table that maps every byte into `alphabet` (so drawn bytes need no filtering)."""
    return bytes(alphabet[i % len(alphabet)] for i in range(256))


NAMES = (
    st.binary(min_size=1, max_size=10)
    .map(lambda raw: raw.translate(onto(TOKEN)).decode("ascii"))
    .filter(lambda name: name.lower() not in FRAMING)
)
VALUES = st.binary(max_size=16).map(lambda raw: raw.translate(onto(FIELD_BYTES)))
FIELDS = st.tuples(NAMES, VALUES)
EXTENSIONS = st.sampled_from([b"", b";a", b";name=value", b' ;q="x y"', b"\t;\xe9", b";", b"  ;  a = b ; c"])
CONNECTIONS = st.sampled_from([None, b"close", b"Close", b"keep-alive", b"keep-alive, CLOSE", b"upgrade", b"te,close"])
INTERIM = st.lists(
    st.sampled_from(
        [
            head(status=b"HTTP/1.1 100 Continue"),
            head(b"Link: </s.css>; rel=preload", status=b"HTTP/1.1 103 Early Hints"),
        ]
    ),
    max_size=2,
)
VERSIONS = st.sampled_from([b"1.1", b"1.1", b"1.0"])
STATUSES = st.integers(200, 599).filter(lambda status: status not in (204, 304))
REASONS = st.none() | VALUES
HEADER_LISTS = st.lists(FIELDS, max_size=6)
TRAILER_LISTS = st.lists(FIELDS, max_size=3)
FRAMINGS = st.sampled_from(["length", "chunked", "until close"])
PIECE_LISTS = st.lists(st.binary(min_size=1, max_size=40), max_size=5)
CASES = st.sampled_from([str.lower, str.title, str.upper])
HEX_CASES = st.sampled_from("xX")
ZEROS = st.integers(0, 3)
POSITIONS = st.integers(0, 8)
TIMES = st.integers(1, 2)
EXTRAS = st.binary(max_size=24)
CUTS = st.lists(st.integers(0, 1 << 16), max_size=12)


@dataclass
class Case:
    wire: bytes
    expected: Result  # after feed_eof
    until_close: bool


def expected_headers(fields: list[tuple[str, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in fields:
        key, text = name.lower(), value.strip(b" \t").decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def size_line(draw: st.DrawFn, size: int) -> bytes:
    """A chunk-size line (without its CRLF): hex of either case, maybe leading zeros, maybe extensions."""
    return b"0" * draw(ZEROS) + format(size, draw(HEX_CASES)).encode() + draw(EXTENSIONS)


@st.composite
def answers(draw: st.DrawFn) -> Case:
    """A valid answer with its interim heads and the bytes after it, and what parsing it gives."""
    version, status, reason = draw(VERSIONS), draw(STATUSES), draw(REASONS)
    status_line = b"HTTP/%s %d" % (version, status) + (b"" if reason is None else b" " + reason)
    fields: list[tuple[str, bytes]] = draw(HEADER_LISTS)
    framing = draw(FRAMINGS)
    pieces = draw(PIECE_LISTS)
    body = b"".join(pieces)
    connection = draw(CONNECTIONS)
    close = version == b"1.0" or (connection is not None and b"close" in connection.lower())
    framing_fields = [] if connection is None else [(draw(CASES)("connection"), connection)]
    if framing == "length":
        framing_fields += [(draw(CASES)("content-length"), b"%d" % len(body))] * draw(TIMES)
    elif framing == "chunked":
        framing_fields.append((draw(CASES)("transfer-encoding"), b"chunked"))
    for field in framing_fields:
        fields.insert(draw(POSITIONS), field)
    final = head(*[name.encode() + b":" + value for name, value in fields], status=status_line)
    if framing == "chunked":
        encoded = b"".join(size_line(draw, len(piece)) + b"\r\n" + piece + b"\r\n" for piece in pieces)
        encoded += size_line(draw, 0) + b"\r\n"
        encoded += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in draw(TRAILER_LISTS))
        encoded += b"\r\n"
    else:
        encoded = body
    extra = draw(EXTRAS)
    wire = b"".join(draw(INTERIM)) + final + encoded + extra
    headers = expected_headers(fields)
    if framing == "until close":
        return Case(wire, (body + extra, status, False, True, b"", headers), until_close=True)
    return Case(wire, (body, status, not close, True, extra, headers), until_close=False)


def random_reads(data: bytes, source: st.DataObject) -> list[bytes]:
    cuts = sorted(cut % (len(data) + 1) for cut in source.draw(CUTS, label="cuts"))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(case=answers(), data=st.data())
def test_valid_answers_in_random_reads(h1: ModuleType, case: Case, data: st.DataObject) -> None:
    reads = random_reads(case.wire, data)
    assert run(h1, [case.wire], eof=True) == case.expected
    assert run(h1, reads, eof=True) == case.expected
    assert run(h1, reads)[3] is not case.until_close


@settings(max_examples=150, deadline=None)
@given(case=answers(), data=st.data())
def test_the_twins_agree_on_valid_answers(
    h1: ModuleType, h1_other: ModuleType, case: Case, data: st.DataObject
) -> None:
    reads = random_reads(case.wire, data)
    assert run(h1, reads) == run(h1_other, reads)
    assert run(h1_other, reads, eof=True) == case.expected


def outcome(h1: ModuleType, reads: list[bytes]) -> tuple[Any, ...]:
    """Everything observable: what each read gave up to a refusal and its message, or the end state and feed_eof's."""
    parser = h1.ResponseParser()
    bodies: list[bytes] = []
    try:
        for read in reads:
            bodies.append(parser.feed(read))
    except h1.ResponseError as exc:
        return ("refused", bodies, str(exc))
    state = (bodies, parser.status, parser.keep_alive, parser.done, parser.extra, parser.headers)
    try:
        parser.feed_eof()
    except h1.ResponseError as exc:
        return ("cut", state, str(exc))
    return ("closed", state, parser.done)


HEAD_PIECES = st.sampled_from(
    [
        b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"200", b"101", b"204",
        b"304", b"1", b" OK", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"Content-Length", b"content-length",
        b"Transfer-Encoding", b"Connection", b":", b": ", b" ", b"\t", b"chunked", b"Chunked", b"close", b",", b"0",
        b"5", b"12", b"+", b"x", b"\x00", b"\x7f", b"\xe9", b"hello world",
    ]
)  # fmt: skip
BODY_PIECES = st.sampled_from(
    [
        b"0", b"5", b"a", b"F", b"000000000000000", b"1", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b";", b"x=y", b" ", b"\t",
        b"hello", b"\x00", b":", b"X-T: 1", b"g", b"-", b"\xff",
    ]
)  # fmt: skip
VALID_HEADS = st.sampled_from(
    [
        CHUNKED,
        head(b"Content-Length: 5"),
        head(),
        head(status=b"HTTP/1.1 100 Continue") + CHUNKED,
        head(b"Transfer-Encoding: chunked", status=b"HTTP/1.0 200 OK"),
        CHUNKED + b"5\r\nhello\r\n",
        CHUNKED + b"0\r\n",
    ]
)


@settings(max_examples=200, deadline=None)
@given(wire=st.binary(max_size=200) | st.lists(HEAD_PIECES, max_size=30).map(b"".join), data=st.data())
def test_the_twins_agree_on_arbitrary_bytes(
    h1: ModuleType, h1_other: ModuleType, wire: bytes, data: st.DataObject
) -> None:
    reads = random_reads(wire, data)
    assert outcome(h1, reads) == outcome(h1_other, reads)
    assert outcome(h1, [wire]) == outcome(h1_other, [wire])


@settings(max_examples=200, deadline=None)
@given(
    start=VALID_HEADS,
    rest=st.binary(max_size=80) | st.lists(BODY_PIECES, max_size=30).map(b"".join),
    data=st.data(),
)
def test_the_twins_agree_on_arbitrary_bytes_after_a_valid_head(
    h1: ModuleType, h1_other: ModuleType, start: bytes, rest: bytes, data: st.DataObject
) -> None:
    reads = random_reads(start + rest, data)
    assert outcome(h1, reads) == outcome(h1_other, reads)
    assert outcome(h1, [start + rest]) == outcome(h1_other, [start + rest])


@pytest.mark.parametrize(
    "wire",
    [
        CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
        CHUNKED + b"5\t\r\nhello\r\n0\r\n\r\n",
        CHUNKED + b"0 \r\n\r\n",
        CHUNKED + b"5 ;\r\nhello\r\n0\t;\r\n\r\n",
        CHUNKED + b"5;\x80\r\nhello\r\n0\r\nX: \xff\r\n\r\n",
        head(b"Content-Length: 5", status=b"HTTP/1.1 200 \xff") + b"hello",
        head(b"Connection: ,close,", b"Content-Length: 0"),
    ],
)
def test_the_twins_agree_on_edge_inputs(h1: ModuleType, h1_other: ModuleType, wire: bytes) -> None:
    for reads in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        assert outcome(h1, reads) == outcome(h1_other, reads)


CHUNK_SIZE_GRAMMAR = re.compile(rb"[0-9A-Fa-f]{1,15}(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
LINE_PIECES = st.sampled_from([b"0", b"5", b"a", b"F", b"00000", b" ", b"\t", b";", b"=", b"x", b'"', b"\x00", b"\xe9"])


@settings(max_examples=200, deadline=None)
@given(line=st.lists(LINE_PIECES, max_size=12).map(b"".join))
def test_chunk_size_lines_match_their_grammar(h1: ModuleType, line: bytes) -> None:
    """Hex digits (at most 15), then optionally whitespace, `;` and anything a field value may hold."""
    wire = CHUNKED + line + b"\r\n"
    if CHUNK_SIZE_GRAMMAR.fullmatch(line) is None:
        assert refusal(h1, [wire]) == NOT_A_CHUNK_SIZE
    else:
        assert run(h1, [wire])[:2] == (b"", 200)


def test_a_refusal_carries_the_body_read_before_the_break(h1: ModuleType) -> None:
    """The events a stream sent before its framing broke still belong to the client: the error holds them."""
    parser = h1.ResponseParser()
    parser.feed(head(b"Transfer-Encoding: chunked"))
    with pytest.raises(h1.ResponseError) as refused:
        parser.feed(b"5\r\nhello\r\n6\r\n world\r\nZZ\r\n")
    assert refused.value.body == b"hello world"
