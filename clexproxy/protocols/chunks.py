"""The one shape every translation meets in: OpenAI's chat completion and its stream chunks, as dicts.

Why a middle shape: clexproxy speaks four client protocols (chat completions, Responses,
Anthropic Messages, legacy completions) and three provider formats (OpenAI, Anthropic, Gemini).
Translating each pair directly would be twelve translations; through chat completions it is one
per protocol each way. A provider format's `StreamDecoder` turns its SSE events into chat
chunks; a client protocol's `StreamEncoder` turns chat chunks into its SSE events. The usual
pair, an OpenAI provider and a chat client, uses neither: its bytes are relayed as they came
(`Frames`).

A chat chunk here is what OpenAI's `chat.completion.chunk` is: `{"id", "object", "created",
"model", "choices": [{"index", "delta": {"role"?, "content"?, "tool_calls"?: [{"index", "id"?,
"type"?, "function": {"name"?, "arguments"?}}]}, "finish_reason"}], "usage"?}`; the last chunk
of a decoded stream carries `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`)
with empty `choices`, as OpenAI sends it under `stream_options.include_usage`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from clexproxy.errors import ApiError
from clexproxy.fastpath.deltas import text_run
from clexproxy.fastpath.sse import SSEEvent

Chunk = dict[str, Any]
# What a decoder gives: a chat chunk, or the text of a text-only chunk (what `text_only` would
# give for it) in place of the chunk, which a decoder may give only once it has given a chunk.
# By then the client's encoder has opened its stream, and of a text-only chunk it reads only the
# text. (Only `OpenAIDecoder` gives bare text, and its streams are translated only for clients
# that do not speak chat completions: `ChatEncoder`, which writes chunks back whole, meets it in
# tests alone.)
Piece = Chunk | str

DONE_EVENT = b"data: [DONE]\n\n"

# The random part of the ids a translated answer names itself by ("resp_…", "msg_…", "toolu_…"): unique,
# not secret (no id here is a capability: nothing is stored under it). A seeded generator, not the
# OS's randomness: `secrets` made one system call per id, a tenth of a Responses call's translation.
# Each worker reseeds after its fork, so workers never share a sequence.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


MAX_TOKEN_COUNT = 9_007_199_254_740_991  # 2**53 - 1, JSON's largest exact integer


def token_count(value: Any) -> int:
    """A usage count an upstream sent, as a translated answer may say it: a JSON integer (not a boolean)
    in [0, 2**53], else 0. A negative count, or one JSON cannot hold exactly, is the upstream's error."""
    return value if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT else 0


def random_hex(digits: int) -> str:
    """`digits` random hex digits (a multiple of 2), for an answer's id."""
    return _ids.getrandbits(digits * 4).to_bytes(digits // 2).hex()


class UpstreamEventError(Exception):
    """A provider's stream said, inside a 200 answer, that it failed: `error` is its error object.

    The relay replaces it with SPEC's error (`UpstreamReply.midstream_error`): the provider's
    own words may name its URL or credential, so they never reach the client unscrubbed.
    """

    def __init__(self, error: Any) -> None:
        super().__init__("the upstream stream carried an error event")
        self.error = error


def first_choice(doc: Chunk) -> tuple[dict[str, Any], dict[str, Any]]:
    """A chat completion's first choice and its message (each empty when it has none): what a translated
    JSON answer reads (the gateway never asks for n > 1)."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    return choice, message if isinstance(message, dict) else {}


def text_only(chunk: Chunk) -> str | None:
    """The text of a chunk that is one more piece of the answer's text and nothing else (no role, tool call,
    finish reason or usage): most chunks of most streams. None for any other chunk."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None:
        return None
    choice = choices[0]
    delta = choice.get("delta") if type(choice) is dict else None
    if type(delta) is not dict or len(delta) != 1 or choice.get("finish_reason") or choice.get("index"):
        return None
    content = delta.get("content")
    return content if type(content) is str and content else None


