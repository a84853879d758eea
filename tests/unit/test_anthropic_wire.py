"""Golden tests of the ``anthropic`` provider format (`ANTHROPIC`): chat body → Messages body, Messages answer and
stream → chat completion and chunks, every refusal; then the same translation against the demo upstream's
``/v1/messages`` on a real socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from clexproxy.demo.upstream import DemoServer
from clexproxy.errors import InvalidRequest
from clexproxy.fastpath.sse import SSEParser
from clexproxy.handlers.validation import CHAT_DEFAULTS
from clexproxy.protocols.anthropic_wire import ANTHROPIC, DEFAULT_MAX_TOKENS, SPEC_DEFAULTS
from clexproxy.protocols.chunks import Chunk, UpstreamEventError

MODEL = "claude-x"  # the catalog id chunks carry
UPSTREAM = "claude-upstream"  # the deployment's model name the provider sees


def payload(**body: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(ANTHROPIC.payload(body, UPSTREAM))
    return loaded


def refusal(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        ANTHROPIC.payload({"messages": [{"role": "user", "content": "hi"}], **body}, UPSTREAM)
    return caught.value


def without_created(doc: Chunk) -> Chunk:
    assert isinstance(doc.pop("created"), int)
    return doc


def decode(raw: bytes, model_id: str = MODEL) -> tuple[list[Chunk], bool]:
    decoder = ANTHROPIC.decoder(model_id)
    chunks: list[Chunk] = []
    for event in SSEParser().feed(raw):
        chunks.extend(decoder.feed(event))
    chunks.extend(decoder.close())
    return [without_created(chunk) for chunk in chunks], decoder.done


# ---- the request ---------------------------------------------------------------------------------------------


def test_path_and_headers() -> None:
    assert ANTHROPIC.name == "anthropic"
    assert ANTHROPIC.path("/chat/completions", UPSTREAM, True) == "/messages"
    assert ANTHROPIC.path("/chat/completions", UPSTREAM, False) == "/messages"
    assert ANTHROPIC.auth_headers("sk-ant-1") == {"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01"}
    for endpoint in ("/completions", "/embeddings"):
        with pytest.raises(InvalidRequest):
            ANTHROPIC.path(endpoint, UPSTREAM, False)


def test_text_with_system_and_spec_defaults() -> None:
    body = payload(
        model="claude-x",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": "hi", "name": "ann"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
        top_p=0.9,
        store=False,
        metadata={"k": "v"},
    )
    assert body == {
        "model": UPSTREAM,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
        "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "and kind"}],
        "temperature": 0.7,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7}),  # SPEC's defaults only
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),  # the client set temperature
        ({"temperature": 0.7, "top_p": 0.5}, {"top_p": 0.5}),  # the client set top_p
        ({"temperature": 0.2, "top_p": 0.5}, {"temperature": 0.2, "top_p": 0.5}),  # both: sent as asked
        ({"top_p": 0.9}, {"top_p": 0.9}),  # a model without SPEC's defaults
        ({"temperature": 1, "top_k": 3}, {"temperature": 1, "top_k": 3}),
    ],
)
def test_temperature_and_top_p_are_never_both_defaults(asked: dict[str, Any], sent: dict[str, Any]) -> None:
    """Anthropic's current models refuse both in one call; SPEC's defaults must not cause that refusal."""
    body = payload(messages=[{"role": "user", "content": "hi"}], **asked)
    assert {name: body[name] for name in ("temperature", "top_p", "top_k") if name in body} == sent


def test_spec_defaults_are_the_chat_handlers() -> None:
    assert dict(CHAT_DEFAULTS) == SPEC_DEFAULTS


def test_sampling_limits_and_user() -> None:
    body = payload(messages=[{"role": "user", "content": "hi"}], max_tokens=50, max_completion_tokens=20,
                   stop="END", top_k=5, user="u-1", n=1, logprobs=False, stream=False)
    assert body == {
        "model": UPSTREAM,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "stream": False,
    }
    assert payload(messages=[{"role": "user", "content": "hi"}], max_tokens=7, stop=["a", "", "b"]) == {
        "model": UPSTREAM, "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["a", "b"], "stream": False,
    }


def test_images_base64_and_url() -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    assert payload(messages=[{"role": "user", "content": content}])["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_and_a_parallel_tool_round_trip() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "thanks, and?"},
    ]
    no_params = {"type": "function", "function": {"name": "now"}}
    body = payload(messages=messages, tools=[WEATHER_TOOL, no_params], tool_choice="auto")
    assert body == {
        "model": UPSTREAM,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
                    {"type": "text", "text": "thanks, and?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "auto"},
        "stream": False,
    }


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
        (None, None, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    extra: dict[str, Any] = {"tool_choice": choice, "parallel_tool_calls": parallel}
    body = payload(messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], **extra)
    assert body.get("tool_choice") == expected
    no_tools = payload(messages=[{"role": "user", "content": "hi"}], tool_choice="auto")
    assert "tool_choice" not in no_tools and "tools" not in no_tools


def test_assistant_text_merges_and_empty_text_is_left_out() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "refusal", "refusal": "no"}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": ""},
    ]
    assert payload(messages=messages)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "no"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]},
    ]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"n": 2}, "n", "'n' is not supported by this model's provider."),
        ({"logprobs": True}, "logprobs", "'logprobs' is not supported by this model's provider."),
        ({"top_logprobs": 3}, "top_logprobs", "'top_logprobs' is not supported"),
        ({"seed": 7}, "seed", "'seed' is not supported by this model's provider."),
        ({"presence_penalty": 0.5}, "presence_penalty", "'presence_penalty' is not supported"),
        ({"frequency_penalty": 1}, "frequency_penalty", "'frequency_penalty' is not supported"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "'logit_bias' is not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "'response_format' is not supported"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format",
         "'response_format' is not supported"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "'reasoning_effort' is not supported"),
        ({"functions": [{"name": "f"}]}, "functions", "'functions' is not supported"),
        ({"audio": {"voice": "alloy"}}, "audio", "'audio' is not supported"),
        ({"temperature": 1.5}, "temperature", "'temperature' must be between 0 and 1 for this model's provider"),
        ({"stop": 3}, "stop", "'stop' must be a string or an array of strings."),
        ({"user": 3}, "user", "Invalid type for 'user'"),
        ({"tool_choice": "required"}, "tool_choice", "'tool_choice' requires 'tools'."),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice", "'tool_choice' must be"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'tools[0].type' must be 'function'"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
         "tools[0].function.parameters", "Invalid type for 'tools[0].function.parameters'"),
    ],
)
def test_what_the_provider_cannot_honour_is_a_400_naming_the_field(
    body: dict[str, Any], param: str, words: str
) -> None:
    error = refusal(**body)
    assert error.status == 400 and error.extra == {"param": param}
    assert error.message.startswith(words)


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "function", "name": "f", "content": "x"}, "messages[0].role"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "messages[0].content[0].type"),
        ({"role": "user", "content": [{"type": "text", "text": 1}]}, "messages[0].content[0].text"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}}]},
         "messages[0].content[0].image_url.url"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]},
         "messages[0].content[0].image_url.url"),
        ({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
         "messages[0].content[0].type"),
        ({"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "[1]"}}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
         "messages[0].tool_calls[0].id"),
        ({"role": "system", "content": "only a system message"}, "messages"),
    ],
)
def test_malformed_messages_name_the_field(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ANTHROPIC.payload({"messages": [message]}, UPSTREAM)
    assert caught.value.extra == {"param": param}


# ---- the JSON answer -----------------------------------------------------------------------------------------


def test_answer_text() -> None:
    doc = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-upstream",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
    assert without_created(ANTHROPIC.answer(doc, MODEL)) == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }


def test_answer_tool_use_with_cached_input() -> None:
    doc = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100,
                  "output_tokens": 30},
    }
    assert without_created(ANTHROPIC.answer(doc, MODEL)) == {
        "id": "msg_2",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "toolu_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
                ],
            },
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 115, "completion_tokens": 30, "total_tokens": 145,
                  "prompt_tokens_details": {"cached_tokens": 100}},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("pause_turn", "stop"), (None, "stop")],
)
def test_answer_stop_reasons(stop_reason: str | None, finish: str) -> None:
    usage = {"input_tokens": 1, "output_tokens": 0}
    doc: dict[str, Any] = {"id": "m", "content": [], "stop_reason": stop_reason, "usage": usage}
    chat = ANTHROPIC.answer(doc, MODEL)
    assert chat["choices"][0]["finish_reason"] == finish and chat["choices"][0]["message"]["content"] == ""


# ---- the stream ----------------------------------------------------------------------------------------------

# The vendor's tool-use stream, framed as the API sends it (a text block, then two tool_use blocks).
TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-upstream","stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"Paris\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_02","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"Rome\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501


def chunk(delta: dict[str, Any], finish: str | None = None, id_: str = "msg_014p7gG3wDgGV9EUtLvnow3U") -> Chunk:
    return {"id": id_, "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_text_and_parallel_tool_calls() -> None:
    chunks, done = decode(TOOL_STREAM)
    assert done
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Okay"}),
        chunk({"content": ","}),
        chunk({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"location": "Rome"}'}}]}),
        chunk({}, "tool_calls"),
        {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
         "usage": {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}},
    ]


def test_stream_cut_before_message_stop_is_not_done() -> None:
    cut = TOOL_STREAM[: TOOL_STREAM.index(b"event: message_delta")]
    chunks, done = decode(cut)
    assert not done and len(chunks) == 8 and all(c["choices"] for c in chunks)


def test_stream_error_event_raises_with_its_error_object() -> None:
    raw = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}\n\n'
           b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n')
    decoder = ANTHROPIC.decoder(MODEL)
    events = SSEParser().feed(raw)
    assert len(decoder.feed(events[0])) == 1
    with pytest.raises(UpstreamEventError) as caught:
        decoder.feed(events[1])
    assert caught.value.error == {"type": "overloaded_error", "message": "Overloaded"}
    ANTHROPIC.check_first(events[0].data or b"")  # a Messages stream's first event is never a refusal


def test_stream_ignores_ping_thinking_and_unknown_events() -> None:
    raw = (b'event: ping\ndata: {"type": "ping"}\n\n'
           b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
           b'"content_block":{"type":"thinking","thinking":""}}\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"thinking_delta","thinking":"so"}}\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"signature_delta","signature":"x"}}\n\n'
           b'event: future_event\ndata: {"type":"future_event"}\n\n')
    assert decode(raw) == ([], False)


# ---- on a real socket: the demo upstream's /v1/messages --------------------------------------------------------


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def send(session: aiohttp.ClientSession, server: DemoServer, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    url = server.url + ANTHROPIC.path("/chat/completions", UPSTREAM, bool(body.get("stream")))
    head = {"Content-Type": "application/json", **ANTHROPIC.auth_headers("sk-ant-test"), **(headers or {})}
    async with session.post(url, data=ANTHROPIC.payload(body, UPSTREAM), headers=head) as response:
        return response.status, await response.read()


CHAT = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}],
        "temperature": 0.7, "top_p": 0.9}


async def test_demo_json_and_stream_agree(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, raw = await send(session, upstream, {**CHAT, "stream": False})
    assert status == 200
    chat = ANTHROPIC.answer(orjson.loads(raw), MODEL)
    assert chat["model"] == MODEL and chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    recorded = upstream.recorder.requests[0]
    assert recorded.path == "/v1/messages" and recorded.headers["x-api-key"] == "sk-ant-test"
    assert "Authorization" not in recorded.headers

    status, raw = await send(session, upstream, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    chunks, done = decode(raw)
    assert done
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == chat["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == chat["usage"] and chunks[-1]["choices"] == []


async def test_demo_max_tokens_is_length(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, raw = await send(session, upstream, {**CHAT, "max_tokens": 3})
    chat = ANTHROPIC.answer(orjson.loads(raw), MODEL)
    assert status == 200 and chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"]["completion_tokens"] == 3


async def test_demo_tool_call_round_trip(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    asked: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    ask: dict[str, Any] = {"messages": asked, "tools": [WEATHER_TOOL]}
    status, raw = await send(session, upstream, ask)
    chat = ANTHROPIC.answer(orjson.loads(raw), MODEL)
    assert status == 200 and chat["choices"][0]["finish_reason"] == "tool_calls"
    message = chat["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert set(orjson.loads(call["function"]["arguments"])) == {"city"}

    _, raw = await send(session, upstream, {**ask, "stream": True})
    chunks, done = decode(raw)
    assert done and chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    streamed = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and
                "tool_calls" in c["choices"][0]["delta"]]
    assert streamed[0] == {"index": 0, "id": streamed[0]["id"], "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}
    assert streamed[0]["id"].startswith("toolu_") and len(streamed) == 3  # the head, then two fragments
    assert "".join(s["function"]["arguments"] for s in streamed) == call["function"]["arguments"]

    answered = {"messages": [*asked, message, {"role": "tool", "tool_call_id": call["id"],
                                                          "content": "sunny"}], "tools": [WEATHER_TOOL]}
    status, raw = await send(session, upstream, answered)
    final = ANTHROPIC.answer(orjson.loads(raw), MODEL)
    assert status == 200 and final["choices"][0]["finish_reason"] == "stop"
    assert isinstance(final["choices"][0]["message"]["content"], str)
    assert final["usage"]["prompt_tokens"] == 4  # weather in Paris? / sunny


async def test_demo_in_stream_error_event_raises(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, raw = await send(session, upstream, {**CHAT, "stream": True}, {"x-demo-anthropic-error-after": "2"})
    assert status == 200
    decoder = ANTHROPIC.decoder(MODEL)
    events = SSEParser().feed(raw)
    chunks = [chunk for event in events[:-1] for chunk in decoder.feed(event)]
    assert [list(c["choices"][0]["delta"]) for c in chunks] == [["role", "content"], ["content"], ["content"]]
    with pytest.raises(UpstreamEventError) as caught:
        decoder.feed(events[-1])
    assert caught.value.error == {"type": "overloaded_error", "message": "Overloaded"} and not decoder.done

    status, raw = await send(session, upstream, {**CHAT, "stream": True}, {"x-demo-anthropic-error-after": "0"})
    (event,) = SSEParser().feed(raw)
    assert event.event == b"error"
    with pytest.raises(UpstreamEventError):
        ANTHROPIC.decoder(MODEL).feed(event)


async def test_demo_overloaded_error_carries_a_message(session: aiohttp.ClientSession, upstream: DemoServer) -> None:
    status, raw = await send(session, upstream, CHAT, {"x-demo-status": "529"})
    assert status == 529
    assert orjson.loads(raw)["error"] == {"type": "overloaded_error", "message": "Overloaded"}
