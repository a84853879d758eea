"""What of each upstream SSE chunk goes to the client: usage stripping, model renaming, error events.

Streamed chunks are never parsed as JSON except the few events that carry `usage` or an
`"error"` key (one C-level scan of a chunk says whether there is any); events go out as the
exact bytes the upstream sent (`SSEEvent.raw`). The exceptions, all rare: the usage the client
did not ask for is stripped; an error event inside the answer ends the stream with SPEC's error
event instead (`Frames.failure`: the provider's own bytes could carry its URL or credential);
when a deployment's upstream model name is not the catalog id, each event's `model` is rewritten
to the catalog id (never when the names agree, so the usual answer costs nothing more).
`relay.stream` feeds `Frames` each chunk it reads and writes what comes back.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from clexproxy.errors import ApiError, InternalError
from clexproxy.fastpath.sse import SSEEvent, SSEParser, has_usage
from clexproxy.outcome import CallOutcome
from clexproxy.upstream.pool import ERROR_KEY, UpstreamReply

DONE = b"[DONE]"
# A usage object as upstreams spell it (OpenAI's `"usage":null` on every chunk is not one); `has_usage` also
# knows rarer whitespace, and a chunk where it finds usage under neither spelling is looked at event by event.
_USAGE_COMPACT = b'"usage":{'
_USAGE_SPACED = b'"usage": {'
# A `"model": "..."` member (JSON whitespace allowed); in a chunk only the top-level one exists.
_MODEL_FIELD = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*"(?:[^"\\]|\\.)*"')


def read_usage(usage: Any, outcome: CallOutcome) -> None:
    """The token counts of an answer's `usage` object into `outcome` (a count that is not an int counts 0)."""
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        outcome.prompt_tokens = p if isinstance(p, int) else 0
        outcome.completion_tokens = c if isinstance(c, int) else 0


def _carries_nothing(choices: Any) -> bool:
    """Whether a chunk's `choices` say nothing once its usage is gone (LiteLLM's `[{"index": 0, "delta": {}}]`)."""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        for name, value in choice.items():
            if name == "index" or not value:
                continue
            if name == "delta" and isinstance(value, dict) and not any(value.values()):
                continue
            return False
    return True


