"""Pure-Python twin of `_deltas`: `text_delta`, the same scan step by step on a bytes object's indices.

See the compiled `_deltas` for why it exists and when it answers None; the two give the same results and
every test runs against both. Keep them in sync. Positions are ints, and -1 stands for the
compiled module's NULL ("this scan cannot vouch for the event").
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ("text_delta", "text_run")

_MAX_DEPTH = 32
_MAX_NUMBER = 18
_QUOTE = 34
_BACKSLASH = 92
_WHITESPACE = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# The compiled loops over plain bytes, as one regex match each: a string's bytes that stand for
# themselves (outside the content: printable ASCII; in it, anything but controls), and digits.
_PLAIN_RUN = re.compile(rb'[ !#-\[\]-\x7f]*')
_CONTENT_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGIT_RUN = re.compile(rb"[0-9]*")
_SIMPLE_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f", ord("n"): "\n",
                   ord("r"): "\r", ord("t"): "\t"}


class _Content:
    __slots__ = ("escaped", "start", "stop")

    def __init__(self) -> None:
        self.start = self.stop = 0
        self.escaped = False


def _past(run: re.Pattern[bytes], data: bytes, p: int, end: int) -> int:
    """Past the bytes from `p` that `run` takes (a `*` pattern: it always matches)."""
    match = run.match(data, p, end)
    assert match is not None
    return match.end()


def _ws(data: bytes, p: int, end: int) -> int:
    while p < end and data[p] in _WHITESPACE:
        p += 1
    return p


def _unit(data: bytes, p: int, end: int) -> int:
    """The code unit of the `\\uXXXX` escape whose `u` is at `p`, or -1."""
    if end - p < 5 or not all(c in _HEX for c in data[p + 1 : p + 5]):
        return -1
    return int(data[p + 1 : p + 5], 16)


def _string(data: bytes, p: int, end: int) -> tuple[int, bool]:
    """A string outside the content, `p` after its opening quote: past its closing quote (or -1), and
    whether it had an escape."""
    escaped = False
    while p < end:
        p = _past(_PLAIN_RUN, data, p, end)
        if p >= end:
            break
        c = data[p]
        if c == _QUOTE:
            return p + 1, escaped
        if c == _BACKSLASH:
            escaped = True
            if p + 1 >= end:
                return -1, escaped
            if data[p + 1] == 117:
                unit = _unit(data, p + 1, end)
                if unit < 0 or 0xD800 <= unit <= 0xDFFF:
                    return -1, escaped
                p += 6
            elif data[p + 1] in _SIMPLE_ESCAPES:
                p += 2
            else:
                return -1, escaped
        else:
            return -1, escaped
    return -1, escaped


def _content(data: bytes, p: int, end: int, content: _Content) -> int:
    """The content string, `p` after its opening quote (see the compiled `_content`)."""
    content.start = p
    content.escaped = False
    while p < end:
        p = _past(_CONTENT_RUN, data, p, end)
        if p >= end:
            break
        c = data[p]
        if c == _QUOTE:
            content.stop = p
            return p + 1
        if c == _BACKSLASH:
            content.escaped = True
            if p + 1 >= end:
                return -1
            if data[p + 1] == 117:
                unit = _unit(data, p + 1, end)
                if unit < 0 or 0xDC00 <= unit <= 0xDFFF:
                    return -1
                if 0xD800 <= unit <= 0xDBFF:
                    if end - p < 12 or data[p + 6] != _BACKSLASH or data[p + 7] != 117:
                        return -1
                    if not 0xDC00 <= _unit(data, p + 7, end) <= 0xDFFF:
                        return -1
                    p += 6
                p += 6
            elif data[p + 1] in _SIMPLE_ESCAPES:
                p += 2
            else:
                return -1
        else:
            return -1
    return -1


def _number(data: bytes, p: int, end: int) -> int:
    start = p
    if p < end and data[p] == 45:
        p += 1
    if p >= end:
        return -1
    if data[p] == 48:
        p += 1
    elif 49 <= data[p] <= 57:
        p = _past(_DIGIT_RUN, data, p, end)
    else:
        return -1
    if p < end and data[p] == 46:
        p += 1
        if p >= end or data[p] not in _DIGITS:
            return -1
        p = _past(_DIGIT_RUN, data, p, end)
    if p < end and data[p] in (101, 69):
        return -1
    if p - start > _MAX_NUMBER:
        return -1
    return p


def _word(data: bytes, p: int, end: int, word: bytes) -> int:
    if end - p < len(word) or data[p : p + len(word)] != word:
        return -1
    return p + len(word)


def _value(data: bytes, p: int, end: int, depth: int) -> int:
    """Past one JSON value at `p` (which this scan can vouch for orjson accepting), or -1."""
    if p >= end:
        return -1
    c = data[p]
    if c == _QUOTE:
        return _string(data, p + 1, end)[0]
    if c in (123, 91):
        if depth >= _MAX_DEPTH:
            return -1
        p = _ws(data, p + 1, end)
        if p < end and data[p] == c + 2:
            return p + 1
        while True:
            if c == 123:
                if p >= end or data[p] != _QUOTE:
                    return -1
                p = _string(data, p + 1, end)[0]
                if p < 0:
                    return -1
                p = _ws(data, p, end)
                if p >= end or data[p] != 58:
                    return -1
                p = _ws(data, p + 1, end)
            p = _value(data, p, end, depth + 1)
            if p < 0:
                return -1
            p = _ws(data, p, end)
            if p < end and data[p] == 44:
                p = _ws(data, p + 1, end)
            elif p < end and data[p] == c + 2:
                return p + 1
            else:
                return -1
    if c == 116:
        return _word(data, p, end, b"true")
    if c == 102:
        return _word(data, p, end, b"false")
    if c == 110:
        return _word(data, p, end, b"null")
    return _number(data, p, end)


def _key(data: bytes, p: int, end: int) -> tuple[int, bytes]:
    """A key of an object this scan reads, `p` at its quote: past its colon (or -1, an escaped key too), and the key."""
    if p >= end or data[p] != _QUOTE:
        return -1, b""
    stop, escaped = _string(data, p + 1, end)
    if stop < 0 or escaped:
        return -1, b""
    key = data[p + 1 : stop - 1]
    p = _ws(data, stop, end)
    if p >= end or data[p] != 58:
        return -1, b""
    return _ws(data, p + 1, end), key


def _next(data: bytes, p: int, end: int) -> tuple[int, bool]:
    """After a member's value: past its comma (False) or its object's closing brace (True), or -1."""
    p = _ws(data, p, end)
    if p < end and data[p] == 44:
        return _ws(data, p + 1, end), False
    if p < end and data[p] == 125:
        return p + 1, True
    return -1, False


def _delta(data: bytes, p: int, end: int, content: _Content) -> int:
    """`{"content": "<text>"}` and nothing else, `p` at its brace."""
    if p >= end or data[p] != 123:
        return -1
    p, key = _key(data, _ws(data, p + 1, end), end)
    if p < 0 or key != b"content" or p >= end or data[p] != _QUOTE:
        return -1
    p = _content(data, p + 1, end, content)
    if p < 0 or content.stop == content.start:
        return -1
    p = _ws(data, p, end)
    if p >= end or data[p] != 125:
        return -1
    return p + 1


def _choices(data: bytes, p: int, end: int, content: _Content) -> int:
    """`[{choice}]`: one choice, index 0, no finish reason, a text-only delta; `p` at its bracket."""
    seen: set[bytes] = set()
    if p >= end or data[p] != 91:
        return -1
    p = _ws(data, p + 1, end)
    if p >= end or data[p] != 123:
        return -1
    p = _ws(data, p + 1, end)
    last = False
    while not last:
        p, key = _key(data, p, end)
        if p < 0:
            return -1
        if key in (b"delta", b"index", b"finish_reason"):
            if key in seen:
                return -1
            seen.add(key)
        if key == b"delta":
            p = _delta(data, p, end, content)
        elif key == b"index":
            p = p + 1 if p < end and data[p] == 48 else _word(data, p, end, b"null")
        elif key == b"finish_reason":
            p = _word(data, p, end, b"null")
        else:
            p = _value(data, p, end, 3)
        if p < 0:
            return -1
        p, last = _next(data, p, end)
        if p < 0:
            return -1
    if b"delta" not in seen:
        return -1
    p = _ws(data, p, end)
    if p >= end or data[p] != 93:
        return -1
    return p + 1


def _scan(data: bytes, content: _Content) -> bool:
    end = len(data)
    seen: set[bytes] = set()
    p = _ws(data, 0, end)
    if p >= end or data[p] != 123:
        return False
    p = _ws(data, p + 1, end)
    last = False
    while not last:
        p, key = _key(data, p, end)
        if p < 0:
            return False
        if key in (b"choices", b"usage", b"error"):
            if key in seen:
                return False
            seen.add(key)
        if key == b"choices":
            p = _choices(data, p, end, content)
        elif key in (b"usage", b"error"):
            p = _word(data, p, end, b"null")
        else:
            p = _value(data, p, end, 1)
        if p < 0:
            return False
        p, last = _next(data, p, end)
        if p < 0:
            return False
    return b"choices" in seen and _ws(data, p, end) == end


def _unescape(data: bytes, p: int, stop: int) -> bytes:
    """The content's UTF-8 without its escapes (which `_content` checked)."""
    out = bytearray()
    while p < stop:
        c = data[p]
        if c != _BACKSLASH:
            out.append(c)
            p += 1
            continue
        c = data[p + 1]
        if c == 117:
            point = _unit(data, p + 1, stop)
            p += 6
            if 0xD800 <= point <= 0xDBFF:
                point = 0x10000 + ((point - 0xD800) << 10) + (_unit(data, p + 1, stop) - 0xDC00)
                p += 6
            out += chr(point).encode()
            continue
        out += _SIMPLE_ESCAPES[c].encode()
        p += 2
    return bytes(out)


