# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled HTTP/1.1 answer framing for the upstream connections (`ResponseParser`).

`_h1_py` is the pure-Python twin with the same public API and results, and its docstring says
what the parser accepts and why. The two mirror each other step by step (the same states, the same
order of checks, the same messages); every test runs against both. Keep them in sync.

What pays to be in C here: the head is checked byte by byte against tables and never split into
Python objects (the headers are built only when asked for, on an error's path); a read that holds
a whole answer, or the rest of one, is parsed where it lies, and a body that is all of a read is
that read's own bytes object.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy, memmove

__all__ = ("ResponseError", "ResponseParser")

MAX_HEAD = 65536
MAX_HEADERS = 128
MAX_CHUNK_LINE = 4096

cdef enum:
    _HEAD_LIMIT = 65536
    _HEADERS_LIMIT = 128
    _CHUNK_LINE_LIMIT = 4096
    _CR = 13
    _LF = 10
    _MIN_CAPACITY = 1024
    _KEEP_CAPACITY = 256 * 1024

cdef enum State:
    S_HEAD
    S_LENGTH
    S_CHUNK_SIZE
    S_CHUNK_DATA
    S_CHUNK_END
    S_TRAILERS
    S_UNTIL_CLOSE
    S_DONE


class ResponseError(ValueError):
    """An answer that breaks HTTP/1.1's framing (or the parser's limits); `body`: what was read before the break."""

    body = b""


# 1: a token character (a header name's); 2: a field value's (HTAB, SP, VCHAR, obs-text); 4: a hex digit.
cdef unsigned char _CLASS[256]


cdef void _init_classes():
    cdef int c
    for c in range(256):
        _CLASS[c] = 0
        if c == 9 or (0x20 <= c <= 0x7e) or c >= 0x80:
            _CLASS[c] |= 2
        if (b"0"[0] <= c <= b"9"[0]) or (b"a"[0] <= c <= b"z"[0]) or (b"A"[0] <= c <= b"Z"[0]):
            _CLASS[c] |= 1
        if (b"0"[0] <= c <= b"9"[0]) or (b"a"[0] <= c <= b"f"[0]) or (b"A"[0] <= c <= b"F"[0]):
            _CLASS[c] |= 4
    for c in b"!#$%&'*+-.^_`|~":
        _CLASS[c] |= 1


_init_classes()


cdef inline bint _is_ws(unsigned char c):
    return c == 32 or c == 9


cdef inline unsigned char _lower(unsigned char c):
    return c + 32 if 65 <= c <= 90 else c


cdef bint _same_name(const unsigned char* s, Py_ssize_t n, const char* lower_name, Py_ssize_t m):
    """Whether s[:n] is `lower_name` (of length m), ASCII case aside."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if _lower(s[i]) != <unsigned char>lower_name[i]:
            return False
    return True


cdef Py_ssize_t _find_crlf(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end):
    """The index of the first CRLF wholly in buf[start:end], or -1."""
    cdef const unsigned char* hit
    cdef Py_ssize_t i = start
    while i + 1 < end:
        hit = <const unsigned char*>memchr(buf + i, _CR, <size_t>(end - 1 - i))
        if hit == NULL:
            return -1
        i = hit - buf
        if buf[i + 1] == _LF:
            return i
        i += 1
    return -1


cdef Py_ssize_t _find_blank_line(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end):
    """The index of the first CRLFCRLF wholly in buf[start:end], or -1."""
    cdef Py_ssize_t i = start
    while True:
        i = _find_crlf(buf, i, end)
        if i < 0 or i + 3 >= end:
            return -1
        if buf[i + 2] == _CR and buf[i + 3] == _LF:
            return i
        i += 2


cdef int _field(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
                Py_ssize_t* colon, Py_ssize_t* vstart, Py_ssize_t* vend) except -1:
    """Check one header line buf[start:end]; set where its name ends and where its stripped value lies."""
    cdef Py_ssize_t i
    cdef const unsigned char* hit = <const unsigned char*>memchr(buf + start, 58, <size_t>(end - start))
    if hit == NULL or hit == buf + start:
        raise ResponseError("a header line is not a field")
    colon[0] = hit - buf
    for i in range(start, colon[0]):
        if not _CLASS[buf[i]] & 1:
            raise ResponseError("a header line is not a field")
    i = colon[0] + 1
    while i < end and _is_ws(buf[i]):
        i += 1
    vstart[0] = i
    vend[0] = end
    while vend[0] > vstart[0] and _is_ws(buf[vend[0] - 1]):
        vend[0] -= 1
    for i in range(vstart[0], vend[0]):
        if not _CLASS[buf[i]] & 2:
            raise ResponseError("a header line is not a field")
    return 0


cdef int _check_trailers(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end) except -1:
    cdef Py_ssize_t line_end, colon, vstart, vend
    cdef Py_ssize_t count = 0
    while True:
        count += 1
        if count > _HEADERS_LIMIT:
            raise ResponseError("the answer has too many header lines")
        line_end = _find_crlf(buf, start, end)
        if line_end < 0:
            line_end = end
        _field(buf, start, line_end, &colon, &vstart, &vend)
        if line_end == end:
            return 0
        start = line_end + 2


cdef class ResponseParser:
    """Splits one connection's answers: `begin()` before each, then `feed()` what the socket gives (see `_h1_py`)."""

    cdef unsigned char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _scan  # in the head or the trailers, where the search for their end resumes
    cdef State _state
    cdef long long _left
    cdef long long _chunk_left
    cdef bytes _head
    cdef readonly int status
    cdef readonly bint keep_alive
    cdef readonly bint done
    cdef public bytes extra

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self):
        self.extra = b""
        self.begin()

    def __dealloc__(self):
        PyMem_Free(self._buf)

    def begin(self):
        self._len = 0
        if self._cap > _KEEP_CAPACITY:
            PyMem_Free(self._buf)
            self._buf = NULL
            self._cap = 0
        self._scan = 0
        self._state = S_HEAD
        self._left = 0
        self._chunk_left = 0
        self._head = b""
        self.status = 0
        self.keep_alive = False
        self.done = False

    @property
    def headers(self):
        cdef dict out = {}
        cdef bytes line
        for line in self._head.split(b"\r\n")[1:]:  # checked when it came in
            colon = line.find(b":")
            name = line[:colon].decode("ascii").lower()
            value = line[colon + 1:].strip(b" \t").decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    cdef int _keep(self, const unsigned char* src, Py_ssize_t size) except -1:
        """Make src[:size] the buffer's content (src may lie in the buffer itself)."""
        cdef unsigned char* grown
        cdef Py_ssize_t cap
        if size > self._cap:
            cap = max(size, self._cap * 2, _MIN_CAPACITY)
            if src >= self._buf and src < self._buf + self._len:
                raise AssertionError("the buffer never grows from its own bytes")
            grown = <unsigned char*>PyMem_Realloc(self._buf, <size_t>cap)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = cap
        if size and src != self._buf:
            memmove(self._buf, src, <size_t>size)
        self._len = size
        return 0

    cdef int _append(self, const unsigned char* src, Py_ssize_t size) except -1:
        cdef Py_ssize_t need = self._len + size
        cdef unsigned char* grown
        cdef Py_ssize_t cap
        if need > self._cap:
            cap = max(need, self._cap * 2, _MIN_CAPACITY)
            grown = <unsigned char*>PyMem_Realloc(self._buf, <size_t>cap)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = cap
        memcpy(self._buf + self._len, src, <size_t>size)
        self._len = need
        return 0

    def feed(self, data):
        cdef bytes chunk = data if PyBytes_CheckExact(data) else bytes(data)
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0
        cdef list body = []
        if self._state == S_DONE:
            self.extra += chunk
            return b""
        try:
            if self._len == 0:  # nothing held back: parse the read where it lies
                try:
                    pos = self._run(src, n, chunk, body)
                finally:
                    if pos < n:
                        self._keep(src + pos, n - pos)
            else:
                self._append(src, n)
                try:
                    pos = self._run(self._buf, self._len, None, body)
                finally:
                    self._keep(self._buf + pos, self._len - pos)
        except ResponseError as exc:
            exc.body = b"".join(body)
            raise
        if not body:
            return b""
        return body[0] if len(body) == 1 else b"".join(body)

    cdef Py_ssize_t _run(self, const unsigned char* buf, Py_ssize_t n, bytes chunk, list body) except -1:
        """Apply buf[:n]; return how much of it was used (the rest waits for more). Body pieces go to `body`."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t end, take, i, k
        cdef long long size
        cdef unsigned char c
        while pos < n:
            if self._state == S_HEAD or self._state == S_TRAILERS:
                if self._state == S_TRAILERS and self._scan == 0:
                    if n - pos < 2:
                        break
                    if buf[pos] == _CR and buf[pos + 1] == _LF:
                        pos += 2
                        self._finish()
                        continue
                end = _find_blank_line(buf, pos + self._scan, n)
                if end < 0:
                    if n - pos >= _HEAD_LIMIT:
                        raise ResponseError("the answer's head is too large" if self._state == S_HEAD
                                            else "the answer's trailers are too large")
                    self._scan = max(0, n - pos - 3)
                    break
                if end + 4 - pos > _HEAD_LIMIT:
                    raise ResponseError("the answer's head is too large" if self._state == S_HEAD
                                        else "the answer's trailers are too large")
                self._scan = 0
                if self._state == S_HEAD:
                    self._on_head(buf, pos, end)
                else:
                    _check_trailers(buf, pos, end)
                    self._finish()
                pos = end + 4
            elif self._state == S_LENGTH:
                take = <Py_ssize_t>min(<long long>(n - pos), self._left)
                body.append(chunk if chunk is not None and pos == 0 and take == n
                            else PyBytes_FromStringAndSize(<const char*>buf + pos, take))
                pos += take
                self._left -= take
                if not self._left:
                    self._finish()
            elif self._state == S_CHUNK_SIZE:
                end = _find_crlf(buf, pos, min(n, pos + _CHUNK_LINE_LIMIT))
                if end < 0:
                    if n - pos >= _CHUNK_LINE_LIMIT:
                        raise ResponseError("a chunk-size line is too long")
                    break
                size = 0
                i = pos
                while i < end and _CLASS[buf[i]] & 4 and i - pos < 15:
                    c = buf[i]
                    size = size * 16 + (c - 48 if c <= 57 else (c | 32) - 87)
                    i += 1
                if i == pos:
                    raise ResponseError("a chunk-size line is not a chunk size")
                k = i
                while i < end and _is_ws(buf[i]):
                    i += 1
                if i == end and i > k:  # whitespace is only allowed before an extension's ';'
                    raise ResponseError("a chunk-size line is not a chunk size")
                if i < end:
                    if buf[i] != 59:  # ';' opens the extensions
                        raise ResponseError("a chunk-size line is not a chunk size")
                    i += 1
                    while i < end:
                        if not _CLASS[buf[i]] & 2:
                            raise ResponseError("a chunk-size line is not a chunk size")
                        i += 1
                pos = end + 2
                if size:
                    self._chunk_left = size
                    self._state = S_CHUNK_DATA
                else:
                    self._state = S_TRAILERS
            elif self._state == S_CHUNK_DATA:
                take = <Py_ssize_t>min(<long long>(n - pos), self._chunk_left)
                body.append(chunk if chunk is not None and pos == 0 and take == n
                            else PyBytes_FromStringAndSize(<const char*>buf + pos, take))
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._state = S_CHUNK_END
            elif self._state == S_CHUNK_END:
                if n - pos < 2:
                    if buf[pos] != _CR:
                        raise ResponseError("a chunk's data is not followed by CRLF")
                    break
                if buf[pos] != _CR or buf[pos + 1] != _LF:
                    raise ResponseError("a chunk's data is not followed by CRLF")
                pos += 2
                self._state = S_CHUNK_SIZE
            elif self._state == S_UNTIL_CLOSE:
                body.append(chunk if chunk is not None and pos == 0
                            else PyBytes_FromStringAndSize(<const char*>buf + pos, n - pos))
                pos = n
            else:  # S_DONE
                self.extra += PyBytes_FromStringAndSize(<const char*>buf + pos, n - pos)
                pos = n
        return pos

    def feed_eof(self):
        if self._state == S_UNTIL_CLOSE:
            self._finish()
        elif self._state != S_DONE:
            raise ResponseError("the connection closed before the answer's end")

    cdef void _finish(self):
        self._state = S_DONE
        self.done = True

    cdef int _on_head(self, const unsigned char* buf, Py_ssize_t start, Py_ssize_t end) except -1:
        cdef Py_ssize_t head_start = start
        cdef Py_ssize_t line_end = _find_crlf(buf, start, end)
        cdef Py_ssize_t i, colon, vstart, vend, k
        cdef Py_ssize_t count
        cdef int status
        cdef long long length = -1
        cdef long long value
        cdef bint chunked = False
        cdef bint close
        cdef bint token_close
        if line_end < 0:
            line_end = end
        # The status line: HTTP/1.x, a status from 100 to 599, and an optional reason phrase.
        if (line_end - start < 12 or buf[start] != 72 or buf[start + 1] != 84 or buf[start + 2] != 84
                or buf[start + 3] != 80 or buf[start + 4] != 47 or buf[start + 5] != 49 or buf[start + 6] != 46
                or (buf[start + 7] != 48 and buf[start + 7] != 49) or buf[start + 8] != 32
                or not 49 <= buf[start + 9] <= 53 or not 48 <= buf[start + 10] <= 57
                or not 48 <= buf[start + 11] <= 57 or (line_end - start > 12 and buf[start + 12] != 32)):
            raise ResponseError("the answer does not start with an HTTP/1.x status line")
        for i in range(start + 13, line_end):
            if not _CLASS[buf[i]] & 2:
                raise ResponseError("the answer does not start with an HTTP/1.x status line")
        status = (buf[start + 9] - 48) * 100 + (buf[start + 10] - 48) * 10 + (buf[start + 11] - 48)
        close = buf[start + 7] == 48
        count = 0
        while line_end < end:
            count += 1
            if count > _HEADERS_LIMIT:
                raise ResponseError("the answer has too many header lines")
            start = line_end + 2
            line_end = _find_crlf(buf, start, end)
            if line_end < 0:
                line_end = end
            _field(buf, start, line_end, &colon, &vstart, &vend)
            if _same_name(buf + start, colon - start, b"content-length", 14):
                if not 1 <= vend - vstart <= 18:
                    raise ResponseError("a Content-Length that is not a length")
                value = 0
                for i in range(vstart, vend):
                    if not 48 <= buf[i] <= 57:
                        raise ResponseError("a Content-Length that is not a length")
                    value = value * 10 + (buf[i] - 48)
                if length >= 0 and value != length:
                    raise ResponseError("two different Content-Lengths")
                length = value
            elif _same_name(buf + start, colon - start, b"transfer-encoding", 17):
                if chunked or not _same_name(buf + vstart, vend - vstart, b"chunked", 7):
                    raise ResponseError("a Transfer-Encoding other than one chunked")
                chunked = True
            elif _same_name(buf + start, colon - start, b"connection", 10):
                i = vstart
                while i <= vend:  # each comma-separated token, stripped
                    k = i
                    while k < vend and buf[k] != 44:
                        k += 1
                    colon = k  # the token's end, before stripping
                    while i < colon and _is_ws(buf[i]):
                        i += 1
                    while colon > i and _is_ws(buf[colon - 1]):
                        colon -= 1
                    if _same_name(buf + i, colon - i, b"close", 5):
                        close = True
                    i = k + 1
        if chunked and length >= 0:
            raise ResponseError("both a Content-Length and a Transfer-Encoding")
        if status < 200:
            if status == 101:
                raise ResponseError("a 101 (Switching Protocols) that was not asked for")
            return 0  # an interim answer (100 Continue, 103 Early Hints): the final head follows
        self._head = PyBytes_FromStringAndSize(<const char*>buf + head_start, end - head_start)
        self.status = status
        self.keep_alive = not close
        if status == 204 or status == 304 or length == 0:
            self._finish()
        elif chunked:
            self._state = S_CHUNK_SIZE
        elif length > 0:
            self._left = length
            self._state = S_LENGTH
        else:
            self.keep_alive = False
            self._state = S_UNTIL_CLOSE
        return 0
