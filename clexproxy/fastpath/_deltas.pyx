# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled `text_delta`: the text of an OpenAI stream chunk that is one more piece of the answer's text.

Why it exists: a Responses or Messages client of an OpenAI provider has every upstream event
translated (`protocols.chunks.OpenAIDecoder`), and parsing each one with orjson (a dict per
object, a str per key and value) was the largest part of what a translated stream costs over
a relayed one. Most events of a stream are text-only chunks, of which the translation reads
nothing but the text. This walks the event's JSON once and builds only that text.

It is a validating scan, not a search: it answers the text only when `orjson.loads` would
accept the whole event and `protocols.chunks.text_only` would give that same text, and None
whenever it cannot be sure cheaply, so the caller parses the event in full and stays exact.
It answers None for, among others: any key with an escape in the objects it reads (the
chunk, its choice, its delta), a second `choices`, `usage`, `error`, `index`, `delta` or
`finish_reason`; `usage` or `error` other than null; `index` other than 0 or null;
`finish_reason` other than null; a delta with anything but `content`; empty content; a
surrogate escape outside the content or a lone one in it; a non-ASCII byte outside the
content; a number with an exponent or longer than 18 characters; nesting deeper than 32.

`_deltas_py` is the pure-Python twin with the same results, step by step; every test runs
against both. Keep them in sync.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp

__all__ = ("text_delta", "text_run")

ctypedef unsigned char uchar

cdef enum:
    _MAX_DEPTH = 32  # orjson's own limit is 1024; a chat chunk nests 4 deep
    _MAX_NUMBER = 18  # characters: a plain number this short is an int64 or a finite double
    _QUOTE = 34
    _BACKSLASH = 92
    # The keys read, each at most once.
    _SEEN_CHOICES = 1
    _SEEN_USAGE = 2
    _SEEN_ERROR = 4
    _SEEN_INDEX = 8
    _SEEN_FINISH = 16
    _SEEN_DELTA = 32


cdef struct _Content:
    const uchar* start  # the content string's first byte, after its opening quote
    const uchar* stop  # its closing quote
    bint escaped


cdef inline const uchar* _ws(const uchar* p, const uchar* end) noexcept nogil:
    while p < end and (p[0] == 32 or p[0] == 9 or p[0] == 10 or p[0] == 13):
        p += 1
    return p


