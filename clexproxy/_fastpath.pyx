# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot paths of the gateway: SSE splitting, rate-limit buckets, credit ledger, key table.

`_fastpath_py.py` is the pure-Python twin with the same public API and results; the two mirror
each other step by step (same scan order, same floating-point operation order; only the SSE
buffering differs, see `SSEParser`), and every test runs against both. Keep them in sync.

What pays to be in C here: the SSE scanner works on a raw byte buffer with memchr and never
creates a Python object per byte or per line it does not keep (nor copies a chunk that holds
whole events: it parses such a chunk in place, see `SSEParser`); the bucket and ledger state are
C doubles and 64-bit integers in small extension objects, so a request costs one dict lookup
and a few arithmetic operations.

`benchmarks/micro_fastpath.py` measures each piece against the twin; SSE parsing is expected to
stay at least 10 times faster.
"""

import hashlib

cimport cython

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.math cimport INFINITY, floor
from libc.string cimport memchr, memcmp, memcpy, memmove

__all__ = (
    "BucketResult",
    "CreditLedger",
    "KeyEntry",
    "KeyTable",
    "SSEEvent",
    "SSEParser",
    "TokenBuckets",
    "has_usage",
    "hash_key",
    "key_format_ok",
    "plain_request",
)

# ---------------------------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Token buckets
# ---------------------------------------------------------------------------------------------

# Tolerance in tokens: a client that waits exactly `retry_after` must get through even when
# the clock arithmetic lands a few ulps short of a whole token.
cdef double _EPS = 1e-6


cdef class BucketResult:
    """The outcome of one bucket check, in the numbers the rate-limit headers need."""

    cdef readonly bint allowed
    cdef readonly long long remaining
    cdef readonly double retry_after
    cdef readonly double reset_after

    def __init__(self, bint allowed, long long remaining, double retry_after, double reset_after):
        self.allowed = allowed
        self.remaining = remaining
        self.retry_after = retry_after
        self.reset_after = reset_after

    def __repr__(self):
        return (
            f"BucketResult(allowed={self.allowed!r}, remaining={self.remaining!r}, "
            f"retry_after={self.retry_after!r}, reset_after={self.reset_after!r})"
        )


cdef class _Bucket:
    cdef double tokens
    cdef double last


cdef BucketResult _result(bint allowed, double tokens, double cost, double capacity, double refill):
    """Shared by acquire and peek so both report identical numbers for identical state."""
    cdef BucketResult result = BucketResult.__new__(BucketResult)
    cdef double reset
    result.allowed = allowed
    if allowed:
        result.retry_after = 0.0
    elif refill > 0.0 and cost <= capacity:
        result.retry_after = (cost - tokens) / refill
    else:
        result.retry_after = INFINITY  # the bucket can never hold `cost` tokens
    if refill > 0.0:
        reset = (capacity - tokens) / refill
        if reset < 0.0:
            reset = 0.0
    elif tokens >= capacity:
        reset = 0.0
    else:
        reset = INFINITY
    result.reset_after = reset
    result.remaining = <long long>floor(tokens + _EPS)
    return result


cdef class TokenBuckets:
    """Continuously refilled token buckets keyed by account.

    Capacity and rate are passed on every call rather than stored, so a plan change takes
    effect on the next request without any notification path. Time is whatever the caller
    passes (a monotonic clock in production, a fake one in tests).
    """

    cdef dict _buckets

    def __cinit__(self):
        self._buckets = {}

    def acquire(self, key, double capacity, double refill_per_second, double now, double cost=1.0):
        cdef double cap = capacity if capacity > 0.0 else 0.0
        cdef double refill = refill_per_second if refill_per_second > 0.0 else 0.0
        cdef double tokens
        cdef _Bucket bucket
        if cost < 0.0:
            raise ValueError("cost must not be negative")
        found = self._buckets.get(key)
        if found is None:
            bucket = _Bucket.__new__(_Bucket)
            bucket.tokens = cap
            bucket.last = now
            self._buckets[key] = bucket
        else:
            bucket = <_Bucket>found
            if now > bucket.last:
                # A clock that went backwards refills nothing and keeps the later `last`, so
                # the time is not counted twice once it catches up.
                tokens = bucket.tokens + (now - bucket.last) * refill
                bucket.tokens = tokens if tokens < cap else cap
                bucket.last = now
            if bucket.tokens > cap:
                bucket.tokens = cap  # the plan shrank
        if bucket.tokens + _EPS >= cost:
            tokens = bucket.tokens - cost
            bucket.tokens = tokens if tokens > 0.0 else 0.0
            return _result(True, bucket.tokens, cost, cap, refill)
        return _result(False, bucket.tokens, cost, cap, refill)

    def peek(self, key, double capacity, double refill_per_second, double now):
        """The numbers `acquire` would see, without taking a token or touching stored state."""
        cdef double cap = capacity if capacity > 0.0 else 0.0
        cdef double refill = refill_per_second if refill_per_second > 0.0 else 0.0
        cdef double tokens
        cdef _Bucket bucket
        found = self._buckets.get(key)
        if found is None:
            tokens = cap
        else:
            bucket = <_Bucket>found
            tokens = bucket.tokens
            if now > bucket.last:
                tokens = tokens + (now - bucket.last) * refill
            if tokens > cap:
                tokens = cap
        return _result(tokens + _EPS >= 1.0, tokens, 1.0, cap, refill)

    def forget(self, key):
        self._buckets.pop(key, None)

    def __len__(self):
        return len(self._buckets)


# ---------------------------------------------------------------------------------------------
# Credit ledger
# ---------------------------------------------------------------------------------------------


cdef class _Account:
    """One account's budget for its current day, plus usage not yet drained for that day.

    Usage for the current day accumulates on the account itself (no per-call tuple or dict
    entry); only the rare correction for an earlier day goes to the ledger's side table.
    """

    cdef object account
    cdef long long limit
    cdef long long day
    cdef long long spent
    cdef long long lease
    cdef long long credits  # undrained usage for `day`
    cdef long long calls
    cdef long long prompt_tokens
    cdef long long completion_tokens
    cdef bint dirty  # listed in CreditLedger._dirty


cdef class _Delta:
    cdef long long credits
    cdef long long calls
    cdef long long prompt_tokens
    cdef long long completion_tokens


cdef class CreditLedger:
    """Per-account daily credits, admitted against a local lease.

    Spending is only allowed out of `lease`. In a single process (`auto_lease`) the lease is
    simply the whole remaining budget; with several processes a coordinator hands out slices
    of the shared budget with `grant` and collects them back with `take_back`, and the ledger
    code stays the same.

    Days only move forward: a call with a day older than the account's current day is counted
    on the current day (`reserve`) or as a correction to that older day (`refund`).
    `remaining` never mutates: for a day the account has not reached it reports what the
    rollover would give, and the rollover itself happens on the next `reserve`/`grant`.
    """

    cdef bint _auto
    cdef dict _accounts
    cdef list _dirty
    cdef dict _side

    def __init__(self, bint auto_lease=True):
        self._auto = auto_lease
        self._accounts = {}
        self._dirty = []
        self._side = {}

    cdef _Account _get(self, account):
        found = self._accounts.get(account)
        if found is None:
            raise KeyError(account)
        return <_Account>found

    cdef inline long long _fresh_lease(self, long long limit, long long spent):
        cdef long long lease
        if not self._auto:
            return 0
        lease = limit - spent
        return lease if lease > 0 else 0

    cdef void _side_add(self, account, long long day, long long credits, long long calls, long long prompt_tokens,
                        long long completion_tokens) except *:
        cdef _Delta slot
        key = (account, day)
        found = self._side.get(key)
        if found is None:
            slot = _Delta.__new__(_Delta)
            self._side[key] = slot
        else:
            slot = <_Delta>found
        slot.credits += credits
        slot.calls += calls
        slot.prompt_tokens += prompt_tokens
        slot.completion_tokens += completion_tokens

    cdef void _record(self, _Account acct, long long day, long long credits, long long calls, long long prompt_tokens,
                      long long completion_tokens) except *:
        if day != acct.day:
            self._side_add(acct.account, day, credits, calls, prompt_tokens, completion_tokens)
            return
        if not acct.dirty:
            acct.dirty = True
            self._dirty.append(acct)
        acct.credits += credits
        acct.calls += calls
        acct.prompt_tokens += prompt_tokens
        acct.completion_tokens += completion_tokens

    cdef void _rollover(self, _Account acct, long long day) except *:
        if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
            # Undrained usage belongs to the day it happened on, not to the new one.
            self._side_add(acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens, acct.completion_tokens)
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
        acct.day = day
        acct.spent = 0
        acct.lease = self._fresh_lease(acct.limit, 0)

    def set_account(self, account, long long limit, long long day, long long spent):
        """Create an account, or change its limit.

        `spent` (usage already stored for `day`) is used when the account is new or `day` is
        newer than its current day; for the same or an older day the ledger's own count wins,
        because it includes reservations the store has not seen yet.
        """
        cdef _Account acct
        found = self._accounts.get(account)
        if found is None:
            acct = _Account.__new__(_Account)
            acct.account = account
            acct.limit = limit
            acct.day = day
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
            self._accounts[account] = acct
            return
        acct = <_Account>found
        if day > acct.day:
            self._rollover(acct, day)
            acct.limit = limit
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
        else:
            acct.limit = limit
            if self._auto:
                acct.lease = self._fresh_lease(limit, acct.spent)

    def reserve(self, account, long long cost, long long day):
        """Take `cost` credits from the lease; the lease left, or -1 (nothing changed) if short."""
        cdef _Account acct
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            self._rollover(acct, day)
        if acct.lease < cost:
            return -1
        acct.lease -= cost
        acct.spent += cost
        self._record(acct, acct.day, cost, 1, 0, 0)
        return acct.lease

    def refund(self, account, long long cost, long long day):
        """Undo a reservation made on `day`; after a rollover only the stored usage is corrected."""
        cdef _Account acct
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"refund for day {day}, but account {account} is still on day {acct.day}")
        if day == acct.day:
            acct.lease += cost
            acct.spent -= cost
        self._record(acct, day, -cost, -1, 0, 0)

    def record_tokens(self, account, long long prompt_tokens, long long completion_tokens, long long day):
        """Add a call's tokens to the usage of `day` (the day its credits were reserved on)."""
        cdef _Account acct
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"tokens for day {day}, but account {account} is still on day {acct.day}")
        self._record(acct, day, 0, 0, prompt_tokens, completion_tokens)

    def remaining(self, account, long long day):
        cdef _Account acct = self._get(account)
        if day > acct.day:
            return self._fresh_lease(acct.limit, 0)
        return acct.lease

    def limit(self, account):
        return self._get(account).limit

    def spent(self, account):
        return self._get(account).spent

    def grant(self, account, long long credits, day=None):
        """Add credits to the lease; with `day`, roll over first, and drop a grant for a past day."""
        cdef _Account acct
        cdef long long d
        if credits < 0:
            raise ValueError("credits must not be negative")
        acct = self._get(account)
        if day is not None:
            d = day
            if d > acct.day:
                self._rollover(acct, d)
            elif d < acct.day:
                return
        acct.lease += credits

    def take_back(self, account):
        cdef _Account acct = self._get(account)
        cdef long long lease = acct.lease
        acct.lease = 0
        return lease

    def drain_usage(self):
        """Usage since the last drain, as (account, day, credits, calls, prompt_tokens, completion_tokens) deltas.

        Rows whose deltas are all zero are left out; the order is unspecified.
        """
        cdef list out = []
        cdef _Account acct
        cdef _Delta delta
        for acct in self._dirty:
            if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
                out.append((acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens,
                            acct.completion_tokens))
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
            acct.dirty = False
        self._dirty = []
        for key, found in self._side.items():
            delta = <_Delta>found
            if delta.credits or delta.calls or delta.prompt_tokens or delta.completion_tokens:
                out.append((key[0], key[1], delta.credits, delta.calls, delta.prompt_tokens, delta.completion_tokens))
        self._side = {}
        return out

    def __contains__(self, account):
        return account in self._accounts

    def __len__(self):
        return len(self._accounts)


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------

