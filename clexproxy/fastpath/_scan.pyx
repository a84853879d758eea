# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled `request_head`: the lean connection's scan of a request head.

It walks the raw bytes once with lookup tables and memchr and makes only the objects it
returns. `_scan_py` is the pure-Python twin with the same results, and every test runs against
both. Keep them in sync.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp

__all__ = ("request_head",)

INCOMPLETE = 0
MAX_LEAN_HEAD = 8190
MAX_LEAN_HEADERS = 100

cdef enum:
    _TAB = 9
    _LF = 10
    _CR = 13
    _SPACE = 32
    _COLON = 58
    _HEAD_LIMIT = 8190
    _HEADERS_LIMIT = 100

# What `request_head` makes of a header name: one it reads, one aiohttp's parser lets appear once (each
# its own bit in the mask of names seen), or one that sends the request to aiohttp (a framing, coding
# or protocol the lean path does not take, or a console session's cookie).
cdef enum:
    _L_OTHER = 0
    _L_CONTENT_LENGTH = 1
    _L_HOST = 2
    _L_CONNECTION = 3
    _L_CONTENT_TYPE = 4
    _L_USER_AGENT = 5
    _L_CONTENT_LOCATION = 6
    _L_CONTENT_RANGE = 7
    _L_ETAG = 8
    _L_MAX_FORWARDS = 9
    _L_SERVER = 10
    _L_REFUSED = 11
    _L_AUTHORIZATION = 12
    _L_REQUEST_ID = 13
    _L_ORIGIN = 14

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


cdef int _lean_kind(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    if _same_name(p, n, b"content-length", 14):
        return _L_CONTENT_LENGTH
    if _same_name(p, n, b"host", 4):
        return _L_HOST
    if _same_name(p, n, b"connection", 10):
        return _L_CONNECTION
    if _same_name(p, n, b"content-type", 12):
        return _L_CONTENT_TYPE
    if _same_name(p, n, b"user-agent", 10):
        return _L_USER_AGENT
    if _same_name(p, n, b"content-location", 16):
        return _L_CONTENT_LOCATION
    if _same_name(p, n, b"content-range", 13):
        return _L_CONTENT_RANGE
    if _same_name(p, n, b"etag", 4):
        return _L_ETAG
    if _same_name(p, n, b"max-forwards", 12):
        return _L_MAX_FORWARDS
    if _same_name(p, n, b"server", 6):
        return _L_SERVER
    if _same_name(p, n, b"authorization", 13):
        return _L_AUTHORIZATION
    if _same_name(p, n, b"x-request-id", 12):
        return _L_REQUEST_ID
    if _same_name(p, n, b"origin", 6):
        return _L_ORIGIN
    if (_same_name(p, n, b"transfer-encoding", 17) or _same_name(p, n, b"content-encoding", 16)
            or _same_name(p, n, b"expect", 6) or _same_name(p, n, b"upgrade", 7)
            or _same_name(p, n, b"cookie", 6) or _same_name(p, n, b"sec-websocket-key1", 18)):
        return _L_REFUSED
    return _L_OTHER


def request_head(data):
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
    cdef const unsigned char* base
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef const unsigned char* eol
    cdef const unsigned char* colon
    cdef const unsigned char* v
    cdef const unsigned char* ve
    cdef const unsigned char* target
    cdef const unsigned char* d
    cdef Py_ssize_t size, length = -1, count = 0
    cdef int kind
    cdef bint keep_alive = True
    cdef unsigned int seen = 0
    cdef object authorization = None, request_id = None
    if not PyBytes_CheckExact(data):
        return None
    base = <const unsigned char*>PyBytes_AS_STRING(data)
    size = PyBytes_GET_SIZE(data)
    end = _find_blank_line(base, size if size < _HEAD_LIMIT + 4 else _HEAD_LIMIT + 4)
    if end == NULL:
        return None if size >= _HEAD_LIMIT + 4 else INCOMPLETE
    if end - base < 16 or memcmp(base, b"POST ", 5) != 0:
        return None
    target = base + 5
    p = target
    while p < end and 33 <= p[0] <= 126:
        p += 1
    if p == target or end - p < 11 or memcmp(p, b" HTTP/1.1\r\n", 11) != 0:
        return None
    path = PyUnicode_DecodeASCII(<const char*>target, p - target, NULL)
    p += 11
    headers = []
    while p < end:
        colon = p
        while colon < end and _token_char[colon[0]]:
            colon += 1
        if colon == p or colon[0] != _COLON:
            return None
        eol = colon + 1
        while eol < end and _value_char[eol[0]]:
            eol += 1
        if eol[0] != _CR or eol[1] != _LF:
            return None
        count += 1
        if count > _HEADERS_LIMIT:
            return None
        v = colon + 1
        ve = eol
        while v < ve and (v[0] == _SPACE or v[0] == _TAB):
            v += 1
        while ve > v and ((ve - 1)[0] == _SPACE or (ve - 1)[0] == _TAB):
            ve -= 1
        kind = _lean_kind(p, colon - p)
        value = PyUnicode_DecodeUTF8(<const char*>v, ve - v, b"surrogateescape")
        if kind >= _L_AUTHORIZATION:  # may repeat: the first is the one read (as aiohttp's headers give it)
            if not seen & (1u << kind):
                seen |= 1u << kind
                if kind == _L_AUTHORIZATION:
                    authorization = value
                elif kind == _L_REQUEST_ID:
                    request_id = value
        elif kind != _L_OTHER:
            if kind == _L_REFUSED or seen & (1u << kind):
                return None
            seen |= 1u << kind
            if kind == _L_CONTENT_LENGTH:
                if ve == v or ve - v > 18:
                    return None
                length = 0
                d = v
                while d < ve:
                    if not (48 <= d[0] <= 57):
                        return None
                    length = length * 10 + (d[0] - 48)
                    d += 1
            elif kind == _L_CONNECTION:
                if ve - v == 5 and _same_name(v, 5, b"close", 5):
                    keep_alive = False
                elif not (ve - v == 10 and _same_name(v, 10, b"keep-alive", 10)):
                    return None
        headers.append((PyUnicode_DecodeASCII(<const char*>p, colon - p, NULL), value))
        p = eol + 2
    if length < 0 or not seen & (1u << _L_HOST):
        return None
    return ((end - base) + 4, path, headers, length, keep_alive, authorization, request_id,
            bool(seen & (1u << _L_ORIGIN)))