def _decode(data: bytes, content: _Content) -> str | None:
    """The content's text, or None when its bytes are not UTF-8 (orjson refuses the event then)."""
    raw = data[content.start : content.stop]
    if content.escaped:
        raw = _unescape(data, content.start, content.stop)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_delta(data: bytes) -> str | None:
    """The text of `data`, an OpenAI chat chunk's JSON, when the chunk is one more piece of the answer's
    text and nothing else (exactly `text_only(orjson.loads(data))` then); None when it is not, or
    when this scan cannot tell cheaply (the caller parses it in full)."""
    data = bytes(data)
    content = _Content()
    if not _scan(data, content):
        return None
    return _decode(data, content)


def text_run(events: list[Any], start: int) -> tuple[str | None, int]:
    """(the texts of `events[start:]` joined, the index after them) while each event's data is one more
    piece of text (`text_delta`); (None, start) when the first is not."""
    texts: list[str] = []
    if start < 0:
        raise ValueError("a run starts at an index of the events, not before the first")
    i = start
    while i < len(events):
        data = events[i].data
        if data is None:
            break
        text = text_delta(data)
        if text is None:
            break
        texts.append(text)
        i += 1
    if not texts:
        return None, start
    return (texts[0] if len(texts) == 1 else "".join(texts)), i
