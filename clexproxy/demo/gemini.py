"""The demo upstream speaking Google's Gemini API, so a ``gemini``-format provider is tested on real sockets.

Why a second wire format here: translations from chat completions to Gemini must be exercised against a real
HTTP peer, with the same deterministic answers, token counts and ``x-demo-*`` knobs as the OpenAI endpoints.
`serve_gemini` turns the Gemini request into the chat fields `plan_chat` already understands (text parts as
messages, ``maxOutputTokens`` as the cap, the stream flag), so the words and counts are exactly the OpenAI
endpoints'; only the rendering is Gemini's.

Modelled
    ``POST /v1beta/models/{model}:generateContent`` and ``...:streamGenerateContent?alt=sse`` (the model name
    may contain ``/``; the route is one ``/v1beta/{tail}`` route parsed here, since the path carries ``:``).
    The key as ``x-goog-api-key`` or ``?key=`` (any value; none is Google's 403 ``PERMISSION_DENIED``).
    ``contents`` (role ``user`` / ``model``; parts ``text``, ``inlineData``, ``functionCall``,
    ``functionResponse``: only text counts toward the prompt, as on the OpenAI endpoints), ``systemInstruction``,
    ``generationConfig`` (``temperature``, ``topP``, ``maxOutputTokens``, ``stopSequences``: type-checked;
    only ``maxOutputTokens`` changes the answer, giving ``finishReason`` ``MAX_TOKENS``), ``tools``
    ``functionDeclarations``: when declared and the last content carries no ``functionResponse``, the answer is
    one ``functionCall`` to the first declared function, its required string/number/boolean parameters filled
    deterministically. Answers: ``candidates[0].content.parts``, ``finishReason`` ``STOP`` / ``MAX_TOKENS``,
    ``usageMetadata`` (``promptTokenCount``, ``candidatesTokenCount``, ``totalTokenCount``), ``modelVersion``,
    ``responseId``. The stream is SSE ``data: {...}`` frames, each a GenerateContentResponse with one token's
    text; the last carries ``finishReason`` and ``usageMetadata``; there is no ``[DONE]``.
    ``x-demo-gemini-safety: prompt`` blocks the prompt (``promptFeedback.blockReason`` ``SAFETY``, no
    candidates); ``x-demo-gemini-safety: response`` answers a candidate with ``finishReason`` ``SAFETY`` and no
    content. Every other ``x-demo-*`` knob acts as on the OpenAI endpoints; errors use Google's shape
    ``{"error": {"code", "message", "status"}}`` (429 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``, ...).

Not modelled
    Multiple candidates, ``responseSchema`` / JSON mode, code execution, grounding, safety ratings beyond the
    knob's fixed one, ``countTokens``, ``models.list``, the non-SSE streamed JSON array (``alt`` other than
    ``sse`` is a 400). A malformed ``x-demo-*`` header is refused in OpenAI's shape (the shared dispatcher parses
    knobs before any endpoint runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from clexproxy.demo.answers import TOKEN_JSON, ChatPlan, plan_chat
from clexproxy.demo.errors import DemoError
from clexproxy.demo.knobs import Knobs, preflight
from clexproxy.demo.recorder import DemoState, RecordedRequest
from clexproxy.demo.responses import drop_connection, send_body, sleep
from clexproxy.demo.sse import serve_sse

__all__ = ["GEMINI_SAFETY_HEADER", "GeminiError", "serve_gemini"]

GEMINI_SAFETY_HEADER: Final = "x-demo-gemini-safety"
_PATH: Final = re.compile(r"models/(?P<model>[^:]+):(?P<method>generateContent|streamGenerateContent)")
_TOKEN_TEXT: Final = tuple(str(orjson.loads(token)) for token in TOKEN_JSON)
_FINISH: Final[Mapping[str, str]] = {"stop": "STOP", "length": "MAX_TOKENS"}
_BLOCKED_RATING: Final = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]

# HTTP status → google.rpc.Code name, as the Gemini API reports them.
_STATUS_NAMES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiError(DemoError):
    """A refusal rendered in Google's error shape; the shared dispatcher sends it like any `DemoError`."""

    def payload(self) -> bytes:
        status = _STATUS_NAMES.get(self.status, "INTERNAL" if self.status >= 500 else "FAILED_PRECONDITION")
        return orjson.dumps({"error": {"code": self.status, "message": self.message, "status": status}})