class Frames:
    """Decides, event by event, what of an upstream chunk goes to the client.

    `finished` once `[DONE]` is in; `failure` once the answer must end in an error event (an
    upstream error event, a usage chunk that is not JSON): the bytes returned with it are the
    events before it, which the client still gets.
    """

    __slots__ = ("failure", "finished", "outcome", "parser", "rename", "reply", "wants_usage")

    def __init__(self, reply: UpstreamReply, wants_usage: bool, outcome: CallOutcome) -> None:
        self.parser = reply.parser or SSEParser()
        self.reply = reply
        self.wants_usage = wants_usage
        self.outcome = outcome
        self.finished = False
        self.failure: ApiError | None = None
        self.rename: bytes | None = None  # the replacement `"model":"<catalog id>"`, when the upstream's name differs
        if reply.deployment.model != reply.model.id:
            self.rename = (b'"model":' + orjson.dumps(reply.model.id)).replace(b"\\", b"\\\\")

    def first(self, received: bytes, events: list[SSEEvent]) -> bytes:
        """The bytes to relay for what `send` read (`events` parsed from `received`, from the stream's start)."""
        if self.parser.pending == 0:
            return self._whole(received, events)
        out: list[bytes] = []
        self._each(events, out)
        return b"".join(out)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay for `chunk`: the chunk itself when it holds whole events only and none is dropped."""
        parser = self.parser
        aligned = parser.pending == 0
        events = parser.feed(chunk)
        if aligned and parser.pending == 0:
            return self._whole(chunk, events)
        out: list[bytes] = []
        self._each(events, out)
        return out[0] if len(out) == 1 else b"".join(out)

    def closed(self) -> bytes:
        """The upstream's body ended: an OpenAI stream is whole only at `[DONE]`, so this adds nothing."""
        return b""

    def cut(self) -> None:
        """The stream ended before `[DONE]`: OpenAI reports usage in its last chunk only, so there is none to read."""

    def _each(self, events: list[SSEEvent], out: list[bytes]) -> None:
        """Append to `out` what goes out of `events`, one by one; stops at `[DONE]` or at a failure."""
        rename = self.rename
        for event in events:
            raw = event.raw
            data = event.data
            if data is not None:
                if data == DONE:
                    self.finished = True
                    out.append(raw)
                    return
                usage = has_usage(data)
                if usage or data.find(ERROR_KEY) >= 0:
                    kept = self._marked(raw, data, usage)
                    if self.failure is not None:
                        return
                    if kept is None:
                        continue  # the usage the client did not ask for, and nothing else
                    raw = kept
                elif rename is not None:
                    raw = _MODEL_FIELD.sub(rename, raw)
                self.outcome.answer_started = True
            out.append(raw)

    def _marked(self, raw: bytes, data: bytes, usage: bool) -> bytes | None:
        """An event holding `"error"` or usage: what goes out of it (None: nothing); sets `failure` to end here."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            if usage:
                self.failure = InternalError("The upstream sent a malformed usage chunk.", error_type="upstream_error")
                return None
            doc = None  # text that merely mentions "error"
        if not isinstance(doc, dict):
            return raw if self.rename is None else _MODEL_FIELD.sub(self.rename, raw)
        error = doc.get("error")
        if error is not None:
            self.failure = self.reply.midstream_error(error)
            return None
        if usage:
            read_usage(doc.get("usage"), self.outcome)
            if not self.wants_usage:
                choices = doc.get("choices")
                if not choices or _carries_nothing(choices):
                    return None
                del doc["usage"]
                if self.rename is not None and "model" in doc:
                    doc["model"] = self.reply.model.id
                return b"data: " + orjson.dumps(doc) + b"\n\n"
        return raw if self.rename is None else _MODEL_FIELD.sub(self.rename, raw)

    def _whole(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """A chunk of whole events: visit only the few that matter instead of all of them.

        Most chunks hold neither `[DONE]`, usage nor an error, and C-level scans of the chunk say so
        (a chunk of one event, the usual read, is `[DONE]` only as its last event): it goes out as it
        came. `find`, not `in`: bytes' `in` first tries its operand as an int (an error raised and
        cleared, costlier than the scan).
        """
        if not events:
            return chunk
        if (events[-1].data == DONE or has_usage(chunk) or chunk.find(ERROR_KEY) >= 0
                or (len(events) > 1 and chunk.find(DONE) >= 0)):
            return self._marked_chunk(chunk, events)
        if not self.outcome.answer_started:
            for event in events:
                if event.data is not None:
                    self.outcome.answer_started = True
                    break
        return chunk if self.rename is None else _MODEL_FIELD.sub(self.rename, chunk)

    def _marked_chunk(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """A chunk of whole events with `[DONE]`, usage or an error among them (a whole answer in one read, say).

        The usage event and `[DONE]` sit at its end: the events before the first that needs a look
        go out as they came; that one and those after it are looked at one by one. What follows
        `[DONE]` carries nothing for the client and is cut.
        """
        n = len(events)
        k = n
        while k:
            k -= 1
            if events[k].data == DONE:
                if k + 1 < n:
                    chunk = chunk[: len(chunk) - _size(events, k + 1, n)]
                    n = k + 1
                break
        i = n  # events[i:n] need a look, one by one
        usage = has_usage(chunk)
        error_at = chunk.find(ERROR_KEY)
        if usage or error_at >= 0:
            first = _first_mark(chunk, usage, error_at)
            start = len(chunk)  # where events[i] starts
            while i and start > first:
                i -= 1
                start -= len(events[i].raw)
        if i == n:  # `[DONE]` is the only mark: it comes last, after the rest
            i -= 1
        head = chunk[: len(chunk) - _size(events, i, n)]
        if i:
            if not self.outcome.answer_started:
                for k in range(i):
                    if events[k].data is not None:
                        self.outcome.answer_started = True
                        break
            if self.rename is not None:
                head = _MODEL_FIELD.sub(self.rename, head)
        out = [head] if head else []
        self._each(events[i:n], out)
        return out[0] if len(out) == 1 else b"".join(out)


def _first_mark(chunk: bytes, usage: bool, error_at: int) -> int:
    """The offset of the first usage object or `"error"` key (at `error_at`, -1: none) in `chunk`.

    0 when `has_usage` found usage in neither common spelling: then every event gets a look.
    """
    if usage:
        first = chunk.find(_USAGE_COMPACT)  # an upstream spells every chunk alike: one spelling per chunk
        if first < 0:
            first = chunk.find(_USAGE_SPACED)
            if first < 0:
                return 0
        return error_at if 0 <= error_at < first else first
    return error_at


def _size(events: list[SSEEvent], start: int, stop: int) -> int:
    size = 0
    for k in range(start, stop):
        size += len(events[k].raw)
    return size
