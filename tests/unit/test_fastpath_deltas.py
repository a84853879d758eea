"""`text_delta`: a text-only chat chunk's text without parsing it, exactly, or None (the caller parses).

The contract checked on both implementations (`deltas`): whenever it answers a text, `orjson.loads`
accepts the event and `text_only` gives that same text (`parsed`); it answers for the chunks
OpenAI streams; and it answers None for whatever else, including the JSON orjson refuses.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clexproxy.protocols.chunks import text_only

HEAD = (b'{"id":"chatcmpl-AX7f","object":"chat.completion.chunk","created":1732560734,'
        b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[')
REFUSED = object()  # what `parsed` gives for an event the full parse refuses


def parsed(data: bytes) -> Any:
    """What the full parse makes of `data`: the text `text_only` gives (or None), or REFUSED."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return REFUSED
    if type(doc) is not dict or doc.get("error") is not None:
        return REFUSED
    return text_only(doc)


def content(text: bytes, tail: bytes = b',"logprobs":null,"finish_reason":null}],"usage":null}') -> bytes:
    return HEAD + b'{"index":0,"delta":{"content":"' + text + b'"}' + tail


@pytest.mark.parametrize("data, text", [
    (content(b" fox"), " fox"),
    (content(b" fox", b',"logprobs":null,"finish_reason":null}]}'), " fox"),
    (content(b"x", b"}],\"obfuscation\":\"Zk3\"}"), "x"),
    (b'{"choices":[{"delta":{"content":"x"}}]}', "x"),
    (b' \r\n\t{ "choices" : [ { "index" : 0 , "delta" : { "content" : "x" } , "finish_reason" : null } ] } \n', "x"),
    (b'{"choices":[{"index":null,"delta":{"content":"x"}}],"error":null}', "x"),
    (b'{"a":[1,-2.5,-0,0.125,true,false,null,{"b":[[]]},{},""],"choices":[{"delta":{"content":"x"}}]}', "x"),
    (b'{"a":123456789012345678,"choices":[{"delta":{"content":"x"}}]}', "x"),
    (b'{"a":"\\u00e9\\n\\"","choices":[{"delta":{"content":"x"}}]}', "x"),
])
def test_the_text_of_a_text_only_chunk(deltas: ModuleType, data: bytes, text: str) -> None:
    assert parsed(data) == text
    assert deltas.text_delta(data) == text


@pytest.mark.parametrize("escaped, text", [
    (b'\\"\\\\\\/\\b\\f\\n\\r\\t', '"\\/\b\f\n\r\t'),
    (b"caf\\u00e9 \\u00E9 \\u20ac \\u0000", "caf\xe9 \xe9 \u20ac \x00"),
    (b"\\ud83d\\ude00!", "\U0001f600!"),
    ("café 😀 日本".encode(), "café 😀 日本"),
    (b"\x7f", "\x7f"),
    ("é\\u00e9é".encode(), "ééé"),
])
def test_escapes_and_utf8_in_the_text_come_out_as_orjson_reads_them(deltas: ModuleType, escaped: bytes,
                                                                     text: str) -> None:
    data = content(escaped)
    assert parsed(data) == text
    assert deltas.text_delta(data) == text