cdef enum:
    _KEY_PREFIX_LEN = 5
    _KEY_MIN_LEN = _KEY_PREFIX_LEN + 32
    # Generated keys have 43 body characters; the cap only stops a hostile header from making
    # us hash kilobytes per request.
    _KEY_MAX_LEN = 256

cdef object _sha256 = hashlib.sha256


def hash_key(str key not None):
    """SHA-256 of the key: a random 256-bit secret needs no salt or slow hash, and lookups stay O(1)."""
    return _sha256(key.encode("utf-8")).digest()


# Which bytes may follow the prefix: the URL-safe base64 alphabet, as a lookup table so the
# check is one load per character.
cdef bint _key_char[256]


cdef void _init_key_chars() noexcept:
    cdef int i
    for i in range(256):
        _key_char[i] = (
            (ord("a") <= i <= ord("z"))
            or (ord("A") <= i <= ord("Z"))
            or (ord("0") <= i <= ord("9"))
            or i == ord("_")
            or i == ord("-")
        )


_init_key_chars()


cdef bint _key_format_ok(object key):
    cdef Py_ssize_t i, n
    cdef const unsigned char* chars
    if not isinstance(key, str):
        return False
    n = PyUnicode_GET_LENGTH(key)
    # Any character above U+00FF makes the string wider than one byte per character, and no
    # such character is allowed, so only the compact one-byte form needs looking at.
    if n < _KEY_MIN_LEN or n > _KEY_MAX_LEN or PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND:
        return False
    chars = PyUnicode_1BYTE_DATA(key)
    if memcmp(chars, b"clex_", _KEY_PREFIX_LEN) != 0:
        return False
    for i in range(_KEY_PREFIX_LEN, n):
        if not _key_char[chars[i]]:
            return False
    return True


