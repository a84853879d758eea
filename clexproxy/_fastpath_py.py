"""Pure-Python twin of the compiled `_fastpath` module.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. The public
API and every observable result must match `_fastpath.pyx` exactly; the algorithms mirror it
step by step (same scan order, same floating-point operation order) so that they cannot drift.

Five pieces live here because they run on every request or every streamed chunk:

* `SSEParser`: splits an upstream Server-Sent Events stream into events while keeping each
  event's exact bytes, so the gateway can relay byte-for-byte and still read what it needs.
* `TokenBuckets`: the per-account requests-per-minute limit.
* `CreditLedger`: the per-account daily credit budget, with write-behind usage deltas.
* `KeyTable`: the in-memory API key lookup, keyed by digest so the secret is never compared.
* `plain_request`: the few header values the screen (clexproxy/server/screen.py) reads from a raw
  request, when that request is one whole, plain request.
"""

from __future__ import annotations

import hashlib
import math
import re

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

_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A
_SPACE = 0x20
_BOM = b"\xef\xbb\xbf"
# One regex search finds whichever terminator comes first; two `find` calls would rescan.
_EOL = re.compile(rb"[\r\n]")
# JSON whitespace is exactly these four bytes (RFC 8259 section 2).
_USAGE = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{')


class SSEEvent:
    """One dispatched event: its exact wire bytes plus the fields the gateway reads.

    `raw` is kept so the relay can forward what upstream sent without re-serialising it;
    the parsed fields are there only for the few decisions the gateway makes (usage, errors).
    """

    __slots__ = ("_comment_only", "_data", "_event", "_id", "_raw")

    def __init__(
        self,
        raw: bytes,
        data: bytes | None = None,
        event: bytes | None = None,
        id: bytes | None = None,
        comment_only: bool = False,
    ) -> None:
        self._raw = raw
        self._data = data
        self._event = event
        self._id = id
        self._comment_only = bool(comment_only)

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def data(self) -> bytes | None:
        return self._data

    @property
    def event(self) -> bytes | None:
        return self._event

    @property
    def id(self) -> bytes | None:
        return self._id

    @property
    def comment_only(self) -> bool:
        return self._comment_only

    def __repr__(self) -> str:
        return (
            f"SSEEvent(event={self._event!r}, data={self._data!r}, id={self._id!r}, "
            f"comment_only={self._comment_only!r}, raw_len={len(self._raw)})"
        )


class SSEParser:
    """Incremental SSE parser (WHATWG HTML "event stream" interpretation).

    The buffer holds only the current, not yet dispatched event; each line is parsed once as
    soon as its terminator arrives, and the search for the next terminator resumes where the
    previous one stopped, so an event trickling in one byte at a time costs linear time.

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

    __slots__ = (
        "_at_stream_start",
        "_buf",
        "_data",
        "_event",
        "_has_fields",
        "_id",
        "_line_start",
        "_nlines",
        "_scan",
        "_skip_lf",
        "_start",
    )

    def __init__(self) -> None:
        self._buf = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._buf.clear()
        self._start = 0  # first byte of the pending event's raw
        self._line_start = 0  # first byte of the line being assembled
        self._scan = 0  # where the search for the next terminator resumes
        self._skip_lf = False
        self._at_stream_start = True
        self._reset_block()

    def _reset_block(self) -> None:
        self._nlines = 0
        self._has_fields = False
        self._data: list[bytes] | None = None
        self._event: bytes | None = None
        self._id: bytes | None = None

    @property
    def pending(self) -> int:
        return len(self._buf) - self._start

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        n = len(buf)
        events: list[SSEEvent] = []
        scan = self._scan
        while True:
            if self._skip_lf:
                if scan >= n:
                    break
                if buf[scan] == _LF:
                    scan += 1
                    self._line_start = scan
                self._skip_lf = False
            match = _EOL.search(buf, scan)
            if match is None:
                scan = n
                break
            pos = match.start()
            if buf[pos] == _CR:
                if pos + 1 < n:
                    end = pos + 2 if buf[pos + 1] == _LF else pos + 1
                else:
                    end = pos + 1
                    self._skip_lf = True
            else:
                end = pos + 1
            event = self._line(buf, self._line_start, pos, end)
            if event is not None:
                events.append(event)
            self._line_start = scan = end
        start = self._start
        if start:
            # Deleting from the front of a bytearray only moves its start pointer: O(1).
            del buf[:start]
            self._line_start -= start
            scan -= start
            self._start = 0
        self._scan = scan
        return events

    def _line(self, buf: bytearray, begin: int, stop: int, end: int) -> SSEEvent | None:
        """Apply one complete line buf[begin:stop] (terminator ends at `end`); return a dispatched event."""
        if self._at_stream_start:
            self._at_stream_start = False
            if buf.startswith(_BOM, begin, stop):
                begin += 3
        if begin == stop:
            if not self._nlines:
                return None
            data = self._data
            event = SSEEvent(
                bytes(buf[self._start : end]),
                None if data is None else (data[0] if len(data) == 1 else b"\n".join(data)),
                self._event,
                self._id,
                not self._has_fields,
            )
            self._start = end
            self._reset_block()
            return event
        self._nlines += 1
        if buf[begin] == _COLON:
            return None
        self._has_fields = True
        colon = buf.find(b":", begin, stop)
        if colon < 0:
            name_end = value = stop
        else:
            name_end = colon
            value = colon + 1
            if value < stop and buf[value] == _SPACE:
                value += 1
        size = name_end - begin
        if size == 4 and buf.startswith(b"data", begin):
            if self._data is None:
                self._data = [bytes(buf[value:stop])]
            else:
                self._data.append(bytes(buf[value:stop]))
        elif size == 5 and buf.startswith(b"event", begin):
            self._event = bytes(buf[value:stop])
        elif size == 2 and buf.startswith(b"id", begin) and buf.find(b"\x00", value, stop) < 0:
            self._id = bytes(buf[value:stop])
        return None

    def close(self) -> bytes:
        """End of stream: return the bytes of the unfinished event and start over.

        A non-empty result normally means upstream cut the stream mid-event. The exception is a
        tail made only of line terminators (a stray blank line after the last event, or the LF
        of a CRLF split across chunks): those bytes are returned too, so that the raws plus this
        tail always equal the input, and ``tail.strip(b"\\r\\n")`` tells the two cases apart.
        """
        tail = bytes(self._buf[self._start :])
        self._reset()
        return tail


def has_usage(data: bytes) -> bool:
    """Cheap pre-filter: does this JSON text have a ``"usage"`` key whose value is an object?

    Lets the streaming path parse only the one chunk that carries token usage. It is a byte
    search, not a parser, so it also matches a ``"usage"`` key nested at any depth (and, in
    valid JSON, a key that merely ends in an escaped ``\\"usage``); a false match costs one
    needless parse and is harmless. It cannot match inside an ordinary string value, where
    every quote is escaped, and ``"usage": null`` does not match.
    """
    return _USAGE.search(data) is not None


# ---------------------------------------------------------------------------------------------
# Token buckets
# ---------------------------------------------------------------------------------------------

# Tolerance in tokens: a client that waits exactly `retry_after` must get through even when
# the clock arithmetic lands a few ulps short of a whole token.
_EPS = 1e-6


class BucketResult:
    """The outcome of one bucket check, in the numbers the rate-limit headers need."""

    __slots__ = ("_allowed", "_remaining", "_reset_after", "_retry_after")

    def __init__(self, allowed: bool, remaining: int, retry_after: float, reset_after: float) -> None:
        self._allowed = bool(allowed)
        self._remaining = remaining
        self._retry_after = retry_after
        self._reset_after = reset_after

    @property
    def allowed(self) -> bool:
        return self._allowed

    @property
    def remaining(self) -> int:
        return self._remaining

    @property
    def retry_after(self) -> float:
        return self._retry_after

    @property
    def reset_after(self) -> float:
        return self._reset_after

    def __repr__(self) -> str:
        return (
            f"BucketResult(allowed={self._allowed!r}, remaining={self._remaining!r}, "
            f"retry_after={self._retry_after!r}, reset_after={self._reset_after!r})"
        )


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


def _result(allowed: bool, tokens: float, cost: float, capacity: float, refill: float) -> BucketResult:
    """Shared by acquire and peek so both report identical numbers for identical state."""
    if allowed:
        retry = 0.0
    elif refill > 0.0 and cost <= capacity:
        retry = (cost - tokens) / refill
    else:
        retry = math.inf  # the bucket can never hold `cost` tokens
    if refill > 0.0:
        reset = (capacity - tokens) / refill
        if reset < 0.0:
            reset = 0.0
    elif tokens >= capacity:
        reset = 0.0
    else:
        reset = math.inf
    return BucketResult(allowed, math.floor(tokens + _EPS), retry, reset)


class TokenBuckets:
    """Continuously refilled token buckets keyed by account.

    Capacity and rate are passed on every call rather than stored, so a plan change takes
    effect on the next request without any notification path. Time is whatever the caller
    passes (a monotonic clock in production, a fake one in tests).
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}

    def acquire(
        self, key: int, capacity: float, refill_per_second: float, now: float, cost: float = 1.0
    ) -> BucketResult:
        # float() gives the same double arithmetic as the compiled twin's C parameters.
        capacity, refill_per_second, now, cost = float(capacity), float(refill_per_second), float(now), float(cost)
        if cost < 0.0:
            raise ValueError("cost must not be negative")
        cap = capacity if capacity > 0.0 else 0.0
        refill = refill_per_second if refill_per_second > 0.0 else 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(cap, now)
        else:
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

    def peek(self, key: int, capacity: float, refill_per_second: float, now: float) -> BucketResult:
        """The numbers `acquire` would see, without taking a token or touching stored state."""
        capacity, refill_per_second, now = float(capacity), float(refill_per_second), float(now)
        cap = capacity if capacity > 0.0 else 0.0
        refill = refill_per_second if refill_per_second > 0.0 else 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = cap
        else:
            tokens = bucket.tokens
            if now > bucket.last:
                tokens = tokens + (now - bucket.last) * refill
            if tokens > cap:
                tokens = cap
        return _result(tokens + _EPS >= 1.0, tokens, 1.0, cap, refill)

    def forget(self, key: int) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


# ---------------------------------------------------------------------------------------------
# Credit ledger
# ---------------------------------------------------------------------------------------------


class _Account:
    """One account's budget for its current day, plus usage not yet drained for that day.

    Usage for the current day accumulates on the account itself (no per-call tuple or dict
    entry); only the rare correction for an earlier day goes to the ledger's side table.
    """

    __slots__ = ("account", "calls", "completion_tokens", "credits", "day", "dirty", "lease", "limit", "prompt_tokens",
                 "spent")

    def __init__(self, account: int, limit: int, day: int, spent: int, lease: int) -> None:
        self.account = account
        self.limit = limit
        self.day = day
        self.spent = spent
        self.lease = lease
        self.credits = 0  # undrained usage for `day`
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.dirty = False  # listed in CreditLedger._dirty


class CreditLedger:
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

    __slots__ = ("_accounts", "_auto", "_dirty", "_side")

    def __init__(self, auto_lease: bool = True) -> None:
        self._auto = bool(auto_lease)
        self._accounts: dict[int, _Account] = {}
        self._dirty: list[_Account] = []
        self._side: dict[tuple[int, int], list[int]] = {}

    def _get(self, account: int) -> _Account:
        acct = self._accounts.get(account)
        if acct is None:
            raise KeyError(account)
        return acct

    def _fresh_lease(self, limit: int, spent: int) -> int:
        if not self._auto:
            return 0
        lease = limit - spent
        return lease if lease > 0 else 0

    def _side_add(
        self, account: int, day: int, credits: int, calls: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        slot = self._side.get((account, day))
        if slot is None:
            slot = self._side[(account, day)] = [0, 0, 0, 0]
        slot[0] += credits
        slot[1] += calls
        slot[2] += prompt_tokens
        slot[3] += completion_tokens

    def _record(
        self, acct: _Account, day: int, credits: int, calls: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
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

    def _rollover(self, acct: _Account, day: int) -> None:
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

    def set_account(self, account: int, limit: int, day: int, spent: int) -> None:
        """Create an account, or change its limit.

        `spent` (usage already stored for `day`) is used when the account is new or `day` is
        newer than its current day; for the same or an older day the ledger's own count wins,
        because it includes reservations the store has not seen yet.
        """
        acct = self._accounts.get(account)
        if acct is None:
            self._accounts[account] = _Account(account, limit, day, spent, self._fresh_lease(limit, spent))
        elif day > acct.day:
            self._rollover(acct, day)
            acct.limit = limit
            acct.spent = spent
            acct.lease = self._fresh_lease(limit, spent)
        else:
            acct.limit = limit
            if self._auto:
                acct.lease = self._fresh_lease(limit, acct.spent)

    def reserve(self, account: int, cost: int, day: int) -> int:
        """Take `cost` credits from the lease; the lease left, or -1 (nothing changed) if short."""
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

    def refund(self, account: int, cost: int, day: int) -> None:
        """Undo a reservation made on `day`; after a rollover only the stored usage is corrected."""
        if cost < 0:
            raise ValueError("cost must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"refund for day {day}, but account {account} is still on day {acct.day}")
        if day == acct.day:
            acct.lease += cost
            acct.spent -= cost
        self._record(acct, day, -cost, -1, 0, 0)

    def record_tokens(self, account: int, prompt_tokens: int, completion_tokens: int, day: int) -> None:
        """Add a call's tokens to the usage of `day` (the day its credits were reserved on)."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        acct = self._get(account)
        if day > acct.day:
            raise ValueError(f"tokens for day {day}, but account {account} is still on day {acct.day}")
        self._record(acct, day, 0, 0, prompt_tokens, completion_tokens)

    def remaining(self, account: int, day: int) -> int:
        acct = self._get(account)
        if day > acct.day:
            return self._fresh_lease(acct.limit, 0)
        return acct.lease

    def limit(self, account: int) -> int:
        return self._get(account).limit

    def spent(self, account: int) -> int:
        return self._get(account).spent

    def grant(self, account: int, credits: int, day: int | None = None) -> None:
        """Add credits to the lease; with `day`, roll over first, and drop a grant for a past day."""
        if credits < 0:
            raise ValueError("credits must not be negative")
        acct = self._get(account)
        if day is not None:
            if day > acct.day:
                self._rollover(acct, day)
            elif day < acct.day:
                return
        acct.lease += credits

    def take_back(self, account: int) -> int:
        acct = self._get(account)
        lease = acct.lease
        acct.lease = 0
        return lease

    def drain_usage(self) -> list[tuple[int, int, int, int, int, int]]:
        """Usage since the last drain, as (account, day, credits, calls, prompt_tokens, completion_tokens) deltas.

        Rows whose deltas are all zero are left out; the order is unspecified.
        """
        out: list[tuple[int, int, int, int, int, int]] = []
        for acct in self._dirty:
            if acct.credits or acct.calls or acct.prompt_tokens or acct.completion_tokens:
                out.append(
                    (acct.account, acct.day, acct.credits, acct.calls, acct.prompt_tokens, acct.completion_tokens)
                )
            acct.credits = 0
            acct.calls = 0
            acct.prompt_tokens = 0
            acct.completion_tokens = 0
            acct.dirty = False
        self._dirty = []
        for (account, day), (credits, calls, prompt_tokens, completion_tokens) in self._side.items():
            if credits or calls or prompt_tokens or completion_tokens:
                out.append((account, day, credits, calls, prompt_tokens, completion_tokens))
        self._side = {}
        return out

    def __contains__(self, account: object) -> bool:
        return account in self._accounts

    def __len__(self) -> int:
        return len(self._accounts)


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------

_KEY_PREFIX = "clex_"
_KEY_MIN_BODY = 32
# Generated keys have 43 body characters; the cap only stops a hostile header from making us
# hash kilobytes per request.
_KEY_MAX_LEN = 256
_KEY_RE = re.compile(rf"clex_[A-Za-z0-9_-]{{{_KEY_MIN_BODY},{_KEY_MAX_LEN - len(_KEY_PREFIX)}}}")


def hash_key(key: str) -> bytes:
    """SHA-256 of the key: a random 256-bit secret needs no salt or slow hash, and lookups stay O(1)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_format_ok(key: str) -> bool:
    """Reject anything that cannot be a key before spending a hash on it."""
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


class KeyEntry:
    """What a key authenticates as."""

    __slots__ = ("_account_id", "_key_id")

    def __init__(self, key_id: int, account_id: int) -> None:
        self._key_id = key_id
        self._account_id = account_id

    @property
    def key_id(self) -> int:
        return self._key_id

    @property
    def account_id(self) -> int:
        return self._account_id

    def __repr__(self) -> str:
        return f"KeyEntry(key_id={self._key_id!r}, account_id={self._account_id!r})"


class KeyTable:
    """Digest -> entry map; the second map lets a revocation by id find the digest."""

    __slots__ = ("_by_hash", "_hash_by_id")

    def __init__(self) -> None:
        self._by_hash: dict[bytes, KeyEntry] = {}
        self._hash_by_id: dict[int, bytes] = {}

    def add(self, key_hash: bytes, key_id: int, account_id: int) -> None:
        if not isinstance(key_hash, bytes):
            raise TypeError(f"key_hash must be bytes, not {type(key_hash).__name__}")
        if len(key_hash) != 32:
            raise ValueError("key_hash must be a 32-byte SHA-256 digest")
        old_hash = self._hash_by_id.get(key_id)
        if old_hash is not None and old_hash != key_hash:
            del self._by_hash[old_hash]
        old = self._by_hash.get(key_hash)
        if old is not None and old.key_id != key_id:
            del self._hash_by_id[old.key_id]
        self._by_hash[key_hash] = KeyEntry(key_id, account_id)
        self._hash_by_id[key_id] = key_hash

    def remove(self, key_id: int) -> bool:
        key_hash = self._hash_by_id.pop(key_id, None)
        if key_hash is None:
            return False
        del self._by_hash[key_hash]
        return True

    def lookup(self, key: str) -> KeyEntry | None:
        """Find a presented key: the dict compares digests, never the secret itself."""
        if not key_format_ok(key):
            return None
        return self._by_hash.get(hashlib.sha256(key.encode("ascii")).digest())

    def lookup_hash(self, key_hash: bytes) -> KeyEntry | None:
        return self._by_hash.get(key_hash)

    def clear(self) -> None:
        self._by_hash.clear()
        self._hash_by_id.clear()

    def __len__(self) -> int:
        return len(self._by_hash)


# ---------------------------------------------------------------------------------------------
# Whole plain requests (the screen's input, clexproxy/server/screen.py)
# ---------------------------------------------------------------------------------------------

# RFC 9110's token characters (header names) and field-value characters (visible ASCII, space,
# tab and obs-text): anything else goes to aiohttp, which answers it with a 400.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)")
_REQUEST_LINE = re.compile(rb"[\x20-\x7e\x80-\xff]+")
_READ_NAMES = frozenset(
    {b"authorization", b"x-request-id", b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}
)
_REFUSED_NAMES = frozenset({b"transfer-encoding", b"expect"})


def plain_request(data: bytes) -> tuple[bytes, bytes | None, bytes | None] | None:
    """The request line, Authorization and X-Request-Id of `data` when it is one whole, plain request.

    None for anything the screen must leave to aiohttp's parser, which knows every case: part of
    a request or more than one, a body framed other than by one Content-Length, a repeated
    header the screen reads, a folded or malformed line, a control character, `Expect`, or
    `Connection: close` (the full path closes such a connection after its answer).
    """
    if type(data) is not bytes:
        return None
    end = data.find(b"\r\n\r\n")
    if end <= 0:
        return None
    lines = data[:end].split(b"\r\n")
    if _REQUEST_LINE.fullmatch(lines[0]) is None:
        return None
    authorization = request_id = None
    length = 0
    seen: set[bytes] = set()
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return None  # no name, a folded line, white space before the colon, or a bad character
        name = match[1].lower()
        if name not in _READ_NAMES:
            continue
        if name in seen or name in _REFUSED_NAMES:
            return None
        seen.add(name)
        value = match[2].strip(b" \t")
        if name == b"authorization":
            authorization = value
        elif name == b"x-request-id":
            request_id = value
        elif name == b"content-length":
            if not value or len(value) > 18 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            return None
    if len(data) != end + 4 + length:
        return None
    return lines[0], authorization, request_id
