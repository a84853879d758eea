"""The demo upstream's deterministic answers: the same request always gets the same words and token counts.

A chat answer is N words drawn from a fixed vocabulary by a generator seeded with the prompt's text
(`ChatPlan` holds everything one answer needs, streamed or not); the model list is fixed
(`DEMO_MODELS`). Benchmark-typical answers are cached, huge ones are not, so memory stays bounded.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson

from clexproxy.demo.errors import bad_request, optional_bool, positive_int
from clexproxy.demo.knobs import Knobs
from clexproxy.demo.recorder import DemoState

DEMO_MODELS: tuple[str, ...] = (
    "meta/llama-3.1-8b-instruct",
    "meta/llama-3.3-70b-instruct",
    "mistralai/mixtral-8x7b-instruct-v0.1",
    "nvidia/nv-embedqa-e5-v5",
)
_MODELS_CREATED: Final = 1_700_000_000
_CACHED_TOKENS_MAX: Final = 2048  # answer-cache bounds keep worst-case cache memory to a few MB

# The answer vocabulary. Every token is one word plus a space, so a completion of N tokens has N words.
_WORDS: Final = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basalt", "cobalt", "dune", "ember", "fjord",
    "granite", "harbor", "islet", "jade", "kelp", "lagoon", "meadow", "nebula",
    "onyx", "prairie", "quartz", "ridge", "summit", "tundra", "umber", "valley",
    "willow", "xenon", "yarrow", "zephyr", "anchor", "beacon", "canyon", "drift",
    "estuary", "forest", "glacier", "horizon", "iris", "jasper", "karst", "lumen",
)  # fmt: skip
_TOKEN_TEXT: Final = tuple(word + " " for word in _WORDS)
TOKEN_JSON: Final = tuple(orjson.dumps(text) for text in _TOKEN_TEXT)
_TOKEN_INDEX_SHIFT: Final = 31 - (len(_WORDS).bit_length() - 1)  # top bits of a 31-bit LCG state → word index


def _message_texts(messages: list[Any]) -> list[str]:
    """Text of every message: string contents and the ``text`` parts of list contents; anything else is ignored."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _token_indices(seed: int, count: int) -> tuple[int, ...]:
    """Word indices of the answer; benchmark-typical lengths are cached, huge ones are not (bounded memory)."""
    if count <= _CACHED_TOKENS_MAX:
        return _cached_token_indices(seed, count)
    return _compute_token_indices(seed, count)


def _compute_token_indices(seed: int, count: int) -> tuple[int, ...]:
    """A 31-bit LCG seeded by the prompt, so equal prompts give equal answers."""
    state = seed & 0x7FFFFFFF
    indices: list[int] = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        indices.append(state >> _TOKEN_INDEX_SHIFT)
    return tuple(indices)


_cached_token_indices: Final = lru_cache(maxsize=512)(_compute_token_indices)


@dataclass(slots=True)
class ChatPlan:
    """Everything needed to render one chat answer, streaming or not."""

    completion_id: str
    created: int
    model: str
    tokens: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def plan_chat(state: DemoState, knobs: Knobs, body: dict[str, Any], model: str) -> ChatPlan:
    """Validate the chat-specific fields and decide the answer."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "missing_required_parameter", "messages")
    stream = optional_bool(body, "stream")
    cap = positive_int(body, "max_completion_tokens", 2**31)
    if cap is None:
        cap = positive_int(body, "max_tokens", 2**31)
    stream_options = body.get("stream_options")
    include_usage = stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    texts = _message_texts(messages)
    prompt_tokens = max(1, sum(len(text.split()) for text in texts))
    count, finish_reason = knobs.tokens, "stop"
    if cap is not None and cap < count:
        count, finish_reason = cap, "length"
    seed = zlib.crc32("\n".join(texts).encode("utf-8", "surrogatepass"))
    return ChatPlan(
        completion_id=f"chatcmpl-demo-{next(state.completion_ids)}",
        created=int(time.time()),
        model=model,
        tokens=_token_indices(seed, count),
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        stream=stream,
        include_usage=include_usage,
    )


def completion_payload(plan: ChatPlan) -> bytes:
    content = "".join([_TOKEN_TEXT[index] for index in plan.tokens])
    return orjson.dumps(
        {
            "id": plan.completion_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": plan.usage(),
        }
    )


def _models_payload() -> bytes:
    data = [
        {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": model.split("/", 1)[0]}
        for model in DEMO_MODELS
    ]
    return orjson.dumps({"object": "list", "data": data})


MODELS_PAYLOAD: Final = _models_payload()
