"""The demo upstream's legacy completions (``POST /v1/completions``), so the gateway's ``/v1/completions`` is tested
on real sockets.

Why: editor autocompletion still speaks OpenAI's legacy completions, and the gateway relays it only for providers
that serve it; the demo upstream has to serve it too, byte for byte as OpenAI frames it. A prompt gets the SAME
answer words and token counts as a chat request whose one user message is that prompt (`plan_chat` decides them),
and the same ``x-demo-*`` knobs apply (`Knobs`: tokens, ttft, delay, drop, status, fail-times, retry-after,
model-missing); errors are OpenAI's shape, rendered by the shared dispatcher.

Modelled
    Request: ``model``; ``prompt`` a string or a non-empty list of strings (one choice per prompt);
    ``max_tokens`` (legacy default 16; caps the answer: ``finish_reason`` ``"length"``); ``n`` (choices per prompt,
    identical, as the demo is deterministic); ``stop`` (a string or up to 4: each choice is cut before its earliest
    match, ``finish_reason`` ``"stop"``; the token holding the match still counts); ``echo`` (the prompt is put
    before the answer); ``suffix`` (a string: it joins the prompt text the answer is seeded by and counted from,
    and is never returned); ``stream`` and ``stream_options.include_usage``. Other sampling fields (temperature,
    top_p, presence/frequency penalties, best_of, logit_bias, seed, user) are accepted and ignored.
    Answer: ``text_completion`` with ``cmpl-demo-N`` ids; choice ``index`` is prompt position * n + copy; usage
    counts every prompt once and every choice's tokens. Stream: one chunk per choice per answer token (echoed
    prompts first), then one chunk per choice with ``""`` and its ``finish_reason``, then the usage chunk
    (``choices`` ``[]``) when asked for, then ``data: [DONE]``; with include_usage every other chunk carries
    ``"usage": null``, as OpenAI's do.
Not modelled (400 naming the field)
    token-array prompts (``prompt`` as integers), ``logprobs`` other than null.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

import orjson
from aiohttp import web

from clexproxy.demo.answers import TOKEN_JSON, plan_chat
from clexproxy.demo.errors import bad_request, optional_bool, positive_int, require_model, require_object
from clexproxy.demo.knobs import Knobs, preflight
from clexproxy.demo.recorder import DemoState, RecordedRequest
from clexproxy.demo.responses import drop_connection, send_body, sleep
from clexproxy.demo.sse import serve_sse

__all__ = ["CompletionsPlan", "plan_completions", "serve_completions"]

LEGACY_DEFAULT_MAX_TOKENS: Final = 16  # OpenAI's default for legacy completions
_MAX_N: Final = 128
_MAX_STOPS: Final = 4
_DONE: Final = b"data: [DONE]\n\n"


@dataclass(slots=True)
class _Choice:
    """One choice: its text pieces (one per generated token, the last maybe cut short), the echo and the ending."""

    echo: str
    pieces: tuple[str, ...]
    finish_reason: str
    tokens: int


@dataclass(slots=True)
class CompletionsPlan:
    """Everything one legacy completions answer needs, streamed or not."""

    completion_id: str
    created: int
    model: str
    choices: tuple[_Choice, ...]
    prompt_tokens: int
    stream: bool
    include_usage: bool

    def usage(self) -> dict[str, int]:
        completion = sum(choice.tokens for choice in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def payload(self) -> bytes:
        choices = [
            {"text": choice.echo + "".join(choice.pieces), "index": index, "logprobs": None,
             "finish_reason": choice.finish_reason}
            for index, choice in enumerate(self.choices)
        ]  # fmt: skip
        return orjson.dumps(
            {"id": self.completion_id, "object": "text_completion", "created": self.created, "model": self.model,
             "choices": choices, "usage": self.usage()}
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------------------------------


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if prompt is None:
        raise bad_request("you must provide a prompt parameter", "missing_required_parameter", "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(item, int | list) for item in prompt):
        raise bad_request("'prompt' as token arrays is not supported by the demo upstream: send text",
                          "unsupported_value", "prompt")  # fmt: skip
    raise bad_request("'prompt' must be a string or a non-empty array of strings", "invalid_type", "prompt")


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > _MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"'stop' must be a non-empty string or an array of at most {_MAX_STOPS} of them",
                          "invalid_value", "stop")  # fmt: skip
    return tuple(stops)


def _optional_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", "invalid_type", name)
    return value


def _stopped(pieces: list[str], stops: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
    """The pieces before the earliest stop and the tokens spent (the one holding the match counts); None: no match."""
    text = "".join(pieces)
    matches = [index for stop in stops if (index := text.find(stop)) >= 0]
    if not matches:
        return None
    cut = min(matches)
    starts = [0, *accumulate(len(piece) for piece in pieces)]
    spent = bisect_right(starts, cut)  # tokens that start at or before the cut: the last holds the match
    kept = list(pieces[: spent - 1])
    partial = text[starts[spent - 1] : cut]
    if partial:
        kept.append(partial)
    return tuple(kept), spent


def plan_completions(state: DemoState, knobs: Knobs, body: dict[str, Any], model: str) -> CompletionsPlan:
    """Validate the legacy fields and decide every choice through `plan_chat`."""
    prompts = _prompts(body)
    if body.get("logprobs") is not None:
        raise bad_request("'logprobs' is not supported by the demo upstream: send null", "unsupported_value",
                          "logprobs")  # fmt: skip
    cap = positive_int(body, "max_tokens", 2**31) or LEGACY_DEFAULT_MAX_TOKENS
    copies = positive_int(body, "n", _MAX_N) or 1
    stops = _stops(body)
    echo = optional_bool(body, "echo")
    suffix = _optional_text(body, "suffix")
    stream = optional_bool(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    choices: list[_Choice] = []
    prompt_tokens = 0
    completion_id = ""
    for prompt in prompts:
        seeded = prompt + suffix if suffix else prompt
        chat = plan_chat(state, knobs, {"messages": [{"role": "user", "content": seeded}], "max_tokens": cap}, model)
        completion_id = completion_id or "cmpl-demo-" + chat.completion_id.rsplit("-", 1)[-1]
        prompt_tokens += chat.prompt_tokens
        pieces = [orjson.loads(TOKEN_JSON[token]) for token in chat.tokens]
        cut = _stopped(pieces, stops) if stops else None
        choice = (_Choice(prompt if echo else "", tuple(pieces), chat.finish_reason, len(pieces)) if cut is None
                  else _Choice(prompt if echo else "", cut[0], "stop", cut[1]))  # fmt: skip
        choices.extend([choice] * copies)
    return CompletionsPlan(completion_id, int(time.time()), model, tuple(choices), prompt_tokens, stream,
                           include_usage)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Answer
# --------------------------------------------------------------------------------------------------------------


class _Frames:
    """Byte pieces of one stream's chunks: each chunk is one choice's text (or ending) between a fixed head and tail."""

    __slots__ = ("_head", "_tail", "_usage")

    def __init__(self, plan: CompletionsPlan) -> None:
        self._head = b'data: {"id":"%s","object":"text_completion","created":%d,"choices":[' % (
            plan.completion_id.encode(), plan.created,
        )  # fmt: skip
        model = orjson.dumps(plan.model)
        self._tail = b'],"model":' + model + (b',"usage":null' if plan.include_usage else b"") + b"}\n\n"
        self._usage = self._head + b'],"model":' + model + b',"usage":' + orjson.dumps(plan.usage()) + b"}\n\n"

    def text(self, index: int, text: str) -> bytes:
        choice = b'{"text":%s,"index":%d,"logprobs":null,"finish_reason":null}' % (orjson.dumps(text), index)
        return self._head + choice + self._tail

    def ending(self, index: int, finish_reason: str) -> bytes:
        choice = b'{"text":"","index":%d,"logprobs":null,"finish_reason":"%s"}' % (index, finish_reason.encode())
        return self._head + choice + self._tail

    def usage(self) -> bytes:
        return self._usage


async def _stream_chunks(
    request: web.Request, response: web.StreamResponse, state: DemoState, recorded: RecordedRequest, knobs: Knobs,
    plan: CompletionsPlan,
) -> bool:  # fmt: skip
    """Write the chunks after the headers; False when the drop knob cut it. Each answer token is one awaited write."""
    frames = _Frames(plan)
    await sleep(knobs.ttft_s)
    echoed = b"".join([frames.text(i, c.echo) for i, c in enumerate(plan.choices) if c.echo])
    if echoed:
        await response.write(echoed)
    longest = max(len(choice.pieces) for choice in plan.choices)
    drop_after = knobs.drop_after
    for position in range(longest):
        if position:
            await sleep(knobs.delay_s)
        if drop_after is not None and position >= drop_after:
            drop_connection(request, response, state.recorder, recorded)
            return False
        await response.write(b"".join([
            frames.text(index, choice.pieces[position])
            for index, choice in enumerate(plan.choices) if position < len(choice.pieces)
        ]))  # fmt: skip
    if drop_after is not None:
        drop_connection(request, response, state.recorder, recorded)
        return False
    endings = b"".join([frames.ending(index, choice.finish_reason) for index, choice in enumerate(plan.choices)])
    await response.write_eof(endings + (frames.usage() if plan.include_usage else b"") + _DONE)
    return True


async def serve_completions(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1/completions``: refusals raise `DemoError`, which the dispatcher renders in OpenAI's shape."""
    checked = require_object(body)
    model = require_model(checked)
    plan = plan_completions(state, knobs, checked, model)
    preflight(state, knobs, model)
    if plan.stream:
        return await serve_sse(request, state, recorded,
                               lambda response: _stream_chunks(request, response, state, recorded, knobs, plan))
    return await send_body(request, state, recorded, knobs, plan.payload())