@pytest.mark.parametrize("data", [
    pytest.param(HEAD + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}', id="role"),
    pytest.param(content(b"x", b',"finish_reason":"stop"}]}'), id="finish"),
    pytest.param(HEAD + b'{"index":0,"delta":{"content":""},"finish_reason":null}]}', id="empty text"),
    pytest.param(HEAD + b'{"index":0,"delta":{"content":null},"finish_reason":null}]}', id="null text"),
    pytest.param(HEAD + b'{"index":0,"delta":{"content":"x","refusal":null}}]}', id="more in the delta"),
    pytest.param(HEAD + b'{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}',
                 id="tool call"),
    pytest.param(content(b"x", b'}],"usage":{"prompt_tokens":1}}'), id="usage"),
    pytest.param(content(b"x", b'}],"error":{"message":"boom"}}'), id="error"),
    pytest.param(HEAD + b'{"index":1,"delta":{"content":"x"}}]}', id="second choice's index"),
    pytest.param(HEAD + b'{"delta":{"content":"x"}},{"delta":{"content":"y"}}]}', id="two choices"),
    pytest.param(HEAD + b']}', id="no choice"),
    pytest.param(b'{"choices":[{"index":0}]}', id="no delta"),
    pytest.param(b'{"choices":[{"delta":"x"}]}', id="delta not an object"),
    pytest.param(b'{"choices":[{"delta":{"content":1}}]}', id="text not a string"),
    pytest.param(b'{"choices":{"delta":{"content":"x"}}}', id="choices not a list"),
    pytest.param(b'{"id":"x"}', id="no choices"),
    pytest.param(b"{}", id="empty object"),
])
def test_none_for_a_chunk_that_is_more_than_text(deltas: ModuleType, data: bytes) -> None:
    assert parsed(data) in (None, REFUSED)
    assert deltas.text_delta(data) is None


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"[DONE]", id="done"),
    pytest.param(b'["x"]', id="an array"),
    pytest.param(content(b"x")[:-1], id="unclosed"),
    pytest.param(content(b"x") + b"}", id="trailing brace"),
    pytest.param(content(b"x") + b"\x00", id="trailing NUL"),
    pytest.param(b"\xef\xbb\xbf" + content(b"x"), id="BOM"),
    pytest.param(b'{"choices":[{"delta":{"content":"x"},}]}', id="trailing comma"),
    pytest.param(b'{"choices":[{"delta":{"content":"x"}}],}', id="trailing comma at the top"),
    pytest.param(b'{"a":01,"choices":[{"delta":{"content":"x"}}]}', id="leading zero"),
    pytest.param(b'{"a":1.,"choices":[{"delta":{"content":"x"}}]}', id="bare point"),
    pytest.param(b'{"a":-,"choices":[{"delta":{"content":"x"}}]}', id="bare minus"),
    pytest.param(b'{"a":NaN,"choices":[{"delta":{"content":"x"}}]}', id="NaN"),
    pytest.param(b'{"a":nul,"choices":[{"delta":{"content":"x"}}]}', id="cut literal"),
    pytest.param(b'{"a" 1,"choices":[{"delta":{"content":"x"}}]}', id="no colon"),
    pytest.param(b'{"a":1 "choices":[{"delta":{"content":"x"}}]}', id="no comma"),
    pytest.param(b"{'choices':[{'delta':{'content':'x'}}]}", id="single quotes"),
    pytest.param(content(b"\\ud800"), id="lone high surrogate"),
    pytest.param(content(b"\\udc00x"), id="lone low surrogate"),
    pytest.param(content(b"\\ud800\\u0041"), id="high surrogate then no low one"),
    pytest.param(content(b"\\ud800\\n"), id="high surrogate then another escape"),
    pytest.param(content(b"\\u12"), id="short unicode escape"),
    pytest.param(content(b"\\u12g4"), id="unicode escape not hex"),
    pytest.param(content(b"\\x41"), id="unknown escape"),
    pytest.param(content(b"\\"), id="backslash at the end"),
    pytest.param(content(b"a\nb"), id="raw newline"),
    pytest.param(content(b"a\x00b"), id="raw NUL"),
    pytest.param(content(b"\xff"), id="not UTF-8"),
    pytest.param(content(b"\xc3"), id="cut UTF-8"),
    pytest.param(content(b"\xed\xa0\x80"), id="UTF-8 surrogate"),
    pytest.param(content(b"\xc0\xaf"), id="overlong UTF-8"),
    pytest.param(b'{"a":"\x01","choices":[{"delta":{"content":"x"}}]}', id="raw control outside the text"),
])
def test_none_for_what_orjson_refuses(deltas: ModuleType, data: bytes) -> None:
    assert parsed(data) is REFUSED
    assert deltas.text_delta(data) is None


@pytest.mark.parametrize("data", [
    pytest.param(b'{"ch\\u006fices":[{"delta":{"content":"x"}}]}', id="escaped key"),
    pytest.param(b'{"choices":[{"\\u0064elta":{"content":"x"}}]}', id="escaped choice key"),
    pytest.param(b'{"choices":[{"delta":{"c\\u006fntent":"x"}}]}', id="escaped delta key"),
    pytest.param(b'{"choices":[],"choices":[{"delta":{"content":"x"}}]}', id="choices twice"),
    pytest.param(b'{"usage":{"a":1},"usage":null,"choices":[{"delta":{"content":"x"}}]}', id="usage twice"),
    pytest.param(b'{"error":{"a":1},"error":null,"choices":[{"delta":{"content":"x"}}]}', id="error twice"),
    pytest.param(b'{"choices":[{"delta":{},"delta":{"content":"x"}}]}', id="delta twice"),
    pytest.param(b'{"choices":[{"index":1,"index":0,"delta":{"content":"x"}}]}', id="index twice"),
    pytest.param(b'{"choices":[{"finish_reason":"stop","finish_reason":null,"delta":{"content":"x"}}]}',
                 id="finish twice"),
    pytest.param(b'{"choices":[{"index":false,"delta":{"content":"x"}}]}', id="index false"),
    pytest.param(b'{"choices":[{"index":-0,"delta":{"content":"x"}}]}', id="index -0"),
    pytest.param(b'{"choices":[{"index":0.0,"delta":{"content":"x"}}]}', id="index 0.0"),
    pytest.param(b'{"choices":[{"finish_reason":"","delta":{"content":"x"}}]}', id="finish empty"),
    pytest.param(b'{"a":1e5,"choices":[{"delta":{"content":"x"}}]}', id="exponent"),
    pytest.param(b'{"a":1234567890123456789,"choices":[{"delta":{"content":"x"}}]}', id="long number"),
    pytest.param(b'{"a":"\\ud83d\\ude00","choices":[{"delta":{"content":"x"}}]}', id="surrogates outside the text"),
    pytest.param('{"a":"é","choices":[{"delta":{"content":"x"}}]}'.encode(), id="UTF-8 outside the text"),
    pytest.param(b'{"a":' + b"[" * 32 + b"]" * 32 + b',"choices":[{"delta":{"content":"x"}}]}', id="deep"),
])
def test_none_where_it_cannot_tell_cheaply_though_the_chunk_is_text(deltas: ModuleType, data: bytes) -> None:
    assert parsed(data) == "x"
    assert deltas.text_delta(data) is None


