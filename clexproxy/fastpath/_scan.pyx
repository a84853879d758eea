# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled `plain_request`: the few header values the screen reads from one whole, plain request.

The screen (`ScreeningRequestHandler`) runs this on every read during a flood of refused calls,
so it walks the raw bytes once with lookup tables and memchr and makes only the objects it
returns. `_scan_py` is the pure-Python twin with the same results, and every test runs against
both. Keep them in sync.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr

__all__ = ("plain_request",)

# The header names the screen reads or must see at most once; any other name is only checked.
cdef enum:
    _H_OTHER = 0
    _H_AUTHORIZATION = 1
    _H_REQUEST_ID = 2
    _H_CONTENT_LENGTH = 4
    _H_TRANSFER_ENCODING = 8
    _H_HOST = 16
    _H_CONNECTION = 32
    _H_EXPECT = 64
    _H_ORIGIN = 128
    _TAB = 9
    _LF = 10
    _CR = 13
    _SPACE = 32
    _COLON = 58

# RFC 9110's token characters (header names) and field-value characters (visible ASCII,
# space, tab and obs-text): anything else goes to aiohttp, which answers it with a 400.
cdef bint _token_char[256]
cdef bint _value_char[256]


cdef void _init_http_chars() noexcept:
    cdef int i
    for i in range(256):
        _token_char[i] = (
            (ord("a") <= i <= ord("z")) or (ord("A") <= i <= ord("Z")) or (ord("0") <= i <= ord("9"))
            or i in b"!#$%&'*+-.^_`|~"
        )
        _value_char[i] = i == _TAB or (32 <= i <= 126) or i >= 128


_init_http_chars()


cdef inline bint _same_name(const unsigned char* p, Py_ssize_t n, const char* lower, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != m:
        return False
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef int _header_kind(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    if _same_name(p, n, b"authorization", 13):
        return _H_AUTHORIZATION
    if _same_name(p, n, b"x-request-id", 12):
        return _H_REQUEST_ID
    if _same_name(p, n, b"content-length", 14):
        return _H_CONTENT_LENGTH
    if _same_name(p, n, b"transfer-encoding", 17):
        return _H_TRANSFER_ENCODING
    if _same_name(p, n, b"host", 4):
        return _H_HOST
    if _same_name(p, n, b"connection", 10):
        return _H_CONNECTION
    if _same_name(p, n, b"expect", 6):
        return _H_EXPECT
    if _same_name(p, n, b"origin", 6):
        return _H_ORIGIN
    return _H_OTHER


cdef bint _says_close(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n - 4):
        if _same_name(p + i, 5, b"close", 5):
            return True
    return False


cdef const unsigned char* _find_blank_line(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """The CRLFCRLF that ends a request head, or NULL."""
    cdef const unsigned char* end = p + n
    cdef const unsigned char* q = p
    while True:
        q = <const unsigned char*>memchr(q, _CR, end - q)
        if q == NULL or end - q < 4:
            return NULL
        if q[1] == _LF and q[2] == _CR and q[3] == _LF:
            return q
        q += 1


def plain_request(data):
    """The request line, Authorization and X-Request-Id of `data` when it is one whole, plain request.

    None for anything the screen must leave to aiohttp's parser, which knows every case: part of
    a request or more than one, a body framed other than by one Content-Length, a repeated
    header the screen reads, a folded or malformed line, a control character, `Expect`,
    `Connection: close` (the full path closes such a connection after its answer), or `Origin`
    (a browser's call: its refusal needs the CORS headers only the full path adds).
    """
    cdef const unsigned char* base
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef const unsigned char* eol
    cdef const unsigned char* colon
    cdef const unsigned char* v
    cdef const unsigned char* ve
    cdef Py_ssize_t size, head, length = 0
    cdef int kind, seen = 0
    cdef object authorization = None, request_id = None
    if not PyBytes_CheckExact(data):
        return None
    base = <const unsigned char*>PyBytes_AS_STRING(data)
    size = PyBytes_GET_SIZE(data)
    end = _find_blank_line(base, size)
    if end == NULL or end == base:
        return None
    head = end - base
    p = base
    while p < end and _value_char[p[0]] and p[0] != _TAB:
        p += 1
    if p[0] != _CR or p[1] != _LF:
        return None
    request_line = PyBytes_FromStringAndSize(<const char*>base, p - base)
    p += 2
    while p < end:
        colon = p
        while colon < end and _token_char[colon[0]]:
            colon += 1
        if colon == p or colon[0] != _COLON:
            return None  # no name, a folded line, white space before the colon, or a bad character
        eol = colon + 1
        while eol < end and _value_char[eol[0]]:
            eol += 1
        if eol[0] != _CR or eol[1] != _LF:
            return None  # a control character, or a bare CR or LF
        kind = _header_kind(p, colon - p)
        if kind != _H_OTHER:
            if seen & kind or kind == _H_TRANSFER_ENCODING or kind == _H_EXPECT or kind == _H_ORIGIN:
                return None  # `Origin`: a browser's call, whose refusal needs the full path's CORS headers
            seen |= kind
            v = colon + 1
            ve = eol
            while v < ve and (v[0] == _SPACE or v[0] == _TAB):
                v += 1
            while ve > v and ((ve - 1)[0] == _SPACE or (ve - 1)[0] == _TAB):
                ve -= 1
            if kind == _H_AUTHORIZATION:
                authorization = PyBytes_FromStringAndSize(<const char*>v, ve - v)
            elif kind == _H_REQUEST_ID:
                request_id = PyBytes_FromStringAndSize(<const char*>v, ve - v)
            elif kind == _H_CONTENT_LENGTH:
                if ve == v or ve - v > 18:
                    return None
                while v < ve:
                    if not (48 <= v[0] <= 57):
                        return None
                    length = length * 10 + (v[0] - 48)
                    v += 1
            elif kind == _H_CONNECTION and _says_close(v, ve - v):
                return None
        p = eol + 2
    if size != head + 4 + length:
        return None
    return request_line, authorization, request_id