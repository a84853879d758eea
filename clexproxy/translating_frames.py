"""What of each upstream chunk goes to the client when the two do not speak the same protocol.

`Frames` relays an OpenAI stream's own bytes to a chat client. Every other pair goes through
chat chunks: the provider format's `StreamDecoder` turns its events into chat chunks, the
client protocol's `StreamEncoder` turns those into its events. The chunks' usage is read on
the way (so a Responses or Messages stream is metered from the tokens the upstream reported,
as a chat stream is), and each chunk names the catalog id of the model that answered.

The relay drives both classes alike: `first`, then `feed` per chunk read, `finished` once
the answer is whole, `failure` once it must end in an error event; `closed` when the
upstream's body ends (a Gemini stream has no end marker: its end of body is its end); `cut`
when the stream ends before it is whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from clexproxy.errors import ApiError
from clexproxy.fastpath.sse import SSEEvent, SSEParser
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.chunks import Chunk, Piece, StreamDecoder, StreamEncoder, UpstreamEventError, text_only
from clexproxy.sse_frames import read_usage
from clexproxy.upstream.pool import UpstreamReply


class TranslatingFrames:
    """Decodes a provider's events into chat chunks and encodes them for the client, usage read between."""

    __slots__ = ("decoder", "encoder", "failure", "finished", "model", "outcome", "parser", "reply")

    def __init__(self, reply: UpstreamReply, decoder: StreamDecoder, encoder: StreamEncoder,
                 outcome: CallOutcome) -> None:
        self.parser = reply.parser or SSEParser()
        self.reply = reply
        self.decoder = decoder
        self.encoder = encoder
        self.outcome = outcome
        self.model = reply.model.id
        self.finished = False
        self.failure: ApiError | None = None

    def first(self, received: bytes, events: list[SSEEvent]) -> bytes:
        """The bytes for what `send` read (`events`, parsed from the stream's first bytes)."""
        return self._events(events)

    def feed(self, chunk: bytes) -> bytes:
        return self._events(self.parser.feed(chunk))

    def closed(self) -> bytes:
        """The upstream's body ended: the closing events when that made the answer whole, else nothing."""
        if self.finished or self.failure is not None:
            return b""
        try:
            out = self._encode(self.decoder.close())
        except UpstreamEventError as exc:
            self.failure = self.reply.midstream_error(exc.error)
            return b""
        if self.decoder.done:
            self.finished = True
            out += self.encoder.end()
        return out

    def cut(self) -> None:
        """The stream ended before it was whole (the client left, the upstream failed): record the usage the
        provider reported so far, if it reported any before the end it never sent."""
        usage = self.decoder.reported_usage()
        if usage is not None:
            read_usage(usage, self.outcome)

    def _events(self, events: list[SSEEvent]) -> bytes:
        chunks: list[Piece] = []
        decoder = self.decoder
        try:
            decoder.feed_all(events, chunks)
        except UpstreamEventError as exc:  # the chunks before the error event still go out
            self.failure = self.reply.midstream_error(exc.error)
        out = self._encode(chunks) if chunks else b""
        if self.failure is None and decoder.done:
            self.finished = True
            out += self.encoder.end()
        return out

    def _encode(self, chunks: Sequence[Piece]) -> bytes:
        """The client's bytes for one read's chunks, a run of text-only chunks (`text_only`, or text given
        bare) sent as one.

        A read that brings several pieces of text brought them at once: one event with their text
        tells the client the same, sooner and in fewer bytes, and costs one encoding, not one a piece.
        """
        outcome = self.outcome
        encode = self.encoder.chunk
        model = self.model
        out: list[bytes] = []
        held: Piece | None = None  # the first of a run of text-only chunks, which carries the run's text
        texts: list[str] = []
        for chunk in chunks:
            text = chunk if isinstance(chunk, str) else text_only(chunk)
            if text is not None:
                if held is None:
                    held = chunk
                texts.append(text)
                continue
            if held is not None:
                out.append(self._text_run(held, texts))
                held = None
            assert not isinstance(chunk, str)  # a bare text is text-only
            usage = chunk.get("usage")
            if usage is not None:
                read_usage(usage, outcome)
            chunk["model"] = model
            out.append(encode(chunk))
        if held is not None:
            out.append(self._text_run(held, texts))
        data = b"".join(out)
        if data:
            outcome.answer_started = True
        return data

    def _text_run(self, first: Piece, texts: list[str]) -> bytes:
        text = texts[0] if len(texts) == 1 else "".join(texts)
        texts.clear()
        if isinstance(first, str):  # the encoder has opened: a text-only chunk's text is all it reads
            chunk: Chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        else:
            chunk = first
            chunk["choices"][0]["delta"]["content"] = text
        chunk["model"] = self.model
        return self.encoder.chunk(chunk)