def test_nesting_just_inside_the_limit_is_read(deltas: ModuleType) -> None:
    data = b'{"a":' + b"[" * 31 + b"]" * 31 + b',"choices":[{"delta":{"content":"x"}}]}'
    assert deltas.text_delta(data) == "x"


def test_any_bytes_like_object_is_read_as_bytes(deltas: ModuleType) -> None:
    assert deltas.text_delta(bytearray(content(b"x"))) == "x"
    assert deltas.text_delta(memoryview(content(b"y"))) == "y"


# --- properties ---------------------------------------------------------------------------------------------------

# Field values of a chunk: ints, short floats, ASCII and BMP strings, literals, nested lists and objects.
_bmp = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=8)
_leaf = st.none() | st.booleans() | st.integers(-10**15, 10**15) | _bmp \
    | st.decimals(-1000, 1000, places=3, allow_nan=False).map(float)
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_bmp, inner, max_size=3),
                      max_leaves=8)
_fields = st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), _value, max_size=6)


@st.composite
def text_chunks(draw: st.DrawFn) -> tuple[bytes, str]:
    """A text-only chunk as some upstream writes it (orjson, or Python's json with escapes and spaces), and its text."""
    text = draw(st.text(min_size=1, max_size=30))
    choice: dict[str, Any] = {"delta": {"content": text}}
    for name, value in (("index", 0), ("finish_reason", None), ("logprobs", None)):
        if draw(st.booleans()):
            choice[name] = value
    doc = {name: value for name, value in draw(_fields).items() if name not in ("choices", "usage", "error")}
    doc["choices"] = [choice]
    if draw(st.booleans()):
        doc["usage"] = None
    doc = dict(draw(st.permutations(list(doc.items()))))
    if draw(st.booleans()) and orjson.dumps({**doc, "choices": None}).isascii():  # orjson writes UTF-8 as it is
        return orjson.dumps(doc), text
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]))
    return json.dumps(doc, separators=separators, ensure_ascii=True).encode(), text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text_chunks())
def test_every_text_chunk_an_upstream_writes_is_read(deltas: ModuleType, chunk: tuple[bytes, str]) -> None:
    data, text = chunk
    assert deltas.text_delta(data) == text


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A chunk with a few bytes changed, cut out or put in: the framing tricks and control bytes of an adversary."""
    data = bytearray(draw(text_chunks())[0])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b'{}[]",:\\ \x00\x01\n\x7f\x80\xc3\xe9\xff0e-.tnu') | st.integers(0, 255))
        action = draw(st.sampled_from(("put", "change", "cut")))
        if action == "put" or where == len(data):
            data[where:where] = bytes([byte])
        elif action == "change":
            data[where] = byte
        else:
            del data[where]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged())
def test_a_text_is_only_ever_what_the_full_parse_reads(deltas: ModuleType, data: bytes) -> None:
    text = deltas.text_delta(data)
    if text is not None:
        assert parsed(data) == text


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged())
def test_the_compiled_module_and_its_twin_agree(deltas: ModuleType, deltas_other: ModuleType, data: bytes) -> None:
    assert deltas.text_delta(data) == deltas_other.text_delta(data)


# --- runs -----------------------------------------------------------------------------------------------------------

class Event:
    """An event as the relay has it: its data (None for one that carried none, a comment)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data


def run_by_hand(deltas: ModuleType, events: list[Event], start: int) -> tuple[str | None, int]:
    """`text_run` as `text_delta` one event at a time."""
    texts = []
    at = start
    while at < len(events) and events[at].data is not None:
        text = deltas.text_delta(events[at].data)
        if text is None:
            break
        texts.append(text)
        at += 1
    return ("".join(texts) if texts else None), (at if texts else start)


_event_data = st.one_of(text_chunks().map(lambda chunk: chunk[0]), damaged(), st.none(),
                        st.sampled_from([b"[DONE]", b'{"choices":[],"usage":{"prompt_tokens":1}}', b""]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_event_data, max_size=8), st.integers(0, 9))
def test_a_run_is_its_events_texts_joined(deltas: ModuleType, data: list[bytes | None], start: int) -> None:
    events = [Event(item) for item in data]
    start = min(start, len(events))
    assert deltas.text_run(events, start) == run_by_hand(deltas, events, start)


def test_a_run_stops_at_the_first_event_that_is_not_text(deltas: ModuleType) -> None:
    events = [Event(content(b"a")), Event(content(b"b")), Event(None), Event(content(b"c")), Event(b"[DONE]")]
    assert deltas.text_run(events, 0) == ("ab", 2)
    assert deltas.text_run(events, 2) == (None, 2)
    assert deltas.text_run(events, 3) == ("c", 4)
    assert deltas.text_run(events, 4) == (None, 4)
    assert deltas.text_run(events, 5) == (None, 5)
    with pytest.raises(ValueError):
        deltas.text_run(events, -1)