def _as_gemini(error: DemoError) -> GeminiError:
    """The same refusal (status, message, Retry-After) in Google's shape."""
    if isinstance(error, GeminiError):
        return error
    return GeminiError(error.status, error.message, error.error_type, error.code, headers=error.headers)


def _invalid(message: str) -> GeminiError:
    return GeminiError(400, message, "invalid_request_error", "invalid_argument")


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid value at '{name}': expected an object")
    return value


def _parts_text(content: dict[str, Any], name: str) -> str:
    """The ``text`` parts of one Content joined; other part kinds are checked for shape only."""
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise _invalid(f"Invalid value at '{name}.parts': expected a list")
    texts: list[str] = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not part:
            raise _invalid(f"Invalid value at '{name}.parts[{index}]': expected a Part")
        text = part.get("text")
        if text is not None:
            if not isinstance(text, str):
                raise _invalid(f"Invalid value at '{name}.parts[{index}].text': expected a string")
            texts.append(text)
    return "\n".join(texts)


def _chat_body(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Gemini request as the chat fields `plan_chat` reads: same prompt words, cap and stream flag."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    messages: list[dict[str, str]] = []
    system = body.get("systemInstruction")
    if system is not None:
        messages.append({"role": "system", "content": _parts_text(_object(system, "system_instruction"), "system")})
    for index, content in enumerate(contents):
        checked = _object(content, f"contents[{index}]")
        role = checked.get("role", "user")
        if role not in ("user", "model"):
            raise _invalid(f"Please use a valid role: user, model. Got {role!r} at contents[{index}]")
        messages.append({"role": role, "content": _parts_text(checked, f"contents[{index}]")})
    config = _object(body.get("generationConfig"), "generation_config")
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _invalid(f"Invalid value at 'generation_config.{name}': expected a number")
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops)):
        raise _invalid("Invalid value at 'generation_config.stop_sequences': expected a list of strings")
    chat: dict[str, Any] = {"messages": messages, "stream": stream}
    cap = config.get("maxOutputTokens")
    if cap is not None:
        chat["max_tokens"] = cap
    return chat


