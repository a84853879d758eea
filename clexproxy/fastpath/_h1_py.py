"""HTTP/1.1 answer framing for the upstream connections: the pure-Python twin of `_h1`.

The gateway reads one answer after another from each kept-alive provider connection. Before,
aiohttp's client protocol did it, and on every answer it made a message tuple, a `CIMultiDict`,
a `StreamReader` and its wake-ups, which was a quarter of an admitted call's time. All the gateway
needs of an answer is its status, its body bytes as they arrive, whether the connection can be
used again, and, on an error's rare path, a header or two. `ResponseParser` gives exactly that.

It is strict, as a gateway that relays bytes to its own clients must be with an upstream it does
not control: CRLF only (no bare CR or LF, no obs-fold), header names that are tokens, values with
no control bytes, one Content-Length (repeats must agree), Transfer-Encoding only `chunked` and
never with a Content-Length, chunk sizes of at most 15 hex digits, and the head, a chunk-size line
and the trailers each within a limit. Anything else is a `ResponseError`, and the connection is
never used again. The compiled `_h1` mirrors this module step by step; the same tests run on both.
"""

from __future__ import annotations

import re

__all__ = ("ResponseError", "ResponseParser")

MAX_HEAD = 65536  # a head (status line, headers, the blank line) or the trailers, in bytes
MAX_HEADERS = 128  # header lines in one head or in the trailers
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions and CRLF

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CRLF = b"\r\n"
_END_OF_HEAD = b"\r\n\r\n"


class ResponseError(ValueError):
    """An answer that breaks HTTP/1.1's framing (or the parser's limits).

    `body` holds the body bytes the failing `feed` had read before the break: they came before the
    failure, and the caller may still want them (a stream's events before a broken chunk).
    """

    body = b""


