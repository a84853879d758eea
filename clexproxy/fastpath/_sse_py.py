"""Pure-Python twin of the compiled `_sse`: Server-Sent Events splitting and the `has_usage` pre-filter.

It exists so the gateway runs where the extension cannot be built (``CLEXPROXY_NO_EXTENSIONS=1``)
and so every test runs against two independent implementations of the same rules. The public
API and every observable result must match the compiled module exactly; the algorithms mirror
it step by step (same scan order) so that they cannot drift.

`SSEParser` splits an upstream Server-Sent Events stream into events while keeping each event's
exact bytes, so the gateway can relay byte-for-byte and still read what it needs; `has_usage`
lets the relay parse only the chunk that carries token usage.
"""

from __future__ import annotations

import re

__all__ = ("SSEEvent", "SSEParser", "has_usage")

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
