"""The demo upstream's chat answer when the client offers function tools: one deterministic tool call.

Clients drive tools in a round trip (the model calls a tool, the client runs it and sends the result back),
and every translation of tool calls (Responses' ``function_call`` items, Anthropic's ``tool_use`` blocks) has
to be tested on real sockets, so the demo must be able to call a tool. It does so when the request has
``tools``, ``tool_choice`` is not ``"none"`` and the conversation does not already end with a tool result
(then it answers words, as usual, which ends the round trip). The tool called is the one ``tool_choice``
names, else the first; its arguments fill each required property (every property when none is required)
with a value of the property's type, in schema order, so the same request always gets the same call. The
usage is the plain answer's (`ChatPlan.usage`), so credits and token counts read as for any other answer.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from clexproxy.demo.answers import ChatPlan
from clexproxy.demo.knobs import Knobs
from clexproxy.demo.recorder import DemoState, RecordedRequest
from clexproxy.demo.responses import drop_connection, send_body, sleep
from clexproxy.demo.sse import serve_sse

_SAMPLE_VALUES: Final[dict[str, Any]] = {
    "string": "alpha", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}, "null": None,
}
_ARGUMENT_PIECES: Final = 3  # a stream sends the arguments in this many fragments, as providers do
_DONE: Final = b"data: [DONE]\n\n"


def _function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    functions = [tool.get("function") for tool in tools if isinstance(tool, dict)]
    return [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]


def wants_tool_call(body: dict[str, Any]) -> bool:
    """Whether this chat request gets a tool call rather than words."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return False
    return body.get("tool_choice") != "none" and bool(_function_tools(body))


def _arguments(function: dict[str, Any]) -> str:
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict):
        return "{}"
    required = parameters.get("required") if isinstance(parameters, dict) else None
    names = [name for name in properties if not isinstance(required, list) or not required or name in required]
    values: dict[str, Any] = {}
    for name in names:
        schema = properties[name]
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(kind, list):  # ["string", "null"]: the first type
            kind = kind[0] if kind else None
        values[name] = _SAMPLE_VALUES.get(kind, "alpha") if isinstance(kind, str) else "alpha"
    return orjson.dumps(values).decode()


def plan_tool_call(body: dict[str, Any]) -> tuple[str, str]:
    """The function's name and its JSON arguments."""
    functions = _function_tools(body)
    choice = body.get("tool_choice")
    chosen = functions[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = choice["function"].get("name")
        chosen = next((f for f in functions if f["name"] == named), chosen)
    return chosen["name"], _arguments(chosen)


def _call_id(plan: ChatPlan) -> str:
    return "call_" + plan.completion_id.rsplit("-", 1)[-1].rjust(8, "0")


def tool_call_payload(plan: ChatPlan, name: str, arguments: str) -> bytes:
    call = {"id": _call_id(plan), "type": "function", "function": {"name": name, "arguments": arguments}}
    return orjson.dumps({
        "id": plan.completion_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            "logprobs": None,
            "finish_reason": "tool_calls",
        }],
        "usage": plan.usage(),
    })


def tool_call_chunks(plan: ChatPlan, name: str, arguments: str) -> list[bytes]:
    """The stream's frames, as OpenAI sends them: the call's id and name first, then argument fragments."""
    size = max(1, -(-len(arguments) // _ARGUMENT_PIECES))
    pieces = [arguments[i:i + size] for i in range(0, len(arguments), size)] or [""]
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": None}, None),
        ({"tool_calls": [{"index": 0, "id": _call_id(plan), "type": "function",
                          "function": {"name": name, "arguments": ""}}]}, None),
        *(({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None) for piece in pieces),
        ({}, "tool_calls"),
    ]
    head = {"id": plan.completion_id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model}
    frames = [
        b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                       "finish_reason": finish}]}) + b"\n\n"
        for delta, finish in deltas
    ]
    if plan.include_usage:
        frames.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": plan.usage()}) + b"\n\n")
    return frames


async def serve_tool_call(
    request: web.Request, state: DemoState, recorded: RecordedRequest, knobs: Knobs, plan: ChatPlan,
    body: dict[str, Any],
) -> web.StreamResponse:
    """Answer `body` (which `wants_tool_call`) with one tool call, whole or streamed; the knobs act as for words."""
    name, arguments = plan_tool_call(body)
    if not plan.stream:
        return await send_body(request, state, recorded, knobs, tool_call_payload(plan, name, arguments))
    frames = tool_call_chunks(plan, name, arguments)

    async def write(response: web.StreamResponse) -> bool:
        await sleep(knobs.ttft_s)
        for position, frame in enumerate(frames):
            if position > 1:
                await sleep(knobs.delay_s)
            if knobs.drop_after is not None and position > knobs.drop_after:
                drop_connection(request, response, state.recorder, recorded)
                return False
            await response.write(frame)
        await response.write_eof(_DONE)
        return True

    return await serve_sse(request, state, recorded, write)