class ResponseParser:
    """Splits one connection's answers: `begin()` before each, then `feed()` what the socket gives.

    `feed` returns the body bytes the data carried (the chunked coding removed) and sets `status`
    and `keep_alive` once the final head is in (interim 1xx heads are skipped) and `done` at the
    answer's end. Bytes past the end are kept in `extra`: an upstream that sent them cannot be
    trusted with another request. `feed_eof` ends a body that runs to the connection's close, and
    raises for an answer the close cut short.
    """

    __slots__ = ("_buf", "_chunk_left", "_head", "_left", "_scan", "_state", "done", "extra", "keep_alive", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.extra = b""
        self.begin()

    def begin(self) -> None:
        """Expect a new answer (bytes already past the last one, in `extra`, are not reread)."""
        self._buf.clear()
        self._scan = 0  # in the head or the trailers, where the search for their end resumes
        self._state = _HEAD
        self._left = 0
        self._chunk_left = 0
        self._head = b""
        self.status = 0
        self.keep_alive = False
        self.done = False

    @property
    def headers(self) -> dict[str, str]:
        """The final head's headers by lower-case name (repeats joined with ", "), decoded as latin-1."""
        out: dict[str, str] = {}
        for line in self._head.split(_CRLF)[1:]:  # checked when it came in
            colon = line.find(b":")
            name, value = line[:colon].decode("ascii").lower(), line[colon + 1 :].strip(b" \t").decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    def feed(self, data: bytes) -> bytes:
        if self._state == _DONE:
            self.extra += data
            return b""
        buf = self._buf
        buf += data
        body: list[bytes] = []
        pos = 0
        try:
            while pos < len(buf):
                state = self._state
                if state == _HEAD or state == _TRAILERS:  # a block of lines that ends in a blank one
                    if state == _TRAILERS and not self._scan:
                        if len(buf) - pos < 2:
                            break
                        if buf[pos : pos + 2] == _CRLF:  # no trailers
                            pos += 2
                            self._finish()
                            continue
                    too_large = f"the answer's {'head is' if state == _HEAD else 'trailers are'} too large"
                    end = buf.find(_END_OF_HEAD, pos + self._scan)
                    if end < 0:
                        if len(buf) - pos >= MAX_HEAD:
                            raise ResponseError(too_large)
                        self._scan = max(0, len(buf) - pos - 3)
                        break
                    if end + 4 - pos > MAX_HEAD:
                        raise ResponseError(too_large)
                    self._scan = 0
                    if state == _HEAD:
                        self._on_head(bytes(buf[pos:end]))
                    else:
                        _check_trailers(bytes(buf[pos:end]).split(_CRLF))
                        self._finish()
                    pos = end + 4
                elif state == _LENGTH:
                    take = min(self._left, len(buf) - pos)
                    body.append(bytes(buf[pos : pos + take]))
                    pos += take
                    self._left -= take
                    if not self._left:
                        self._finish()
                elif state == _CHUNK_SIZE:
                    end = buf.find(_CRLF, pos, pos + MAX_CHUNK_LINE)
                    if end < 0:
                        if len(buf) - pos >= MAX_CHUNK_LINE:
                            raise ResponseError("a chunk-size line is too long")
                        break
                    match = _CHUNK_SIZE_LINE.fullmatch(buf, pos, end)
                    if match is None:
                        raise ResponseError("a chunk-size line is not a chunk size")
                    size = int(match.group(1), 16)
                    pos = end + 2
                    if size:
                        self._chunk_left = size
                        self._state = _CHUNK_DATA
                    else:
                        self._state = _TRAILERS
                elif state == _CHUNK_DATA:
                    take = min(self._chunk_left, len(buf) - pos)
                    body.append(bytes(buf[pos : pos + take]))
                    pos += take
                    self._chunk_left -= take
                    if not self._chunk_left:
                        self._state = _CHUNK_END
                elif state == _CHUNK_END:
                    if len(buf) - pos < 2:
                        if buf[pos] != 13:
                            raise ResponseError("a chunk's data is not followed by CRLF")
                        break
                    if buf[pos : pos + 2] != _CRLF:
                        raise ResponseError("a chunk's data is not followed by CRLF")
                    pos += 2
                    self._state = _CHUNK_SIZE
                elif state == _UNTIL_CLOSE:
                    body.append(bytes(buf[pos:]))
                    pos = len(buf)
                else:  # _DONE
                    self.extra += bytes(buf[pos:])
                    pos = len(buf)
        except ResponseError as exc:
            exc.body = b"".join(body)
            raise
        finally:
            del buf[:pos]
        return b"".join(body) if len(body) != 1 else body[0]

    def feed_eof(self) -> None:
        """The connection closed: the end of a body that runs to it; otherwise, unless done, a cut answer."""
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._state != _DONE:
            raise ResponseError("the connection closed before the answer's end")

    def _finish(self) -> None:
        self._state = _DONE
        self.done = True

    def _on_head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise ResponseError("the answer does not start with an HTTP/1.x status line")
        status = int(status_line.group(2))
        length = -1
        chunked = False
        close = status_line.group(1) == b"0"
        for count, line in enumerate(lines[1:], 1):
            if count > MAX_HEADERS:
                raise ResponseError("the answer has too many header lines")
            name, value = _field(line)
            if len(name) == 14 and name.lower() == b"content-length":
                if _DIGITS.fullmatch(value) is None:
                    raise ResponseError("a Content-Length that is not a length")
                if length >= 0 and int(value) != length:
                    raise ResponseError("two different Content-Lengths")
                length = int(value)
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise ResponseError("a Transfer-Encoding other than one chunked")
                chunked = True
            elif len(name) == 10 and name.lower() == b"connection":
                if any(token.strip(b" \t").lower() == b"close" for token in value.split(b",")):
                    close = True
        if chunked and length >= 0:
            raise ResponseError("both a Content-Length and a Transfer-Encoding")
        if status < 200:
            if status == 101:
                raise ResponseError("a 101 (Switching Protocols) that was not asked for")
            return  # an interim answer (100 Continue, 103 Early Hints): the final head follows
        self._head = head
        self.status = status
        self.keep_alive = not close
        if status in (204, 304) or length == 0:
            self._finish()
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length > 0:
            self._left = length
            self._state = _LENGTH
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE  # the body is what comes until the connection closes


def _check_trailers(lines: list[bytes]) -> None:
    for count, line in enumerate(lines, 1):
        if count > MAX_HEADERS:
            raise ResponseError("the answer has too many header lines")
        _field(line)


def _field(line: bytes) -> tuple[bytes, bytes]:
    """A header line's name and value (stripped); a `ResponseError` for one that is not a field (obs-fold, a CTL)."""
    colon = line.find(b":")
    value = line[colon + 1 :].strip(b" \t")
    if colon < 1 or _NAME.fullmatch(line, 0, colon) is None or _VALUE.fullmatch(value) is None:
        raise ResponseError("a header line is not a field")
    return line[:colon], value
