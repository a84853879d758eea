"""Google's Gemini API as a provider format: chat completions asked of `generateContent`, answered as chat.

Why a translation and not a pass-through: Gemini's v1beta REST API is not OpenAI-shaped (``contents`` of
``parts``, ``systemInstruction``, ``generationConfig``, ``functionDeclarations``; answers as ``candidates``
with ``usageMetadata``; streams of whole GenerateContentResponse frames with no end marker). `GEMINI` maps a
chat-completions body onto it (`payload_doc`, where the request's choices and refusals are written down) and its
answers and SSE frames back onto chat completions and chat chunks (here).

Choices worth knowing
    Gemini's calls carry no ids: `call_id` makes a stable one from the answer's ``responseId``, the call's
    position, name and arguments; a call's ``thoughtSignature`` rides in the id so the next request can return it.
    A call arrives whole in one frame, so the decoder sends its head (id, name, ``arguments`` "") and then its
    arguments in one fragment, as OpenAI's streams do.
    Usage: ``prompt_tokens`` is ``promptTokenCount`` (+ ``toolUsePromptTokenCount``); ``completion_tokens``
    counts the thinking tokens too (``candidatesTokenCount`` + ``thoughtsTokenCount``), as OpenAI counts its
    reasoning tokens. Thought parts (``"thought": true``) are not part of the answer's text.
    Finish reasons: ``STOP`` is ``stop`` (``tool_calls`` when the answer calls functions), ``MAX_TOKENS``
    ``length``, the safety family (``SAFETY``, ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``,
    image safety) ``content_filter``, anything else ``stop``. A blocked prompt (``promptFeedback.blockReason``
    and no candidate) is a 400 (`blocked`), whether in a JSON answer or a stream's first frame.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import orjson

from clexproxy.errors import InvalidRequest
from clexproxy.fastpath.sse import SSEEvent
from clexproxy.protocols.chunks import Chunk, UpstreamEventError, event_doc, feed_each
from clexproxy.protocols.gemini_request import call_id, payload_doc

__all__ = ["GEMINI", "GeminiDecoder", "GeminiWire", "blocked", "usage"]

_FINISH: Final[Mapping[str, str]] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"),
        "content_filter",
    ),
}


def blocked(reason: Any) -> InvalidRequest:
    """The 400 for a prompt Gemini refused (``promptFeedback.blockReason``: an enum name, nothing else, is shown)."""
    named = reason if isinstance(reason, str) and reason.isidentifier() and len(reason) <= 40 else "OTHER"
    return InvalidRequest(f"The provider blocked the prompt ({named}).", error_type="upstream_error")


def usage(metadata: Any) -> dict[str, Any]:
    """Chat usage from ``usageMetadata`` (thinking counted as completion, tool-use prompt as prompt)."""
    meta = metadata if isinstance(metadata, dict) else {}

    def count(name: str) -> int:
        value = meta.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    thoughts = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + thoughts
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    if count("cachedContentTokenCount"):
        result["prompt_tokens_details"] = {"cached_tokens": count("cachedContentTokenCount")}
    if thoughts:
        result["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return result


def _candidate(doc: Any) -> dict[str, Any] | None:
    """The first candidate; raises `blocked` for a refused prompt (``promptFeedback.blockReason``, no candidates)."""
    if not isinstance(doc, dict):
        return None
    candidates = doc.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise blocked(feedback["blockReason"])
    return None


def _answer_parts(candidate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A candidate's parts that are the answer (thought summaries are not)."""
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict) and not p.get("thought")] if isinstance(parts, list) else []


def _finish(reason: Any, calls: bool) -> str:
    mapped = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if calls and mapped == "stop" else mapped