def key_format_ok(key):
    """Reject anything that cannot be a key before spending a hash on it."""
    return _key_format_ok(key)


cdef class KeyEntry:
    """What a key authenticates as."""

    cdef readonly object key_id
    cdef readonly object account_id

    def __init__(self, key_id, account_id):
        self.key_id = key_id
        self.account_id = account_id

    def __repr__(self):
        return f"KeyEntry(key_id={self.key_id!r}, account_id={self.account_id!r})"


cdef class KeyTable:
    """Digest -> entry map; the second map lets a revocation by id find the digest."""

    cdef dict _by_hash
    cdef dict _hash_by_id

    def __cinit__(self):
        self._by_hash = {}
        self._hash_by_id = {}

    def add(self, bytes key_hash not None, key_id, account_id):
        cdef KeyEntry entry
        if len(key_hash) != 32:
            raise ValueError("key_hash must be a 32-byte SHA-256 digest")
        old_hash = self._hash_by_id.get(key_id)
        if old_hash is not None and old_hash != key_hash:
            del self._by_hash[old_hash]
        old = self._by_hash.get(key_hash)
        if old is not None and (<KeyEntry>old).key_id != key_id:
            del self._hash_by_id[(<KeyEntry>old).key_id]
        entry = KeyEntry.__new__(KeyEntry)
        entry.key_id = key_id
        entry.account_id = account_id
        self._by_hash[key_hash] = entry
        self._hash_by_id[key_id] = key_hash

    def remove(self, key_id):
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is None:
            return False
        del self._by_hash[key_hash]
        return True

    def lookup(self, key):
        """Find a presented key: the dict compares digests, never the secret itself."""
        if not _key_format_ok(key):
            return None
        return self._by_hash.get(_sha256((<str>key).encode("ascii")).digest())

    def lookup_hash(self, key_hash):
        return self._by_hash.get(key_hash)

    def clear(self):
        self._by_hash.clear()
        self._hash_by_id.clear()

    def __len__(self):
        return len(self._by_hash)


# ---------------------------------------------------------------------------------------------
# Whole plain requests (the screen's input, clexproxy/server/screen.py)
# ---------------------------------------------------------------------------------------------

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
    _TAB = 9

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
    header the screen reads, a folded or malformed line, a control character, `Expect`, or
    `Connection: close` (the full path closes such a connection after its answer).
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
            if seen & kind or kind == _H_TRANSFER_ENCODING or kind == _H_EXPECT:
                return None
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