def feed_each(decoder: StreamDecoder, events: list[SSEEvent], out: list[Piece]) -> None:
    """`StreamDecoder.feed_all` by way of `feed`, for a decoder with no faster way."""
    for event in events:
        if decoder.done:
            return
        chunks = decoder.feed(event)
        if chunks:
            out.extend(chunks)


def event_doc(data: bytes) -> dict[str, Any]:
    """A provider's SSE data as the JSON object every format's events are; `UpstreamEventError` when it is not one."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamEventError({"message": "an event that is not JSON"}) from None
    if not isinstance(doc, dict):
        raise UpstreamEventError({"message": "an event that is not a JSON object"})
    return doc


class StreamDecoder(Protocol):
    """One provider stream's events, as chat chunks (a provider format's side of a translation)."""

    # True once the provider said the answer is whole (OpenAI's `[DONE]`, Anthropic's `message_stop`).
    done: bool

    def feed(self, event: SSEEvent) -> Sequence[Piece]:
        """The chat chunks `event` stands for (often none); raises `UpstreamEventError` for an error event."""
        ...

    def feed_all(self, events: list[SSEEvent], out: list[Piece]) -> None:
        """`feed` for each of one read's `events`, appending to `out`, stopping once `done`: one call per read.

        Raises `UpstreamEventError` at an error event, the chunks of the events before it already in `out`.
        """
        ...

    def close(self) -> list[Chunk]:
        """The provider's body ended: the last chunks, setting `done` when that end is a complete answer
        (Gemini's streams have no end marker: a body that ends after a finish reason is whole)."""
        ...

    def reported_usage(self) -> dict[str, Any] | None:
        """The usage the provider has reported so far, in chat's names (None: none yet).

        Read only when a stream is cut (the client left, the upstream dropped or failed): Anthropic
        reports the prompt's tokens at the start and Gemini with every frame, so a cut call still
        records what the provider said it used.
        """
        ...


class StreamEncoder(Protocol):
    """One client's SSE, from chat chunks (a client protocol's side of a translation).

    Every method returns the bytes to send, whole events only (b"" when there are none).
    """

    def chunk(self, chunk: Chunk) -> bytes:
        """The events for one chat chunk; the first call also sends the protocol's opening events."""
        ...

    def end(self) -> bytes:
        """The answer is whole: the closing events (with the usage the chunks carried)."""
        ...

    def error(self, error: ApiError) -> bytes:
        """The answer failed after it started: the protocol's error event, ending the stream."""
        ...


class ChatEncoder:
    """Chat completions' own SSE, for a chat client whose provider does not speak OpenAI.

    The usage chunk goes out only when the client asked for it (`stream_options.include_usage`),
    as with an OpenAI provider.
    """

    __slots__ = ("wants_usage",)

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage

    def chunk(self, chunk: Chunk) -> bytes:
        if chunk.get("usage") is not None and not chunk.get("choices"):
            if not self.wants_usage:
                return b""
        elif not self.wants_usage and "usage" in chunk:
            chunk = {name: value for name, value in chunk.items() if name != "usage"}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def end(self) -> bytes:
        return DONE_EVENT

    def error(self, error: ApiError) -> bytes:
        return b"data: " + error.to_bytes() + b"\n\n" + DONE_EVENT


class OpenAIDecoder:
    """An OpenAI-format stream's events as chat chunks: each data event parsed, `[DONE]` its end.

    Used only when the client does not speak chat completions (a chat client's OpenAI stream is
    relayed as bytes). `feed_all`, the relay's, is `feed` written out in one loop: every event
    of a translated OpenAI stream goes through it. After the first chunk, an event that is one
    more piece of text is given as its text (`text_run`, which reads it without parsing it):
    most events of a stream. A run of them, as a fast upstream's read brings, is one piece of
    their texts joined: the client is sent them as one event either way (`TranslatingFrames`).
    """

    __slots__ = ("done", "started")

    def __init__(self) -> None:
        self.done = False
        self.started = False  # whether a chunk was given: text may be given bare from then on (`Piece`)

    def feed(self, event: SSEEvent) -> list[Piece]:
        out: list[Piece] = []
        self.feed_all([event], out)
        return out

    def feed_all(self, events: list[SSEEvent], out: list[Piece]) -> None:
        loads = orjson.loads
        at, count = 0, len(events)
        while at < count and not self.done:
            if self.started:
                text, at = text_run(events, at)  # the run of text-only events from here, as one piece
                if text is not None:
                    out.append(text)
                    continue
            data = events[at].data
            at += 1
            if data is None:
                continue
            if data == b"[DONE]":
                self.done = True
                return
            try:
                doc = loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamEventError({"message": "an event that is not JSON"}) from None
            if type(doc) is not dict:
                raise UpstreamEventError({"message": "an event that is not a JSON object"})
            if doc.get("error") is not None:
                raise UpstreamEventError(doc["error"])
            out.append(doc)
            self.started = True

    def close(self) -> list[Chunk]:
        return []

    def reported_usage(self) -> dict[str, Any] | None:
        return None  # OpenAI reports usage in its last chunk only


class Translation(Protocol):
    """One call in a client protocol (Responses, Messages), put onto chat completions and its answer put back.

    Built by the protocol's `translate(body)` from the client's parsed JSON body, which raises
    `InvalidRequest` (naming the field) for what is malformed or not supported. The handler routes
    `model`, admits the call, sends `body`, and gives the answer back to `answer` (a JSON answer)
    or to `encoder()`'s encoder (a stream).
    """

    model: str  # the catalog id the client asked for
    stream: bool  # the client asked for SSE (absent means False in both protocols)
    body: dict[str, Any]  # the chat-completions body to send (with "model" and "stream")

    def answer(self, doc: Chunk) -> bytes:
        """The client's JSON answer, from the chat completion (a `chat.completion` dict, with `usage`)."""
        ...

    def encoder(self) -> StreamEncoder:
        """A new encoder of this call's stream."""
        ...


class WireFormat(Protocol):
    """A provider format (`Provider.format`): how a chat-completions call is asked of it and answered.

    The pool asks `path`, `auth_headers` and `payload` for each attempt, `check_first` of a stream's
    first data event; the pool turns a JSON answer into a chat completion with `answer`, and the
    relay a stream's events into chat chunks with `decoder()`. Error answers (non-200) are read by
    the pool's `classify`, whichever the format: OpenAI's, Anthropic's and Google's error bodies
    all carry an `error` object with a `message`.
    """

    name: str

    def path(self, endpoint: str, upstream_model: str, stream: bool) -> str:
        """The path after the provider's `base_url` ("/chat/completions" → "/messages", say)."""
        ...

    def auth_headers(self, credential: str) -> dict[str, str]:
        """The request headers that carry the provider's credential (and any fixed version header)."""
        ...

    def payload(self, body: dict[str, Any], upstream_model: str) -> bytes:
        """The provider's request body from a chat-completions body (whose "stream" says which kind).

        Raises `InvalidRequest` for a field the provider cannot honour (naming it), never silently drops
        one that changes the answer.
        """
        ...

    def check_first(self, data: bytes) -> None:
        """A stream's first data event: raises an `ApiError` when it is a refusal to answer (a safety
        block: not retried, a clear 4xx), returns when it starts an answer."""
        ...

    def answer(self, doc: dict[str, Any], model_id: str) -> Chunk:
        """The chat completion (`object` "chat.completion", `model` = `model_id`, `usage`) from the provider's
        JSON answer; raises an `ApiError` for a refusal to answer."""
        ...

    def decoder(self, model_id: str) -> StreamDecoder:
        """A new decoder of one stream of this format, naming `model_id` in its chunks."""
        ...