cdef inline int _hex(uchar c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline long _unit(const uchar* p, const uchar* end) noexcept nogil:
    """The code unit of the `\\uXXXX` escape whose `u` is at `p`, or -1."""
    cdef long unit = 0
    cdef int digit, i
    if end - p < 5:
        return -1
    for i in range(1, 5):
        digit = _hex(p[i])
        if digit < 0:
            return -1
        unit = unit * 16 + digit
    return unit


cdef inline bint _simple_escape(uchar c) noexcept nogil:
    return c == _QUOTE or c == _BACKSLASH or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 or c == 116


# The bytes a string outside the content may hold as they are: printable ASCII but the quote and backslash.
cdef bint _plain[256]


cdef void _init_plain() noexcept:
    cdef int i
    for i in range(256):
        _plain[i] = 32 <= i < 128 and i != _QUOTE and i != _BACKSLASH


_init_plain()


cdef const uchar* _string(const uchar* p, const uchar* end, bint* escaped) noexcept nogil:
    """A string outside the content, `p` after its opening quote: the byte after its closing quote, or NULL.

    Only printable ASCII and escapes other than surrogates: anything else orjson may or may not
    accept is left to orjson.
    """
    cdef long unit
    while True:
        while p < end and _plain[p[0]]:
            p += 1
        if p >= end:
            return NULL
        if p[0] == _QUOTE:
            return p + 1
        if p[0] != _BACKSLASH or p + 1 >= end:
            return NULL
        escaped[0] = True
        if p[1] == 117:  # u
            unit = _unit(p + 1, end)
            if unit < 0 or 0xD800 <= unit <= 0xDFFF:
                return NULL
            p += 6
        elif _simple_escape(p[1]):
            p += 2
        else:
            return NULL


cdef const uchar* _content(const uchar* p, const uchar* end, _Content* content) noexcept nogil:
    """The content string, `p` after its opening quote: like `_string`, but its text may be any UTF-8
    (checked when it is decoded) and its surrogate escapes come in pairs."""
    cdef uchar c
    cdef long unit, low
    content.start = p
    content.escaped = False
    while p < end:
        c = p[0]
        if c == _QUOTE:
            content.stop = p
            return p + 1
        if c == _BACKSLASH:
            content.escaped = True
            if p + 1 >= end:
                return NULL
            if p[1] == 117:
                unit = _unit(p + 1, end)
                if unit < 0 or 0xDC00 <= unit <= 0xDFFF:
                    return NULL
                if 0xD800 <= unit <= 0xDBFF:  # a high surrogate: its low one must follow
                    if end - p < 12 or p[6] != _BACKSLASH or p[7] != 117:
                        return NULL
                    low = _unit(p + 7, end)
                    if not 0xDC00 <= low <= 0xDFFF:
                        return NULL
                    p += 6
                p += 6
            elif _simple_escape(p[1]):
                p += 2
            else:
                return NULL
        elif c < 32:
            return NULL
        else:
            p += 1
    return NULL


cdef const uchar* _number(const uchar* p, const uchar* end) noexcept nogil:
    cdef const uchar* start = p
    if p < end and p[0] == 45:  # -
        p += 1
    if p >= end:
        return NULL
    if p[0] == 48:  # 0
        p += 1
    elif 49 <= p[0] <= 57:
        while p < end and 48 <= p[0] <= 57:
            p += 1
    else:
        return NULL
    if p < end and p[0] == 46:  # .
        p += 1
        if p >= end or not 48 <= p[0] <= 57:
            return NULL
        while p < end and 48 <= p[0] <= 57:
            p += 1
    if p < end and (p[0] == 101 or p[0] == 69):  # an exponent may overflow: orjson decides
        return NULL
    if p - start > _MAX_NUMBER:
        return NULL
    return p


cdef inline const uchar* _word(const uchar* p, const uchar* end, const char* word, Py_ssize_t n) noexcept nogil:
    if end - p < n or memcmp(p, word, n) != 0:
        return NULL
    return p + n


cdef const uchar* _value(const uchar* p, const uchar* end, int depth) noexcept nogil:
    """Past one JSON value at `p` (which this scan can vouch for orjson accepting), or NULL."""
    cdef bint escaped = False
    cdef uchar c
    if p >= end:
        return NULL
    c = p[0]
    if c == _QUOTE:
        return _string(p + 1, end, &escaped)
    if c == 123 or c == 91:  # { or [
        if depth >= _MAX_DEPTH:
            return NULL
        p = _ws(p + 1, end)
        if p < end and p[0] == c + 2:  # } or ]
            return p + 1
        while True:
            if c == 123:
                if p >= end or p[0] != _QUOTE:
                    return NULL
                p = _string(p + 1, end, &escaped)
                if p == NULL:
                    return NULL
                p = _ws(p, end)
                if p >= end or p[0] != 58:  # :
                    return NULL
                p = _ws(p + 1, end)
            p = _value(p, end, depth + 1)
            if p == NULL:
                return NULL
            p = _ws(p, end)
            if p < end and p[0] == 44:  # ,
                p = _ws(p + 1, end)
            elif p < end and p[0] == c + 2:
                return p + 1
            else:
                return NULL
    if c == 116:
        return _word(p, end, b"true", 4)
    if c == 102:
        return _word(p, end, b"false", 5)
    if c == 110:
        return _word(p, end, b"null", 4)
    return _number(p, end)


cdef const uchar* _key(const uchar* p, const uchar* end, const uchar** key, Py_ssize_t* length) noexcept nogil:
    """A key of an object this scan reads, `p` at its quote: past its colon, or NULL (an escaped key too)."""
    cdef bint escaped = False
    if p >= end or p[0] != _QUOTE:
        return NULL
    key[0] = p + 1
    p = _string(p + 1, end, &escaped)
    if p == NULL or escaped:
        return NULL
    length[0] = p - 1 - key[0]
    p = _ws(p, end)
    if p >= end or p[0] != 58:
        return NULL
    return _ws(p + 1, end)


cdef inline bint _named(const uchar* key, Py_ssize_t length, const char* name, Py_ssize_t n) noexcept nogil:
    return length == n and memcmp(key, name, n) == 0


cdef inline bint _once(int* seen, int key) noexcept nogil:
    """Whether `key` (a `_SEEN_` bit) is read for the first time in its object, marking it read."""
    if seen[0] & key:
        return False
    seen[0] |= key
    return True


cdef inline const uchar* _next(const uchar* p, const uchar* end, bint* last) noexcept nogil:
    """After a member's value: past its comma (`last` False) or its object's closing brace (True), or NULL."""
    p = _ws(p, end)
    if p < end and p[0] == 44:
        last[0] = False
        return _ws(p + 1, end)
    if p < end and p[0] == 125:
        last[0] = True
        return p + 1
    return NULL


cdef const uchar* _delta(const uchar* p, const uchar* end, _Content* content) noexcept nogil:
    """`{"content": "<text>"}` and nothing else, `p` at its brace."""
    cdef const uchar* key
    cdef Py_ssize_t length
    if p >= end or p[0] != 123:
        return NULL
    p = _key(_ws(p + 1, end), end, &key, &length)
    if p == NULL or not _named(key, length, b"content", 7) or p >= end or p[0] != _QUOTE:
        return NULL
    p = _content(p + 1, end, content)
    if p == NULL or content.stop == content.start:
        return NULL
    p = _ws(p, end)
    if p >= end or p[0] != 125:
        return NULL
    return p + 1


cdef const uchar* _choices(const uchar* p, const uchar* end, _Content* content) noexcept nogil:
    """`[{choice}]`: one choice, index 0, no finish reason, a text-only delta; `p` at its bracket."""
    cdef const uchar* key
    cdef Py_ssize_t length
    cdef int seen = 0
    cdef bint last = False
    if p >= end or p[0] != 91:
        return NULL
    p = _ws(p + 1, end)
    if p >= end or p[0] != 123:
        return NULL
    p = _ws(p + 1, end)
    while not last:
        p = _key(p, end, &key, &length)
        if p == NULL:
            return NULL
        if _named(key, length, b"delta", 5):
            p = _delta(p, end, content) if _once(&seen, _SEEN_DELTA) else NULL
        elif _named(key, length, b"index", 5):
            if not _once(&seen, _SEEN_INDEX):
                return NULL
            p = p + 1 if p < end and p[0] == 48 else _word(p, end, b"null", 4)
        elif _named(key, length, b"finish_reason", 13):
            p = _word(p, end, b"null", 4) if _once(&seen, _SEEN_FINISH) else NULL
        else:
            p = _value(p, end, 3)
        if p == NULL:
            return NULL
        p = _next(p, end, &last)
        if p == NULL:
            return NULL
    if not seen & _SEEN_DELTA:
        return NULL
    p = _ws(p, end)
    if p >= end or p[0] != 93:
        return NULL
    return p + 1


cdef bint _scan(const uchar* p, const uchar* end, _Content* content) noexcept nogil:
    cdef const uchar* key
    cdef Py_ssize_t length
    cdef int seen = 0
    cdef bint last = False
    p = _ws(p, end)
    if p >= end or p[0] != 123:
        return False
    p = _ws(p + 1, end)
    while not last:
        p = _key(p, end, &key, &length)
        if p == NULL:
            return False
        if _named(key, length, b"choices", 7):
            p = _choices(p, end, content) if _once(&seen, _SEEN_CHOICES) else NULL
        elif _named(key, length, b"usage", 5):
            p = _word(p, end, b"null", 4) if _once(&seen, _SEEN_USAGE) else NULL
        elif _named(key, length, b"error", 5):
            p = _word(p, end, b"null", 4) if _once(&seen, _SEEN_ERROR) else NULL
        else:
            p = _value(p, end, 1)
        if p == NULL:
            return False
        p = _next(p, end, &last)
        if p == NULL:
            return False
    return (seen & _SEEN_CHOICES) != 0 and _ws(p, end) == end


cdef Py_ssize_t _put(uchar* out, long point) noexcept nogil:
    """`point` as UTF-8 at `out`: how many bytes."""
    if point < 0x80:
        out[0] = <uchar>point
        return 1
    if point < 0x800:
        out[0] = <uchar>(0xC0 | (point >> 6))
        out[1] = <uchar>(0x80 | (point & 0x3F))
        return 2
    if point < 0x10000:
        out[0] = <uchar>(0xE0 | (point >> 12))
        out[1] = <uchar>(0x80 | ((point >> 6) & 0x3F))
        out[2] = <uchar>(0x80 | (point & 0x3F))
        return 3
    out[0] = <uchar>(0xF0 | (point >> 18))
    out[1] = <uchar>(0x80 | ((point >> 12) & 0x3F))
    out[2] = <uchar>(0x80 | ((point >> 6) & 0x3F))
    out[3] = <uchar>(0x80 | (point & 0x3F))
    return 4


cdef Py_ssize_t _unescape(const uchar* p, const uchar* stop, uchar* out) noexcept nogil:
    """The content's UTF-8 without its escapes (which `_content` checked) at `out`: how many bytes.

    Never more bytes than the escaped text: an escape is at least as long as what it stands for.
    """
    cdef Py_ssize_t n = 0
    cdef long point
    cdef uchar c
    while p < stop:
        c = p[0]
        if c != _BACKSLASH:
            out[n] = c
            n += 1
            p += 1
            continue
        c = p[1]
        if c == 117:
            point = _unit(p + 1, stop)
            p += 6
            if 0xD800 <= point <= 0xDBFF:
                point = 0x10000 + ((point - 0xD800) << 10) + (_unit(p + 1, stop) - 0xDC00)
                p += 6
            n += _put(out + n, point)
            continue
        if c == 98:
            c = 8
        elif c == 102:
            c = 12
        elif c == 110:
            c = 10
        elif c == 114:
            c = 13
        elif c == 116:
            c = 9
        out[n] = c  # ", \ and / stand for themselves
        n += 1
        p += 2
    return n


cdef object _decode(const _Content* content):
    """The content's text, or None when its bytes are not UTF-8 (orjson refuses the event then)."""
    cdef Py_ssize_t n = content.stop - content.start
    cdef uchar* buf
    if not content.escaped:
        try:
            return PyUnicode_DecodeUTF8(<const char*>content.start, n, NULL)
        except UnicodeDecodeError:
            return None
    buf = <uchar*>PyMem_Malloc(n)
    if buf == NULL:
        raise MemoryError()
    try:
        n = _unescape(content.start, content.stop, buf)
        try:
            return PyUnicode_DecodeUTF8(<const char*>buf, n, NULL)
        except UnicodeDecodeError:
            return None
    finally:
        PyMem_Free(buf)


def text_delta(data):
    """The text of `data`, an OpenAI chat chunk's JSON, when the chunk is one more piece of the answer's
    text and nothing else (exactly `text_only(orjson.loads(data))` then); None when it is not, or
    when this scan cannot tell cheaply (the caller parses it in full)."""
    return _text(data)


def text_run(list events not None, Py_ssize_t start):
    """(the texts of `events[start:]` joined, the index after them) while each event's data is one more
    piece of text (`text_delta`); (None, start) when the first is not.

    A read of a fast upstream brings many such events: one call reads them all, and the stream takes
    them as one piece of text, as the client is sent them.
    """
    cdef Py_ssize_t i = start
    cdef Py_ssize_t n = len(events)
    cdef list texts = []
    if start < 0:
        raise ValueError("a run starts at an index of the events, not before the first")
    while i < n:
        data = events[i].data
        if data is None:
            break
        text = _text(data)
        if text is None:
            break
        texts.append(text)
        i += 1
    if not texts:
        return None, start
    return (texts[0] if len(texts) == 1 else "".join(texts)), i


cdef object _text(object data):
    cdef _Content content = _Content(NULL, NULL, False)
    cdef const uchar* p
    cdef Py_ssize_t n
    if not PyBytes_CheckExact(data):
        data = bytes(data)
    p = <const uchar*>PyBytes_AS_STRING(data)
    n = PyBytes_GET_SIZE(data)
    if not _scan(p, p + n, &content):
        return None
    return _decode(&content)
