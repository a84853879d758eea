"""Golden tests of the ``gemini`` provider format (`GEMINI`), both directions, and its round trips on a real socket.

Requests: chat bodies → the exact GenerateContentRequest, and every refusal with its ``param``. Answers: Gemini JSON
→ the exact chat completion. Streams: SSE bytes as Gemini's ``alt=sse`` sends them (``\\r\\n\\r\\n`` between
``data:`` frames, ``usageMetadata`` on every frame, the last with ``finishReason``) → the exact chat chunks. Then the
payloads are POSTed to the demo upstream's Gemini endpoints and its answers run back through `answer` / the decoder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from clexproxy.demo.upstream import DemoServer, start_demo_upstream
from clexproxy.errors import InvalidRequest
from clexproxy.fastpath.sse import SSEParser
from clexproxy.protocols.chunks import Chunk, UpstreamEventError
from clexproxy.protocols.gemini_wire import GEMINI

USER = {"role": "user", "content": "Weather in Paris?"}
CALL_1 = "call_c32e739955484f45c7b52caa"  # call_id("resp-1", 0, "get_weather", '{"city":"Paris"}')
CALL_2 = "call_6f07505ac689bd70a74b881d"  # call_id("resp-1", 1, "get_time", '{"zone":"CET"}')
SIGNED = "call_ac8e0e892fd0ff3dfeada7cf__thought__c2lnbmF0dXJl"  # call_id("resp-2", 0, ..., "c2lnbmF0dXJl")


def payload(**body: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(GEMINI.payload({"messages": [USER], **body}, "gemini-2.0-flash"))
    return result


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        GEMINI.payload(body, "gemini-2.0-flash")
    return caught.value


# --- requests ---------------------------------------------------------------------------------------------------


def test_path_and_auth_headers() -> None:
    assert GEMINI.name == "gemini"
    assert GEMINI.path("/chat/completions", "gemini-2.0-flash", False) == "/models/gemini-2.0-flash:generateContent"
    assert GEMINI.path("/chat/completions", "models/gemini-2.5-pro", True) == (
        "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    assert GEMINI.path("/chat/completions", "a b/c?d", False) == "/models/a%20b%2Fc%3Fd:generateContent"
    with pytest.raises(InvalidRequest, match="/completions"):
        GEMINI.path("/completions", "gemini-2.0-flash", False)
    assert GEMINI.auth_headers("secret") == {"x-goog-api-key": "secret"}


def test_text_system_sampling_and_stop() -> None:
    body = {
        "model": "gemini-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        ],
        "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "seed": 7, "max_tokens": 50, "max_completion_tokens": 100, "stop": "END", "user": "u1",
        "metadata": {"a": "b"}, "store": False, "parallel_tool_calls": True, "presence_penalty": 0.5,
    }
    assert orjson.loads(GEMINI.payload(body, "gemini-2.0-flash")) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Bonjour"}]},
            {"role": "user", "parts": [{"text": "Weather?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "generationConfig": {"temperature": 0.7, "topP": 0.9, "topK": 40, "seed": 7, "presencePenalty": 0.5,
                             "maxOutputTokens": 100, "stopSequences": ["END"]},
    }
    assert payload(stop=["a", "b"])["generationConfig"] == {"stopSequences": ["a", "b"]}


def test_images_audio_and_files_as_inline_data() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0"}},
    ]
    assert payload(messages=[{"role": "user", "content": content}])["contents"] == [{"role": "user", "parts": [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGR"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0"}},
    ]}]


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
                "where": {"$ref": "#/$defs/Place"},
            },
            "required": ["city"],
            "$defs": {"Place": {"type": "object", "title": "Place", "additionalProperties": False,
                                "properties": {"lat": {"type": "number", "exclusiveMinimum": -91}}}},
        },
        "strict": True,
    }},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
GEMINI_TOOLS = [{"functionDeclarations": [
    {"name": "get_weather", "description": "The weather in a city", "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"nullable": True, "type": "string", "enum": ["C", "F"]},
            "where": {"type": "object", "title": "Place", "properties": {"lat": {"type": "number"}}},
        },
        "required": ["city"],
    }},
    {"name": "get_time"},
]}]


def test_tools_and_a_parallel_tool_round_trip() -> None:
    messages = [
        {"role": "system", "content": "Use tools."},
        USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": CALL_1, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": SIGNED, "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": CALL_1, "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": SIGNED, "content": [{"type": "text", "text": "12:00"}]},
    ]
    assert payload(messages=messages, tools=TOOLS, tool_choice="auto") == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "c2lnbmF0dXJl"},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": '{"temp": 21}'}}},
                {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
            ]},
        ],
        "systemInstruction": {"parts": [{"text": "Use tools."}]},
        "tools": GEMINI_TOOLS,
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    }


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    assert payload(tools=TOOLS, tool_choice=choice)["toolConfig"] == {"functionCallingConfig": config}


def test_json_formats() -> None:
    assert payload(response_format={"type": "text"}) == {"contents": [{"role": "user", "parts": [
        {"text": "Weather in Paris?"}]}]}
    assert payload(response_format={"type": "json_object"})["generationConfig"] == {
        "responseMimeType": "application/json"}
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "properties": {"t": {"type": "integer"}}, "required": ["t"]}}}
    assert payload(response_format=fmt)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"t": {"type": "integer"}}, "required": ["t"]},
    }


CALLED = {"role": "assistant", "tool_calls": [
    {"id": CALL_1, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"1": 2}}, "logit_bias"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"verbosity": "low"}, "verbosity"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "refusal"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:a;base64,b"}}]}]},
     "messages[0].content"),
    ({"messages": [USER, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages[1].tool_call_id"),
    ({"messages": [USER, {**CALLED, "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}]},
     "tools[0].function.parameters.$ref"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": ["string", "integer"]}}}}}]},
     "tools[0].function.parameters.properties.a.type"),
    ({"tool_choice": "any"}, "tool_choice"),
    ({"stop": [1]}, "stop"),
    ({"temperature": "hot"}, "temperature"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
])
def test_refusals_name_the_field(extra: dict[str, Any], param: str) -> None:
    error = refused({"messages": [USER], **extra})
    assert error.status == 400 and error.code == "invalid_request_error"
    assert error.extra == {"param": param}
    assert param.split(".")[0].split("[")[0] in error.message


def test_unsupported_message_wording() -> None:
    assert refused({"messages": [USER], "n": 2}).message == "'n' is not supported by this model's provider."


# --- answers ----------------------------------------------------------------------------------------------------


def answer(doc: dict[str, Any]) -> Chunk:
    result = GEMINI.answer(doc, "gemini-flash")
    assert isinstance(result.pop("created"), int)
    return result


USAGE = {"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20}


def test_answer_text() -> None:
    doc = {"candidates": [{"content": {"parts": [{"text": "Sunny"}, {"text": ", 21C."}], "role": "model"},
                           "finishReason": "STOP", "index": 0}],
           "usageMetadata": USAGE, "modelVersion": "gemini-2.0-flash", "responseId": "resp-1"}
    assert answer(doc) == {
        "id": "chatcmpl-resp-1", "object": "chat.completion", "model": "gemini-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny, 21C."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20},
    }


def test_answer_parallel_calls_thoughts_and_usage_details() -> None:
    doc = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {"zone": "CET"}}},
    ]}, "finishReason": "STOP"}], "responseId": "resp-1", "usageMetadata": {
        "promptTokenCount": 30, "toolUsePromptTokenCount": 2, "cachedContentTokenCount": 10,
        "candidatesTokenCount": 15, "thoughtsTokenCount": 40, "totalTokenCount": 87}}
    assert answer(doc) == {
        "id": "chatcmpl-resp-1", "object": "chat.completion", "model": "gemini-flash",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [
                {"id": CALL_1, "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": CALL_2, "type": "function", "function": {"name": "get_time", "arguments": '{"zone":"CET"}'}},
            ]}}],
        "usage": {"prompt_tokens": 32, "completion_tokens": 55, "total_tokens": 87,
                  "prompt_tokens_details": {"cached_tokens": 10},
                  "completion_tokens_details": {"reasoning_tokens": 40}},
    }


def test_signed_call_id_round_trips() -> None:
    doc = {"responseId": "resp-2", "candidates": [{"finishReason": "STOP", "content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}]}}]}
    call = answer(doc)["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == SIGNED
    sent = payload(messages=[USER, {"role": "assistant", "tool_calls": [call]}])
    assert sent["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}]


@pytest.mark.parametrize(("reason", "finish"), [
    ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"),
])
def test_finish_reasons(reason: str, finish: str) -> None:
    result = answer({"candidates": [{"finishReason": reason}], "usageMetadata": USAGE, "responseId": "r"})
    assert result["choices"] == [{"index": 0, "message": {"role": "assistant", "content": None},
                                  "finish_reason": finish}]


BLOCKED = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
           "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}, "modelVersion": "gemini-2.0-flash"}


def test_a_blocked_prompt_is_a_400() -> None:
    for check in (lambda: GEMINI.answer(BLOCKED, "m"), lambda: GEMINI.check_first(orjson.dumps(BLOCKED))):
        with pytest.raises(InvalidRequest) as caught:
            check()
        assert caught.value.status == 400
        assert caught.value.body() == {"error": {"message": "The provider blocked the prompt (SAFETY).",
                                                 "type": "upstream_error", "code": "invalid_request_error",
                                                 "status": 400}}
    odd = {"promptFeedback": {"blockReason": "see https://x.example/y"}}
    with pytest.raises(InvalidRequest, match=r"^The provider blocked the prompt \(OTHER\)\.$"):
        GEMINI.answer(odd, "m")  # only an enum name is shown
    GEMINI.check_first(b'{"candidates": [{"content": {"parts": [{"text": "a"}]}}]}')  # an answer: no error
    GEMINI.check_first(b"not json")  # the decoder reports it


# --- streams ----------------------------------------------------------------------------------------------------


def decode(raw: bytes) -> tuple[list[Chunk], bool]:
    decoder = GEMINI.decoder("gemini-flash")
    chunks = [chunk for event in SSEParser().feed(raw) for chunk in decoder.feed(event)]
    chunks += decoder.close()
    assert len({chunk.pop("id") for chunk in chunks}) <= 1  # one id and one created for the whole stream
    for chunk in chunks:
        assert chunk.pop("created") == decoder.created
        assert chunk.pop("object") == "chat.completion.chunk" and chunk.pop("model") == "gemini-flash"
    return chunks, decoder.done


def delta(content: dict[str, Any], finish: str | None = None) -> Chunk:
    return {"choices": [{"index": 0, "delta": content, "finish_reason": finish}]}


TEXT_STREAM = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.0-flash",'
    b'"responseId": "resp-1"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " sun"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.0-flash",'
    b'"responseId": "resp-1"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " shines."}],"role": "model"},"finishReason": "STOP",'
    b'"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 3,"totalTokenCount": 11,'
    b'"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.0-flash",'
    b'"responseId": "resp-1"}\r\n\r\n'
)


def test_text_stream() -> None:
    chunks, done = decode(TEXT_STREAM)
    assert chunks == [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "The"}),
        delta({"content": " sun"}),
        delta({"content": " shines."}),
        delta({}, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}},
    ]
    assert done


def test_parallel_call_stream() -> None:
    raw = (
        b'data: {"candidates": [{"content": {"parts": [{"text": "Checking."}],"role": "model"},"index": 0}],'
        b'"usageMetadata": {"promptTokenCount": 30,"totalTokenCount": 30},"responseId": "resp-1"}\r\n\r\n'
        b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": '
        b'{"city": "Paris"}}},{"functionCall": {"name": "get_time","args": {"zone": "CET"}}}],"role": "model"},'
        b'"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 30,"candidatesTokenCount": 20,'
        b'"thoughtsTokenCount": 5,"totalTokenCount": 55},"responseId": "resp-1"}\r\n\r\n'
    )
    chunks, done = decode(raw)
    assert chunks == [
        delta({"role": "assistant", "content": ""}),
        delta({"content": "Checking."}),
        delta({"tool_calls": [{"index": 0, "id": CALL_1, "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]}),
        delta({"tool_calls": [{"index": 1, "id": CALL_2, "type": "function",
                               "function": {"name": "get_time", "arguments": ""}}]}),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": '{"zone":"CET"}'}}]}),
        delta({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 25, "total_tokens": 55,
                                  "completion_tokens_details": {"reasoning_tokens": 5}}},
    ]
    assert done


def test_usage_after_the_finish_frame_and_a_cut_stream() -> None:
    late = (b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]},"finishReason": "MAX_TOKENS"}]}\r\n\r\n'
            b'data: {"usageMetadata": {"promptTokenCount": 2,"candidatesTokenCount": 1,"totalTokenCount": 3}}\r\n\r\n')
    chunks, done = decode(late)
    assert chunks[-2:] == [delta({}, "length"),
                           {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}]
    assert done
    cut, done = decode(TEXT_STREAM.rsplit(b"data:", 1)[0])
    assert cut[-1] == delta({"content": " sun"}) and not done


def test_error_and_blocked_events_raise() -> None:
    for raw in (b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\n\n',
                b"data: " + orjson.dumps(BLOCKED) + b"\n\n", b"data: [1]\n\n", b"data: nope\n\n"):
        with pytest.raises(UpstreamEventError) as caught:
            GEMINI.decoder("m").feed(SSEParser().feed(raw)[0])
        assert isinstance(caught.value.error, dict) and caught.value.error["message"]
    assert caught.value.error == {"message": "an event that is not JSON"}


# --- the demo upstream, on a real socket ----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def gemini_base() -> AsyncIterator[tuple[DemoServer, str, aiohttp.ClientSession]]:
    demo = await start_demo_upstream("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield demo, demo.url.removesuffix("/v1") + "/v1beta", session
    finally:
        await demo.close()


async def post(gemini_base: tuple[DemoServer, str, aiohttp.ClientSession], body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    _, base, session = gemini_base
    stream = bool(body.get("stream"))
    url = base + GEMINI.path("/chat/completions", "gemini-2.0-flash", stream)
    head = {"Content-Type": "application/json", **GEMINI.auth_headers("demo-key"), **(headers or {})}
    async with session.post(url, data=GEMINI.payload(body, "gemini-2.0-flash"), headers=head) as response:
        return response.status, await response.read()


async def test_demo_answer_and_stream_agree(gemini_base: tuple[DemoServer, str, aiohttp.ClientSession]) -> None:
    body = {"messages": [{"role": "system", "content": "be brief"}, USER], "max_tokens": 5}
    status, raw = await post(gemini_base, body, {"x-demo-tokens": "4"})
    assert status == 200
    whole = GEMINI.answer(orjson.loads(raw), "gemini-flash")
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"]["completion_tokens"] == 4 and whole["usage"]["prompt_tokens"] > 0
    status, raw = await post(gemini_base, {**body, "stream": True}, {"x-demo-tokens": "4"})
    assert status == 200
    chunks, done = decode(raw)
    assert done
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]
    status, raw = await post(gemini_base, {**body, "max_tokens": 2})
    assert GEMINI.answer(orjson.loads(raw), "m")["choices"][0]["finish_reason"] == "length"


async def test_demo_tool_round_trip(gemini_base: tuple[DemoServer, str, aiohttp.ClientSession]) -> None:
    body: dict[str, Any] = {"messages": [USER], "tools": TOOLS}
    status, raw = await post(gemini_base, body)
    assert status == 200
    message = GEMINI.answer(orjson.loads(raw), "m")["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    call = message["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and "city" in orjson.loads(call["function"]["arguments"])
    status, raw = await post(gemini_base, {**body, "stream": True})
    chunks, done = decode(raw)
    assert done and chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"].startswith("call_")
    assert chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == call["function"]["arguments"]
    answered = {**body, "messages": [USER, message["message"], {"role": "tool", "tool_call_id": call["id"],
                                                                  "content": "21C"}]}
    status, raw = await post(gemini_base, answered)
    final = GEMINI.answer(orjson.loads(raw), "m")["choices"][0]
    assert status == 200 and final["finish_reason"] == "stop" and final["message"]["content"]


async def test_demo_errors_and_safety(gemini_base: tuple[DemoServer, str, aiohttp.ClientSession]) -> None:
    status, raw = await post(gemini_base, {"messages": [USER]}, {"x-demo-status": "503"})
    error = orjson.loads(raw)["error"]
    assert status == 503 and error["status"] == "UNAVAILABLE" and error["message"]  # what classify reads
    status, raw = await post(gemini_base, {"messages": [USER], "stream": True}, {"x-demo-gemini-safety": "prompt"})
    first = SSEParser().feed(raw)[0].data
    assert status == 200 and first is not None
    with pytest.raises(InvalidRequest, match=r"blocked the prompt \(SAFETY\)"):
        GEMINI.check_first(first)
    status, raw = await post(gemini_base, {"messages": [USER]}, {"x-demo-gemini-safety": "response"})
    assert GEMINI.answer(orjson.loads(raw), "m")["choices"][0]["finish_reason"] == "content_filter"