class GeminiDecoder:
    """One ``streamGenerateContent?alt=sse`` stream as chat chunks; `close` at the body's end finds it whole."""

    __slots__ = ("_calls", "_finish", "_id", "_last_usage", "_model", "_started", "_usage_sent", "created", "done")

    def __init__(self, model_id: str) -> None:
        self._model = model_id
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self._calls = 0
        self._started = False
        self._finish: str | None = None
        self._usage_sent = False
        self._last_usage: Any = None
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self.created, "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _usage(self, metadata: Any) -> Chunk:
        self._usage_sent = True
        return {"id": self._id, "object": "chat.completion.chunk", "created": self.created, "model": self._model,
                "choices": [], "usage": usage(metadata)}

    feed_all = feed_each

    def feed(self, event: SSEEvent) -> list[Chunk]:
        if event.data is None or self.done:
            return []
        doc = event_doc(event.data)
        if doc.get("error") is not None:
            raise UpstreamEventError(doc["error"])
        try:
            candidate = _candidate(doc)
        except InvalidRequest as refusal:
            raise UpstreamEventError({"code": 400, "message": refusal.message, "status": "INVALID_ARGUMENT"}) from None
        chunks: list[Chunk] = []
        if not self._started:
            self._started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        response_id = str(doc.get("responseId") or self._id)  # ids unique across turns even without one
        for part in _answer_parts(candidate):
            if isinstance(part.get("text"), str) and part["text"]:
                chunks.append(self._chunk({"content": part["text"]}))
            call = part.get("functionCall")
            if isinstance(call, dict):
                name, args = str(call.get("name") or ""), orjson.dumps(call.get("args") or {}).decode()
                ident = call_id(response_id, self._calls, name, args, part.get("thoughtSignature"))
                head = {"index": self._calls, "id": ident, "type": "function",
                        "function": {"name": name, "arguments": ""}}
                chunks.append(self._chunk({"tool_calls": [head]}))
                chunks.append(self._chunk({"tool_calls": [{"index": self._calls, "function": {"arguments": args}}]}))
                self._calls += 1
        metadata = doc.get("usageMetadata")
        if metadata is not None:
            self._last_usage = metadata
        reason = candidate.get("finishReason") if candidate else None
        if reason and self._finish is None:
            self._finish = _finish(reason, self._calls > 0)
            chunks.append(self._chunk({}, self._finish))
        if self._finish is not None and metadata is not None and not self._usage_sent:
            chunks.append(self._usage(metadata))
        return chunks

    def close(self) -> list[Chunk]:
        if self._finish is None or self.done:
            return []
        self.done = True
        return [] if self._usage_sent else [self._usage(self._last_usage)]

    def reported_usage(self) -> dict[str, Any] | None:
        return None if self._last_usage is None else usage(self._last_usage)


class GeminiWire:
    """The ``gemini`` provider format (`GEMINI`): see the module's notes."""

    name = "gemini"

    def path(self, endpoint: str, upstream_model: str, stream: bool) -> str:
        if endpoint != "/chat/completions":
            raise InvalidRequest(f"This model's provider does not serve {endpoint}.", extra={"param": "model"})
        model = quote(upstream_model.removeprefix("models/"), safe="-._~")
        return f"/models/{model}:streamGenerateContent?alt=sse" if stream else f"/models/{model}:generateContent"

    def auth_headers(self, credential: str) -> dict[str, str]:
        return {"x-goog-api-key": credential}

    def payload(self, body: dict[str, Any], upstream_model: str) -> bytes:
        return orjson.dumps(payload_doc(body))

    def check_first(self, data: bytes) -> None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        _candidate(doc)

    def answer(self, doc: dict[str, Any], model_id: str) -> Chunk:
        candidate = _candidate(doc) or {}
        response_id = str(doc.get("responseId") or "") or uuid.uuid4().hex  # ids unique across turns
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in _answer_parts(candidate):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                name, args = str(call.get("name") or ""), orjson.dumps(call.get("args") or {}).decode()
                ident = call_id(response_id, len(calls), name, args, part.get("thoughtSignature"))
                calls.append({"id": ident, "type": "function", "function": {"name": name, "arguments": args}})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": "chatcmpl-" + response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": _finish(candidate.get("finishReason"), bool(calls))}],
            "usage": usage(doc.get("usageMetadata")),
        }

    def decoder(self, model_id: str) -> GeminiDecoder:
        return GeminiDecoder(model_id)


GEMINI: Final = GeminiWire()
