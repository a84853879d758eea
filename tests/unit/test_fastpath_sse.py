"""SSE splitting and the usage pre-filter, on both implementations.

The relay forwards `raw` byte for byte, so besides the parsed fields every test that can also
checks that the raws plus the closing tail reproduce the input exactly.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Fields = tuple[bytes | None, bytes | None, bytes | None, bool]  # (event, data, id, comment_only)


def fields(events: list[Any]) -> list[Fields]:
    return [(e.event, e.data, e.id, e.comment_only) for e in events]


def feed_all(sse: ModuleType, chunks: list[bytes]) -> tuple[list[Any], bytes]:
    parser = sse.SSEParser()
    events: list[Any] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser.close()


def assert_lossless(events: list[Any], tail: bytes, stream: bytes) -> None:
    assert b"".join(e.raw for e in events) + tail == stream


# --- line terminators -------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_single_event_each_terminator(sse: ModuleType, eol: bytes) -> None:
    stream = b"data: hello" + eol + eol
    parser = sse.SSEParser()
    events = parser.feed(stream)
    assert fields(events) == [(None, b"hello", None, False)]
    assert events[0].raw == stream
    assert parser.pending == 0
    assert parser.close() == b""


def test_mixed_terminators_in_one_event(sse: ModuleType) -> None:
    stream = b"event: a\rdata: 1\r\ndata: 2\nid: 7\r\r\n"
    events = sse.SSEParser().feed(stream)
    # "\r\r\n": CR ends the id line, CRLF is the blank line.
    assert fields(events) == [(b"a", b"1\n2", b"7", False)]
    assert events[0].raw == stream


def test_cr_at_chunk_end_dispatches_now_and_next_lf_is_not_a_blank_line(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    first = parser.feed(b"data: a\r\n\r")
    assert fields(first) == [(None, b"a", None, False)]
    assert first[0].raw == b"data: a\r\n\r"
    second = parser.feed(b"\ndata: b\n\n")
    assert fields(second) == [(None, b"b", None, False)]
    assert second[0].raw == b"\ndata: b\n\n"
    assert parser.close() == b""


def test_cr_at_chunk_end_of_a_field_line(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # second half of CRLF, not a blank line
    assert parser.pending == len(b"data: a\r\n")
    events = parser.feed(b"\n")
    assert fields(events) == [(None, b"a", None, False)]
    assert events[0].raw == b"data: a\r\n\n"


def test_cr_at_chunk_end_followed_by_cr(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"data: a\r") == []
    events = parser.feed(b"\rdata: b\r\r")
    assert fields(events) == [(None, b"a", None, False), (None, b"b", None, False)]


def test_split_crlf_after_last_event_is_left_as_a_terminator_only_tail(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert len(parser.feed(b"data: a\n\r")) == 1
    assert parser.feed(b"\n") == []
    tail = parser.close()
    assert tail == b"\n"
    assert tail.strip(b"\r\n") == b""  # how a caller tells this from a truncated event


# --- fields -----------------------------------------------------------------------------------


def test_comment_only_block(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b": keep-alive\n\n")
    assert fields(events) == [(None, None, None, True)]
    assert events[0].raw == b": keep-alive\n\n"


def test_comments_mixed_with_fields_are_not_comment_only(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b": hi\ndata: x\n: there\n\n")
    assert fields(events) == [(None, b"x", None, False)]


def test_multi_line_data_is_joined_with_lf(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"data: a\ndata:\ndata: c\n\n")
    assert events[0].data == b"a\n\nc"


def test_event_and_id_last_value_wins(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"event: one\nid: 1\nevent: two\nid: 2\ndata: d\n\n")
    assert fields(events) == [(b"two", b"d", b"2", False)]


def test_event_without_data(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"event: ping\n\n")
    assert fields(events) == [(b"ping", None, None, False)]


def test_only_one_space_after_colon_is_removed(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"data:x\n\ndata:  y\n\ndata: a:b: c\n\n")
    assert [e.data for e in events] == [b"x", b" y", b"a:b: c"]


def test_field_without_colon_has_empty_value(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"data\n\ndata\ndata\n\nevent\n\n")
    assert fields(events) == [(None, b"", None, False), (None, b"\n", None, False), (b"", None, None, False)]


def test_unknown_fields_are_ignored_but_kept_in_raw(sse: ModuleType) -> None:
    stream = b"retry: 1000\nData: no\ndatax: no\ndat: no\nfoo\ndata: yes\n\n"
    events = sse.SSEParser().feed(stream)
    assert fields(events) == [(None, b"yes", None, False)]
    assert events[0].raw == stream


def test_unknown_field_only_block_is_an_event_without_data(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"retry: 5\n\n")
    assert fields(events) == [(None, None, None, False)]


def test_id_containing_nul_is_ignored(sse: ModuleType) -> None:
    events = sse.SSEParser().feed(b"id: 1\nid: a\x00b\ndata: x\n\n")
    assert events[0].id == b"1"


def test_empty_id_is_a_value(sse: ModuleType) -> None:
    assert sse.SSEParser().feed(b"id\ndata: x\n\n")[0].id == b""


def test_bom_at_stream_start_is_skipped_for_parsing_only(sse: ModuleType) -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    events = sse.SSEParser().feed(stream)
    # Only the stream's first BOM is special; the second makes an unknown field name.
    assert fields(events) == [(None, b"a", None, False), (None, None, None, False)]
    assert_lossless(events, b"", stream)


def test_bom_split_across_chunks(sse: ModuleType) -> None:
    events, tail = feed_all(sse, [b"\xef", b"\xbb", b"\xbfdata: a\n", b"\n"])
    assert fields(events) == [(None, b"a", None, False)]
    assert tail == b""


def test_data_containing_json(sse: ModuleType) -> None:
    doc = b'{"id":"x","choices":[{"delta":{"content":"a: b\\n"}}]}'
    events = sse.SSEParser().feed(b"data: " + doc + b"\n\ndata: [DONE]\n\n")
    assert [e.data for e in events] == [doc, b"[DONE]"]


# --- blank lines, pending, close --------------------------------------------------------------


def test_consecutive_blank_lines_do_not_create_events(sse: ModuleType) -> None:
    stream = b"\n\ndata: a\n\n\n\r\n\rdata: b\n\n"
    events = sse.SSEParser().feed(stream)
    assert fields(events) == [(None, b"a", None, False), (None, b"b", None, False)]
    assert events[0].raw == b"\n\ndata: a\n\n"
    assert events[1].raw == b"\n\r\n\rdata: b\n\n"
    assert_lossless(events, b"", stream)


def test_pending_counts_undispatched_bytes(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.pending == 0
    assert parser.feed(b"data: a") == []
    assert parser.pending == 7
    assert parser.feed(b"bc\ndata") == []
    assert parser.pending == 14
    assert len(parser.feed(b"\n\ndata: next")) == 1
    assert parser.pending == len(b"data: next")


def test_close_returns_truncated_event_and_resets(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert len(parser.feed(b"data: a\n\ndata: cut off")) == 1
    assert parser.close() == b"data: cut off"
    assert parser.pending == 0
    assert parser.close() == b""
    # A fresh stream after close: old fields must not leak and a BOM is special again.
    events = parser.feed(b"\xef\xbb\xbfdata: b\n\n")
    assert fields(events) == [(None, b"b", None, False)]


def test_close_on_event_boundary_returns_empty(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    parser.feed(b"data: a\n\n")
    assert parser.close() == b""


def test_close_with_complete_lines_but_no_blank_line(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"event: x\ndata: y\n") == []
    assert parser.close() == b"event: x\ndata: y\n"
    assert parser.feed(b"data: z\n\n")[0].event is None


def test_empty_chunks(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"") == []
    parser.feed(b"data: a\r")
    assert parser.feed(b"") == []
    assert fields(parser.feed(b"\r")) == [(None, b"a", None, False)]


def test_accepts_bytes_like_and_rejects_str(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(bytearray(b"data: a\n")) == []
    assert fields(parser.feed(memoryview(b"\n"))) == [(None, b"a", None, False)]
    with pytest.raises(TypeError):
        parser.feed("data: a\n\n")
    assert parser.pending == 0


def test_byte_at_a_time_equals_whole(sse: ModuleType) -> None:
    stream = b': c\r\n\r\nevent: e\rid: 9\rdata: {"a": 1}\r\r\n\ndata\ndata: x\r\n\r\ndata: tail'
    whole, whole_tail = feed_all(sse, [stream])
    bytewise, bytewise_tail = feed_all(sse, [stream[i : i + 1] for i in range(len(stream))])
    assert fields(whole) == fields(bytewise)
    assert whole_tail == b"data: tail"
    # Fed bytewise, the LF of the dispatching CRLF arrives after the event went out, so it
    # opens the next (unfinished) block instead.
    assert bytewise_tail == b"\ndata: tail"
    assert_lossless(whole, whole_tail, stream)
    assert_lossless(bytewise, bytewise_tail, stream)


def test_large_event_in_small_chunks(sse: ModuleType) -> None:
    payload = b"x" * 300_000
    stream = b"data: " + payload + b"\n\n"
    parser = sse.SSEParser()
    events: list[Any] = []
    for i in range(0, len(stream), 997):
        events.extend(parser.feed(stream[i : i + 997]))
        if not events:
            assert parser.pending == min(i + 997, len(stream))
    assert [e.data for e in events] == [payload]
    assert parser.pending == 0
    # The parser stays usable after releasing its large buffer.
    assert parser.feed(b"data: b\n\n")[0].data == b"b"


def test_many_events_in_one_chunk(sse: ModuleType) -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(1000))
    events = sse.SSEParser().feed(stream)
    assert [e.data for e in events] == [b"%d" % i for i in range(1000)]
    assert_lossless(events, b"", stream)


def test_event_attributes_are_read_only(sse: ModuleType) -> None:
    event = sse.SSEParser().feed(b"data: a\n\n")[0]
    for name in ("raw", "data", "event", "id", "comment_only"):
        with pytest.raises(AttributeError):
            setattr(event, name, None)


def test_event_constructor_and_repr(sse: ModuleType) -> None:
    event = sse.SSEEvent(b"data: a\n\n", b"a", None, None, False)
    assert (event.raw, event.data, event.event, event.id, event.comment_only) == (
        b"data: a\n\n",
        b"a",
        None,
        None,
        False,
    )
    assert "data=b'a'" in repr(event)


# --- chunk boundaries: whole events, tails, mutable buffers -------------------------------------
# The compiled parser reads a bytes chunk in place when nothing is buffered and copies only the
# unfinished tail; these pin down the seams of that path (the twin must agree, as everywhere).


def test_chunk_per_event_gives_the_chunk_as_raw(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    for chunk in [b'data: {"a":1}\n\n', b": ping\n\n", b"event: e\r\ndata: x\r\n\r\n", b"data: [DONE]\n\n"]:
        events = parser.feed(chunk)
        assert [e.raw for e in events] == [chunk]
        assert parser.pending == 0
    assert parser.close() == b""


def test_chunk_with_events_and_a_tail(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    events = parser.feed(b"data: a\n\n: c\n\ndata: b")
    assert [e.raw for e in events] == [b"data: a\n\n", b": c\n\n"]
    assert parser.pending == len(b"data: b")
    events = parser.feed(b"\n\n")
    assert fields(events) == [(None, b"b", None, False)]
    assert events[0].raw == b"data: b\n\n"


def test_lines_parsed_before_the_tail_was_kept_still_count(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    assert parser.feed(b"event: e\nid: 1\ndata: 1\ndata: 2\n") == []
    assert parser.pending == len(b"event: e\nid: 1\ndata: 1\ndata: 2\n")
    events = parser.feed(b"data: 3\n\n")
    assert fields(events) == [(b"e", b"1\n2\n3", b"1", False)]
    assert events[0].raw == b"event: e\nid: 1\ndata: 1\ndata: 2\ndata: 3\n\n"


def test_mutable_chunks_are_copied(sse: ModuleType) -> None:
    parser = sse.SSEParser()
    chunk = bytearray(b"data: a\n\ndata: b")
    events = parser.feed(chunk)
    chunk[:] = b"X" * len(chunk)  # the caller reuses its read buffer
    more = parser.feed(memoryview(bytearray(b"c\n\n")))
    assert events[0].raw == b"data: a\n\n"
    assert fields(more) == [(None, b"bc", None, False)]
    assert more[0].raw == b"data: bc\n\n"


def test_bytes_and_bytes_like_chunks_mix(sse: ModuleType) -> None:
    stream = b"data: 1\n\ndata: 2\r\n\r\n: x\n\ndata: 3\n\n"
    kinds = [bytes, bytearray, memoryview]
    for cut in range(len(stream) + 1):
        for first, second in itertools.product(kinds, kinds):
            parser = sse.SSEParser()
            events = parser.feed(first(stream[:cut])) + parser.feed(second(stream[cut:]))
            assert [e.data for e in events] == [b"1", b"2", None, b"3"], (cut, first, second)
            assert_lossless(events, parser.close(), stream)


# --- property: arbitrary splits -----------------------------------------------------------------

EOLS = [b"\r\n", b"\n", b"\r"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"), max_size=20).map(
    lambda s: s.encode("utf-8")
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps(v).encode("utf-8"))
VALUES = TEXT | JSON_VALUES


@dataclass
class Line:
    content: bytes
    eol: bytes


@st.composite
def field_line(draw: st.DrawFn) -> tuple[bytes, tuple[str, bytes | None]]:
    """A non-blank line and what it contributes: (kind, value)."""
    kind = draw(st.sampled_from(["data", "data", "data", "bare", "event", "id", "comment", "unknown"]))
    if kind == "data" or kind == "event" or kind == "id":
        value = draw(VALUES)
        sep = draw(st.sampled_from([b": ", b":"]))
        parsed = value[1:] if sep == b":" and value.startswith(b" ") else value
        return kind.encode() + sep + value, (kind, parsed)
    if kind == "bare":
        return b"data", ("data", b"")
    if kind == "comment":
        return b":" + draw(TEXT), ("comment", None)
    name = draw(st.sampled_from([b"retry", b"Data", b"dat", b"datax", b"events", b"x"]))
    return name + b": " + draw(TEXT), ("unknown", None)


def expected_fields(parts: list[tuple[str, bytes | None]]) -> Fields:
    data = [value for kind, value in parts if kind == "data" and value is not None]
    event = id_ = None
    for kind, value in parts:
        if kind == "event":
            event = value
        elif kind == "id":
            id_ = value
    comment_only = all(kind == "comment" for kind, _ in parts)
    return (event, b"\n".join(data) if data else None, id_, comment_only)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[Fields], bytes]:
    """(stream, expected events, bytes of the trailing unfinished block)."""
    lines: list[Line] = []
    expected: list[Fields] = []
    for _ in range(draw(st.integers(0, 6))):
        for _ in range(draw(st.integers(0, 2))):  # stray blank lines between events
            lines.append(Line(b"", draw(st.sampled_from(EOLS))))
        block = draw(st.lists(field_line(), min_size=1, max_size=5))
        for content, _ in block:
            lines.append(Line(content, draw(st.sampled_from(EOLS))))
        lines.append(Line(b"", draw(st.sampled_from(EOLS))))
        expected.append(expected_fields([part for _, part in block]))
    unfinished = draw(st.lists(field_line(), max_size=3))
    first_unfinished = len(lines)
    for content, _ in unfinished:
        lines.append(Line(content, draw(st.sampled_from(EOLS))))
    partial = draw(st.sampled_from([b"", b"da", b"data: par", b": c"]))
    # A CR followed by a blank line ended by LF would read as one CRLF: not what was drawn.
    for prev, line in itertools.pairwise(lines):
        if prev.eol == b"\r" and line.content == b"" and line.eol == b"\n":
            line.eol = b"\r\n"
    stream = b"".join(line.content + line.eol for line in lines) + partial
    tail = b"".join(line.content + line.eol for line in lines[first_unfinished:]) + partial
    return stream, expected, tail


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sse_streams(), data=st.data())
def test_arbitrary_splits_match_whole_feed(sse: ModuleType, case: tuple[bytes, list[Fields], bytes], data: Any) -> None:
    stream, expected, unfinished = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    whole, whole_tail = feed_all(sse, [stream])
    split, split_tail = feed_all(sse, chunks)

    assert fields(whole) == expected
    assert fields(split) == expected
    assert_lossless(whole, whole_tail, stream)
    assert_lossless(split, split_tail, stream)
    for tail in (whole_tail, split_tail):
        # The tail is the unfinished block, possibly preceded by stray terminators.
        assert tail.endswith(unfinished)
        assert tail[: len(tail) - len(unfinished)].strip(b"\r\n") == b""


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sse_streams())
def test_two_implementations_agree_on_raw(
    sse: ModuleType, sse_other: ModuleType, case: tuple[bytes, list[Fields], bytes]
) -> None:
    stream, _, _ = case
    mine, mine_tail = feed_all(sse, [stream[i : i + 3] for i in range(0, len(stream), 3)])
    theirs, theirs_tail = feed_all(sse_other, [stream[i : i + 3] for i in range(0, len(stream), 3)])
    assert [e.raw for e in mine] == [e.raw for e in theirs]
    assert fields(mine) == fields(theirs)
    assert mine_tail == theirs_tail


# --- has_usage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        b'{"usage":{"prompt_tokens":1}}',
        b'{"id":"x","choices":[],"usage": {"prompt_tokens":1}}',
        b'{"usage" :\n\t\r {}}',
        b'{"choices":[{"delta":{}}],"usage":{}}',
        b'{"model":"usage","usage":{"total_tokens":3}}',
        # Not a parser: a nested "usage" object matches too (it only costs one needless parse).
        b'{"meta":{"usage":{}},"usage":null}',
        b'"usage":{',
        b'{"u":"uu","usage":{}}',
        b'u"usage":{}',
    ],
)
def test_has_usage_true(sse: ModuleType, doc: bytes) -> None:
    assert sse.has_usage(doc) is True


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"[DONE]",
        b'{"usage":null}',
        b'{"usage": null, "choices":[{"delta":{"content":"{"}}]}',
        b'{"usage":[]}',
        b'{"usage_total":{}}',
        b'{"xusage":{}}',
        b'{"Usage":{}}',
        b'{"usage"}',
        b'{"usage":',
        b'"usage"',
        b'{"usage": "{"}',
        b'{"usage"\v:{}}',  # \v is not JSON whitespace
        # Inside a string value every quote is escaped, so the pattern cannot occur there.
        b'{"content":"\\"usage\\":{"}',
        # The needle cut short at either end of the buffer.
        b'usage":{}',
        b"u",
        b'"u',
        b'"usag',
        b'{}"usage"',
        b'{}"usage',
    ],
)
def test_has_usage_false(sse: ModuleType, doc: bytes) -> None:
    assert sse.has_usage(doc) is False


def test_has_usage_accepts_bytes_like_and_rejects_str(sse: ModuleType) -> None:
    assert sse.has_usage(bytearray(b'{"usage":{}}')) is True
    assert sse.has_usage(memoryview(b'{"usage":{}}')) is True
    with pytest.raises(TypeError):
        sse.has_usage('{"usage":{}}')
    with pytest.raises(TypeError):
        sse.has_usage(None)


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=30), ws1=st.text(" \t\r\n", max_size=3), ws2=st.text(" \t\r\n", max_size=3))
def test_has_usage_finds_the_key_after_any_prefix(sse: ModuleType, prefix: bytes, ws1: str, ws2: str) -> None:
    doc = prefix + b'"usage"' + ws1.encode() + b":" + ws2.encode() + b'{"total_tokens": 1}'
    assert sse.has_usage(doc) is True
    assert sse.has_usage(doc.replace(b"{", b"[")) is False


USAGE_PIECES = [b'"usage"', b'"usage', b'usage"', b'"', b"u", b"e", b":", b"{", b" ", b"\n", b"\t", b"x", b"null", b"}"]


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.sampled_from(USAGE_PIECES), max_size=24))
def test_has_usage_matches_its_definition(sse: ModuleType, parts: list[bytes]) -> None:
    """Overlapping and near-miss needles: the compiled search must not skip a match or read past either end."""
    doc = b"".join(parts)
    expected = re.search(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{', doc) is not None
    assert sse.has_usage(doc) is expected
