"""The demo upstream's tool call answer on real sockets: whole and streamed (golden bodies), and when not given."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from clexproxy.demo.upstream import DemoServer

MODEL = "meta/llama-3.1-8b-instruct"
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
            "required": ["city", "days"],
        },
    }},
]
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


async def post(upstream: DemoServer, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(upstream.url + "/chat/completions", json=body) as resp:
        return resp.status, await resp.read()


async def test_whole_answer_calls_the_named_tool(upstream: DemoServer) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    status, raw = await post(upstream, {"model": MODEL, "messages": [QUESTION], "tools": TOOLS, "tool_choice": choice})
    assert status == 200
    doc = orjson.loads(raw)
    assert doc["id"] == "chatcmpl-demo-1" and doc["object"] == "chat.completion" and doc["model"] == MODEL
    assert doc["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_00000001", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"alpha","days":1}'},
        }]},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }]
    assert doc["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}


async def test_stream_sends_id_and_name_then_argument_fragments(upstream: DemoServer) -> None:
    body = {"model": MODEL, "messages": [QUESTION], "tools": TOOLS[1:], "stream": True,
            "stream_options": {"include_usage": True}}
    status, raw = await post(upstream, body)
    assert status == 200
    frames = raw.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    chunks = [orjson.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert deltas == [
        ({"role": "assistant", "content": None}, None),
        ({"tool_calls": [{"index": 0, "id": "call_00000001", "type": "function",
                          "function": {"name": "get_weather", "arguments": ""}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": 'alpha","d'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": 'ays":1}'}}]}, None),
        ({}, "tool_calls"),
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-demo-1" for c in chunks)


async def test_words_after_a_tool_result_or_when_tools_are_off(upstream: DemoServer) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    round_trip = [QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "noon"}]
    for body in ({"model": MODEL, "messages": round_trip, "tools": TOOLS},
                 {"model": MODEL, "messages": [QUESTION], "tools": TOOLS, "tool_choice": "none"},
                 {"model": MODEL, "messages": [QUESTION], "tools": []}):
        status, raw = await post(upstream, body)
        assert status == 200
        [choice] = orjson.loads(raw)["choices"]
        assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
        assert len(choice["message"]["content"].split()) == 8


async def test_knobs_still_apply(upstream: DemoServer) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        upstream.url + "/chat/completions", json={"model": MODEL, "messages": [QUESTION], "tools": TOOLS},
        headers={"x-demo-status": "503"},
    ) as resp:
        assert resp.status == 503