def _function_call(body: dict[str, Any], plan: ChatPlan) -> dict[str, Any] | None:
    """One ``functionCall`` to the first declared function, unless the conversation just answered one."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    declarations = [d for tool in tools if isinstance(tool, dict) for d in tool.get("functionDeclarations") or []]
    if not declarations or not isinstance(declarations[0], dict) or not isinstance(declarations[0].get("name"), str):
        return None
    last = body["contents"][-1]
    if any(isinstance(part, dict) and "functionResponse" in part for part in last.get("parts", [])):
        return None
    declaration = declarations[0]
    parameters = _object(declaration.get("parameters"), "parameters")
    properties = _object(parameters.get("properties"), "parameters.properties")
    args: dict[str, Any] = {}
    for position, name in enumerate(parameters.get("required") or []):
        kind = str(_object(properties.get(name), name).get("type", "string")).lower()
        if kind in ("number", "integer"):
            args[name] = position + 1
        elif kind == "boolean":
            args[name] = True
        else:
            args[name] = _TOKEN_TEXT[plan.tokens[position % len(plan.tokens)]].strip() if plan.tokens else ""
    return {"functionCall": {"name": declaration["name"], "args": args}}


def _usage(plan: ChatPlan) -> dict[str, int]:
    usage = plan.usage()
    return {
        "promptTokenCount": usage["prompt_tokens"],
        "candidatesTokenCount": usage["completion_tokens"],
        "totalTokenCount": usage["total_tokens"],
    }


def _response(plan: ChatPlan, candidate: dict[str, Any] | None, usage: bool, sent: int = 0) -> bytes:
    """One GenerateContentResponse (a whole answer or one stream frame).

    As Gemini does, a stream frame that is not the last carries usageMetadata too: the prompt's count and the
    `sent` candidate tokens so far (so a stream cut short still says what it used).
    """
    payload: dict[str, Any] = {}
    if candidate is not None:
        payload["candidates"] = [{**candidate, "index": 0}]
    if usage:
        payload["usageMetadata"] = _usage(plan)
    elif sent:
        payload["usageMetadata"] = {"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount": sent,
                                    "totalTokenCount": plan.prompt_tokens + sent}
    payload["modelVersion"] = plan.model
    payload["responseId"] = plan.completion_id
    return orjson.dumps(payload)


def _blocked(plan: ChatPlan, where: str) -> bytes:
    """The answer the safety knob asks for: the prompt blocked, or the candidate stopped for SAFETY."""
    if where == "prompt":
        usage = {"promptTokenCount": plan.prompt_tokens, "totalTokenCount": plan.prompt_tokens}
        feedback = {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATING}
        return orjson.dumps({"promptFeedback": feedback, "usageMetadata": usage, "modelVersion": plan.model})
    candidate = {"finishReason": "SAFETY", "safetyRatings": _BLOCKED_RATING}
    return _response(plan, candidate, usage=True)


def _safety(request: web.Request) -> str | None:
    value = request.headers.get(GEMINI_SAFETY_HEADER)
    if value is None:
        return None
    if value not in ("prompt", "response"):
        raise _invalid(f"{GEMINI_SAFETY_HEADER} must be 'prompt' or 'response', got {value!r}")
    return value


async def _stream(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, frames: list[bytes]
) -> web.StreamResponse:
    """SSE: frames after the ttft knob, the delay and drop knobs between content frames (`serve_sse`)."""

    async def events(response: web.StreamResponse) -> bool:
        await sleep(knobs.ttft_s)
        for position, frame in enumerate(frames):
            if position:
                await sleep(knobs.delay_s)
            if knobs.drop_after is not None and position >= knobs.drop_after:
                drop_connection(request, response, state.recorder, recorded)
                return False
            await response.write(b"data: " + frame + b"\r\n\r\n")
        await response.write_eof()
        return True

    return await serve_sse(request, state, recorded, events)


def _stream_frames(plan: ChatPlan, call: dict[str, Any] | None) -> list[bytes]:
    """One frame per token's text (or one functionCall frame); the last adds finishReason and usage."""
    finish = _FINISH[plan.finish_reason]
    if call is not None or not plan.tokens:
        parts = [call] if call is not None else [{"text": ""}]
        return [_response(plan, {"content": {"parts": parts, "role": "model"}, "finishReason": finish}, True)]
    frames: list[bytes] = []
    last = len(plan.tokens) - 1
    for position, token in enumerate(plan.tokens):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": _TOKEN_TEXT[token]}], "role": "model"}}
        if position == last:
            candidate["finishReason"] = finish
        frames.append(_response(plan, candidate, position == last, position + 1))
    return frames


async def serve_gemini(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, body: dict[str, Any] | None
) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``."""
    try:
        tail = request.match_info.get("tail", "")
        match = _PATH.fullmatch(tail)
        if match is None or request.method != "POST":
            raise GeminiError(404, f"Method not found: {request.method} /v1beta/{tail}", "not_found", "not_found")
        if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            raise GeminiError(
                403, "Method doesn't allow unregistered callers. Please use API Key.", "permission_error", None
            )
        stream = match["method"] == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            raise _invalid("This demo upstream streams only with alt=sse")
        if body is None:
            raise _invalid("Invalid JSON payload received: the body must be a JSON object")
        model = match["model"]
        safety = _safety(request)
        plan = plan_chat(state, knobs, _chat_body(body, stream), model)
        call = _function_call(body, plan)
        preflight(state, knobs, model)
    except DemoError as error:
        raise _as_gemini(error) from None
    if safety is not None:
        blocked = _blocked(plan, safety)
        if stream:
            return await _stream(request, state, recorded, knobs, [blocked])
        return await send_body(request, state, recorded, knobs, blocked)
    if stream:
        return await _stream(request, state, recorded, knobs, _stream_frames(plan, call))
    parts = [call] if call is not None else [{"text": "".join([_TOKEN_TEXT[token] for token in plan.tokens])}]
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": _FINISH[plan.finish_reason]}
    return await send_body(request, state, recorded, knobs, _response(plan, candidate, usage=True))
