"""The relay's per-chunk decisions: a whole answer in one read and the same answer byte by byte agree."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
import pytest

from clexproxy.catalog import default_catalog
from clexproxy.outcome import CallOutcome
from clexproxy.sse_frames import Frames
from clexproxy.upstream.failures import Scrubber
from clexproxy.upstream.pool import UpstreamReply


def answer(chunks: int = 5) -> bytes:
    def event(doc: dict[str, object]) -> bytes:
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    out = [b": keep-alive\n\n"]
    out += [event({"choices": [{"delta": {"content": f"w{i} "}}], "usage": None}) for i in range(chunks)]
    out.append(event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": chunks}}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def relay(chunks: list[bytes], wants_usage: bool) -> tuple[bytes, CallOutcome, bool]:
    outcome = CallOutcome("/chat/completions", time.monotonic())
    catalog = default_catalog()
    model = catalog.models["meta/llama-3.1-8b-instruct"]
    reply = UpstreamReply(cast(Any, None), model, model.deployments[0], catalog.providers["nvidia"], False,
                          Scrubber((), ()))
    frames = Frames(reply, wants_usage, outcome)
    sent = b"".join(frames.feed(c) for c in chunks)
    return sent, outcome, frames.finished


@pytest.mark.parametrize("wants_usage", [False, True])
def test_one_read_and_byte_by_byte_agree(wants_usage: bool) -> None:
    body = answer()
    whole = relay([body], wants_usage)
    split = relay([body[i : i + 1] for i in range(len(body))], wants_usage)
    assert whole[0] == split[0]
    assert whole[2] is split[2] is True
    for got in (whole[1], split[1]):
        assert got.answer_started and got.prompt_tokens == 3 and got.completion_tokens == 5
    assert (b'"usage":{' in whole[0]) is wants_usage
    if wants_usage:
        assert whole[0] == body


def test_a_chunk_of_comments_only_starts_nothing() -> None:
    sent, outcome, finished = relay([b": keep-alive\n\n"], wants_usage=False)
    assert sent == b": keep-alive\n\n" and not outcome.answer_started and not finished
