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

from clexproxy.errors import ApiError
from clexproxy.fastpath.sse import SSEEvent, SSEParser
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.chunks import Chunk, StreamDecoder, StreamEncoder, UpstreamEventError
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
        out: list[bytes] = []
        try:
            self._chunks(self.decoder.close(), out)
        except UpstreamEventError as exc:
            self.failure = self.reply.midstream_error(exc.error)
            return b""
        if self.decoder.done:
            self.finished = True
            out.append(self.encoder.end())
        return b"".join(out)

    def cut(self) -> None:
        """The stream ended before it was whole (the client left, the upstream failed): record the usage the
        provider reported so far, if it reported any before the end it never sent."""
        usage = self.decoder.reported_usage()
        if usage is not None:
            read_usage(usage, self.outcome)

    def _events(self, events: list[SSEEvent]) -> bytes:
        """The client's bytes for `events`: pieces gathered in a list and joined once (a whole answer often
        arrives in one read, and growing one bytes object event by event would copy it over and over)."""
        out: list[bytes] = []
        decoder = self.decoder
        for event in events:
            try:
                chunks = decoder.feed(event)
            except UpstreamEventError as exc:
                self.failure = self.reply.midstream_error(exc.error)
                break
            if chunks:
                self._chunks(chunks, out)
            if decoder.done:
                self.finished = True
                out.append(self.encoder.end())
                break
        return b"".join(out)

    def _chunks(self, chunks: list[Chunk], out: list[bytes]) -> None:
        outcome = self.outcome
        encode = self.encoder.chunk
        model = self.model
        for chunk in chunks:
            usage = chunk.get("usage")
            if usage is not None:
                read_usage(usage, outcome)
            chunk["model"] = model
            data = encode(chunk)
            if data:
                out.append(data)
                outcome.answer_started = True
