# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled Server-Sent Events splitting (`SSEParser`) and the `has_usage` pre-filter.

Both run on every streamed chunk. `_sse_py` is the pure-Python twin with the same public API
and results; the two mirror each other step by step (same scan order; only the buffering
differs, see `SSEParser`), and every test runs against both. Keep them in sync.

What pays to be in C here: the scanner works on a raw byte buffer with memchr and never
creates a Python object per byte or per line it does not keep (nor copies a chunk that holds
whole events: it parses such a chunk in place, see `SSEParser`). The `micro_fastpath` benchmark
measures both against the twin; SSE parsing is expected to stay at least 10 times faster.
"""

cimport cython

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

__all__ = ("SSEEvent", "SSEParser", "has_usage")


cdef enum:
    _CR = 13
    _LF = 10
    _COLON = 58
    _SPACE = 32
    # A small event fits without a second allocation; big buffers are released once drained so
    # one huge event does not pin memory for the rest of a long stream.
    _MIN_CAPACITY = 1024
    _KEEP_CAPACITY = 256 * 1024


# Events are made and dropped once per streamed chunk: a free list saves the allocator round trip.
@cython.freelist(32)
cdef class SSEEvent:
    """One dispatched event: its exact wire bytes plus the fields the gateway reads.

    `raw` is kept so the relay can forward what upstream sent without re-serialising it;
    the parsed fields are there only for the few decisions the gateway makes (usage, errors).
    """

    cdef readonly bytes raw
    cdef readonly object data
    cdef readonly object event
    cdef readonly object id
    cdef readonly bint comment_only

    def __init__(self, bytes raw not None, data=None, event=None, id=None, bint comment_only=False):
        self.raw = raw
        self.data = data
        self.event = event
        self.id = id
        self.comment_only = comment_only

    def __repr__(self):
        return (
            f"SSEEvent(event={self.event!r}, data={self.data!r}, id={self.id!r}, "
            f"comment_only={self.comment_only!r}, raw_len={len(self.raw)})"
        )


cdef class SSEParser:
    """Incremental SSE parser (WHATWG HTML "event stream" interpretation).

    The buffer holds only the current, not yet dispatched event; each line is parsed once as
    soon as its terminator arrives, and the search for the next terminator resumes where the
    previous one stopped, so an event trickling in one byte at a time costs linear time.

    When nothing is buffered (the usual case: upstream reads end on event boundaries), a bytes
    chunk is parsed where it lies and only its unfinished tail, if any, is copied in; an event
    that is the whole chunk gets the chunk itself as its `raw` instead of a copy.

    Deliberate choices beyond the spec's dispatch rules:

    * Every block of at least one line is returned, even without a ``data`` field (comments,
      a lone ``event:``), because the relay must forward those bytes too.
    * Blank lines that follow a dispatched event (stray terminators) are not events; their bytes
      become the start of the next event's `raw`.
    * A CR at the end of the buffered input ends the line at once; if the next byte to arrive
      is LF it is the second half of that CRLF and is skipped as a terminator (its byte goes to
      the next event's `raw`, or stays in the current event's when the CR ended a field line).
    * ``id`` values containing NUL are ignored, and a UTF-8 BOM at the very start of the stream
      is skipped for parsing (but kept in `raw`), both as the spec says.
    """

    cdef char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start        # first byte of the pending event's raw
    cdef Py_ssize_t _line_start   # first byte of the line being assembled
    cdef Py_ssize_t _scan         # where the search for the next terminator resumes
    cdef bint _skip_lf
    cdef bint _at_stream_start
    # The block being assembled. Almost every event has exactly one data line, so its value is
    # kept as is and a list is only made for a second one.
    cdef Py_ssize_t _nlines
    cdef bint _has_fields
    cdef bytes _data
    cdef list _data_lines
    cdef object _event
    cdef object _id

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._reset()

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef void _reset(self):
        self._len = 0
        self._start = 0
        self._line_start = 0
        self._scan = 0
        self._skip_lf = False
        self._at_stream_start = True
        self._release_if_large()
        self._reset_block()

    cdef void _reset_block(self):
        self._nlines = 0
        self._has_fields = False
        self._data = None
        self._data_lines = None
        self._event = None
        self._id = None

    cdef void _release_if_large(self):
        if self._len == 0 and self._cap > _KEEP_CAPACITY:
            PyMem_Free(self._buf)
            self._buf = NULL
            self._cap = 0

    cdef int _append(self, const char* src, Py_ssize_t size) except -1:
        cdef Py_ssize_t need = self._len + size
        cdef Py_ssize_t cap
        cdef char* grown
        if need > self._cap:
            cap = self._cap * 2
            if cap < need:
                cap = need
            if cap < _MIN_CAPACITY:
                cap = _MIN_CAPACITY
            grown = <char*>PyMem_Realloc(self._buf, <size_t>cap)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = cap
        if size:
            memcpy(self._buf + self._len, src, <size_t>size)
        self._len = need
        return 0

    @property
    def pending(self):
        return self._len - self._start

    def feed(self, chunk):
        cdef Py_buffer view
        if PyBytes_CheckExact(chunk):
            if self._len == 0:
                # Nothing buffered, so every offset is 0 and the chunk can be scanned in place.
                return self._scan_lines(PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), chunk)
            self._append(PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk))
        else:
            # Not immutable bytes: copy before parsing, the caller may reuse the memory.
            PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
            try:
                self._append(<const char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        return self._scan_lines(self._buf, self._len, None)

    cdef list _scan_lines(self, const char* buf, Py_ssize_t n, bytes chunk):
        """Apply the complete lines of buf[:n] from `_scan` on; return the dispatched events.

        `buf` is the parser's own buffer, or, when `chunk` is given, that chunk's bytes (nothing
        was buffered); then whatever is left undispatched is copied into the buffer at the end.
        """
        cdef list events = []
        cdef Py_ssize_t scan = self._scan
        cdef Py_ssize_t lf = -1  # next LF at or after `scan`, or n when there is none
        cdef Py_ssize_t pos, end, start
        cdef const char* hit
        cdef bytes raw
        while True:
            if self._skip_lf:
                if scan >= n:
                    break
                if buf[scan] == _LF:
                    scan += 1
                    self._line_start = scan
                self._skip_lf = False
            if scan >= n:
                break
            # Looking for LF and CR separately lets both searches run at memchr speed; the LF
            # position is remembered so a CR-only stream does not rescan to the end per line.
            if lf < scan:
                hit = <const char*>memchr(buf + scan, _LF, <size_t>(n - scan))
                lf = n if hit == NULL else hit - buf
            hit = <const char*>memchr(buf + scan, _CR, <size_t>(lf - scan))
            if hit != NULL:
                pos = hit - buf
            elif lf < n:
                pos = lf
            else:
                scan = n
                break
            if buf[pos] == _CR:
                if pos + 1 < n:
                    end = pos + 2 if buf[pos + 1] == _LF else pos + 1
                else:
                    end = pos + 1
                    self._skip_lf = True
            else:
                end = pos + 1
            if self._line(buf, self._line_start, pos):
                if chunk is not None and self._start == 0 and end == n:
                    raw = chunk  # the event is the whole chunk: share it, bytes are immutable
                else:
                    raw = PyBytes_FromStringAndSize(buf + self._start, end - self._start)
                events.append(self._dispatch(raw))
                self._start = end
            self._line_start = scan = end
        # Keep only the undispatched event: copied in from the chunk, or moved to the buffer's front.
        start = self._start
        if chunk is not None:
            self._append(buf + start, n - start)
        elif start:
            if n > start:
                memmove(self._buf, self._buf + start, <size_t>(n - start))
            self._len = n - start
        if start:
            self._line_start -= start
            scan -= start
            self._start = 0
            self._release_if_large()
        self._scan = scan
        return events

    cdef bint _line(self, const char* buf, Py_ssize_t begin, Py_ssize_t stop) except -1:
        """Apply one complete line buf[begin:stop]; true if it is the blank line that ends a block."""
        cdef Py_ssize_t name_end, value, size
        cdef const char* colon
        if self._at_stream_start:
            self._at_stream_start = False
            if stop - begin >= 3 and memcmp(buf + begin, b"\xef\xbb\xbf", 3) == 0:
                begin += 3
        if begin == stop:
            return self._nlines != 0
        self._nlines += 1
        if buf[begin] == _COLON:
            return False
        self._has_fields = True
        colon = <const char*>memchr(buf + begin, _COLON, <size_t>(stop - begin))
        if colon == NULL:
            name_end = value = stop
        else:
            name_end = colon - buf
            value = name_end + 1
            if value < stop and buf[value] == _SPACE:
                value += 1
        size = name_end - begin
        if size == 4 and memcmp(buf + begin, b"data", 4) == 0:
            if self._data is None:
                self._data = PyBytes_FromStringAndSize(buf + value, stop - value)
            else:
                if self._data_lines is None:
                    self._data_lines = [self._data]
                self._data_lines.append(PyBytes_FromStringAndSize(buf + value, stop - value))
        elif size == 5 and memcmp(buf + begin, b"event", 5) == 0:
            self._event = PyBytes_FromStringAndSize(buf + value, stop - value)
        elif size == 2 and memcmp(buf + begin, b"id", 2) == 0:
            if memchr(buf + value, 0, <size_t>(stop - value)) == NULL:
                self._id = PyBytes_FromStringAndSize(buf + value, stop - value)
        return False

    cdef SSEEvent _dispatch(self, bytes raw):
        """The block assembled so far as an event with these wire bytes; starts the next block."""
        cdef SSEEvent event = SSEEvent.__new__(SSEEvent)
        event.raw = raw
        event.data = self._data if self._data_lines is None else b"\n".join(self._data_lines)
        event.event = self._event
        event.id = self._id
        event.comment_only = not self._has_fields
        self._reset_block()
        return event

    def close(self):
        """End of stream: return the bytes of the unfinished event and start over.

        A non-empty result normally means upstream cut the stream mid-event. The exception is a
        tail made only of line terminators (a stray blank line after the last event, or the LF
        of a CRLF split across chunks): those bytes are returned too, so that the raws plus this
        tail always equal the input, and ``tail.strip(b"\\r\\n")`` tells the two cases apart.
        """
        tail = PyBytes_FromStringAndSize(self._buf + self._start, self._len - self._start)
        self._reset()
        return tail


cdef inline bint _json_ws(char c) noexcept nogil:
    return c == b" " or c == b"\t" or c == b"\n" or c == b"\r"


# '"usage"' is found by its 'u': memchr runs at vector speed between candidates, and 'u' is rare
# in the JSON of a chat chunk (it is in no punctuation and in few keys), so there are only a few
# candidates to check per chunk. (A Horspool skip search was several times slower on chat chunks:
# the needle's letters are common in JSON keys, so most of its skips were 1 to 4 bytes.)
cdef const char* _USAGE_KEY = b'"usage"'
cdef enum:
    _USAGE_LEN = 7  # len('"usage"')


cdef bint _usage_object_at(const char* q, const char* end) noexcept nogil:
    """After a '"usage"' ending just before `q`: is it a key whose value starts an object?"""
    while q < end and _json_ws(q[0]):
        q += 1
    if q >= end or q[0] != b":":
        return False
    q += 1
    while q < end and _json_ws(q[0]):
        q += 1
    return q < end and q[0] == b"{"


cdef bint _find_usage(const char* p, Py_ssize_t n) noexcept nogil:
    cdef const char* end = p + n
    cdef const char* q = p + 1  # a 'u' at p[0] has no quote before it
    cdef const char* u
    if n < _USAGE_LEN:
        return False
    # Candidates stop 6 bytes before the end, where the rest of the needle would no longer fit.
    while q <= end - (_USAGE_LEN - 1):
        u = <const char*>memchr(q, b"u", <size_t>(end - (_USAGE_LEN - 2) - q))
        if u == NULL:
            return False
        if memcmp(u - 1, _USAGE_KEY, _USAGE_LEN) == 0 and _usage_object_at(u - 1 + _USAGE_LEN, end):
            return True
        q = u + 1
    return False


def has_usage(data):
    """Cheap pre-filter: does this JSON text have a ``"usage"`` key whose value is an object?

    Lets the streaming path parse only the one chunk that carries token usage. It is a byte
    search, not a parser, so it also matches a ``"usage"`` key nested at any depth (and, in
    valid JSON, a key that merely ends in an escaped ``\\"usage``); a false match costs one
    needless parse and is harmless. It cannot match inside an ordinary string value, where
    every quote is escaped, and ``"usage": null`` does not match.
    """
    cdef Py_buffer view
    cdef bint found
    if PyBytes_CheckExact(data):
        return _find_usage(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        found = _find_usage(<const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return found
