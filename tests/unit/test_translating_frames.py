"""`TranslatingFrames`: provider events to chat chunks to the client's events, on exact bytes.

A read's run of text-only chunks goes out as one event with their text; everything else (the
role, tool calls, the finish, usage) one event a chunk; usage is metered on the way; an error
event ends the answer after the events before it; a stream cut short records the usage its
provider reported.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from clexproxy.catalog import Deployment, Model, Provider
from clexproxy.fastpath.sse import SSEParser
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.anthropic_wire import AnthropicDecoder
from clexproxy.protocols.chunks import ChatEncoder, OpenAIDecoder
from clexproxy.protocols.messages_stream import MessagesEncoder
from clexproxy.protocols.responses_stream import ResponsesEncoder
from clexproxy.translating_frames import TranslatingFrames
from clexproxy.upstream.failures import Scrubber
from clexproxy.upstream.pool import UpstreamReply

MODEL = Model("clex/m", "cheap", 8192, 1024, (Deployment("p", "upstream-m"),))


def reply(format_name: str = "openai") -> UpstreamReply:
    provider = Provider("p", "http://127.0.0.1:9", format=format_name)  # type: ignore[arg-type]
    return UpstreamReply(None, MODEL, MODEL.deployments[0], provider, False, Scrubber((), ()),  # type: ignore[arg-type]
                         parser=SSEParser())


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> bytes:
    doc: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "upstream-m",
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        doc["usage"] = usage
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def events(raw: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def test_a_run_of_text_in_one_read_is_one_event_and_usage_is_metered() -> None:
    outcome = CallOutcome("/chat/completions", 0.0)
    frames = TranslatingFrames(reply(), OpenAIDecoder(), ChatEncoder(wants_usage=True), outcome)
    read = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "a "}) + chunk({"content": "b "})
            + chunk({"content": "c"}) + chunk({}, "stop") + chunk(None, usage={"prompt_tokens": 3,
                                                                               "completion_tokens": 3})
            + b"data: [DONE]\n\n")
    out = frames.feed(read)
    assert frames.finished and frames.failure is None and outcome.answer_started
    assert [e["choices"] for e in events(out)] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "a b c"}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        [],
    ]
    assert all(e["model"] == "clex/m" for e in events(out))  # the catalog id, not the upstream's name
    assert out.endswith(b"data: [DONE]\n\n")
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (3, 3)


def test_text_in_separate_reads_stays_separate() -> None:
    outcome = CallOutcome("/chat/completions", 0.0)
    frames = TranslatingFrames(reply(), OpenAIDecoder(), ChatEncoder(wants_usage=False), outcome)
    first = frames.feed(chunk({"content": "a"}))
    second = frames.feed(chunk({"content": "b"}))
    assert [e["choices"][0]["delta"] for e in events(first + second)] == [{"content": "a"}, {"content": "b"}]


def test_an_error_event_ends_the_answer_after_the_events_before_it() -> None:
    outcome = CallOutcome("/chat/completions", 0.0)
    frames = TranslatingFrames(reply(), OpenAIDecoder(), ChatEncoder(wants_usage=False), outcome)
    out = frames.feed(chunk({"content": "a"}) + b'data: {"error": {"message": "boom at http://x.test"}}\n\n'
                      + chunk({"content": "never"}))
    assert [e["choices"][0]["delta"] for e in events(out)] == [{"content": "a"}]
    assert frames.failure is not None and not frames.finished
    assert frames.failure.message == "The provider for model 'clex/m' failed mid-stream: boom at [redacted-url]"


def test_a_cut_stream_records_the_usage_the_provider_reported() -> None:
    outcome = CallOutcome("/chat/completions", 0.0)
    frames = TranslatingFrames(reply("anthropic"), AnthropicDecoder("clex/m"), ChatEncoder(wants_usage=False),
                               outcome)
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 11, "output_tokens": 1}}}
    frames.feed(b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n")
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (0, 0)
    assert frames.closed() == b"" and not frames.finished  # a Messages stream ends only at message_stop
    frames.cut()
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (11, 1)


class FullParse(OpenAIDecoder):
    """Every event parsed whole, none read as bare text (`text_delta`): what the stream was before it."""

    def feed_all(self, events: list[Any], out: list[Any]) -> None:
        for event in events:
            super().feed_all([event], out)
            self.started = False


def translated(decoder: OpenAIDecoder, encoder: Any, raw: bytes, size: int) -> tuple[bytes, tuple[int, int]]:
    outcome = CallOutcome("/responses", 0.0)
    frames = TranslatingFrames(reply(), decoder, encoder, outcome)
    out = b"".join(frames.feed(raw[i : i + size]) for i in range(0, len(raw), size))
    assert frames.finished
    return re.sub(rb"msg_[0-9A-Za-z]+", b"msg_X", out), (outcome.prompt_tokens, outcome.completion_tokens)


def counter() -> Callable[[str], str]:
    numbers = itertools.count()
    return lambda prefix: f"{prefix}{next(numbers)}"


@pytest.mark.parametrize("size", [1, 13, 200, 1400, 1 << 20])
@pytest.mark.parametrize("client", ["responses", "messages"])
def test_text_read_bare_makes_the_same_bytes_as_the_full_parse(client: str, size: int) -> None:
    pieces = ["Hel", "lo", ", ", "caf\xe9", " \U0001f600", ' "quoted"\n', "\\", "\x00", "日本"]
    raw = chunk({"role": "assistant", "content": ""})
    for i, text in enumerate(pieces):  # as orjson writes it (UTF-8) and as Python's json does (escapes)
        doc = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "upstream-m",
               "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}
        raw += b"data: " + (orjson.dumps(doc) if i % 2 else json.dumps(doc).encode()) + b"\n\n"
    raw += chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": "{}"}}]})
    raw += chunk({"content": "after"}) + chunk({"content": " the call"}) + chunk({}, "stop")
    raw += chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 9}) + b"data: [DONE]\n\n"

    def encoder() -> Any:
        return ResponsesEncoder(b"", "clex/m", counter()) if client == "responses" else MessagesEncoder("clex/m")

    bare = translated(OpenAIDecoder(), encoder(), raw, size)
    assert bare == translated(FullParse(), encoder(), raw, size)
    assert bare[1] == (5, 9)
