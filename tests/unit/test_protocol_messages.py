"""Golden tests of the Anthropic Messages ingress translation: Messages requests → chat bodies (every rule and every
400 with the field it names), chat completions → Anthropic `message` objects (checked with the anthropic SDK's own
pydantic types), and Anthropic's error shape for each status.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message
from pydantic import TypeAdapter

from clexproxy.errors import (
    ApiError,
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    ServiceUnavailable,
)
from clexproxy.protocols.messages import MessagesCall, count_tokens, error_body, translate
from clexproxy.protocols.messages_stream import MessagesEncoder

MODEL = "meta/llama-3.1-8b-instruct"
HI: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MESSAGE = TypeAdapter(Message)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": HI, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return translate(body(**fields)).body


# --- requests → chat bodies -------------------------------------------------------------------------------------


def test_minimal_call() -> None:
    call = translate(body())
    assert isinstance(call, MessagesCall)
    assert (call.model, call.stream) == (MODEL, False)
    assert call.body == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100,
                         "stream": False}
    assert isinstance(call.encoder(), MessagesEncoder)


def test_stream_asks_for_usage() -> None:
    call = translate(body(stream=True))
    assert call.stream is True
    assert call.body == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100,
                         "stream": True, "stream_options": {"include_usage": True}}


def test_system_string_and_blocks() -> None:
    assert chat(system="Be brief.")["messages"] == [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hi"}]
    blocks = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Be kind."}]
    assert chat(system=blocks)["messages"] == [{"role": "system", "content": "Be brief.\nBe kind."},
                                               {"role": "user", "content": "Hi"}]
    assert chat(system="")["messages"] == [{"role": "user", "content": "Hi"}]


def test_sampling_and_other_fields() -> None:
    sent = chat(stop_sequences=["END", "STOP"], temperature=0.5, top_p=0.9, top_k=40,
                metadata={"user_id": "user-7"}, thinking={"type": "enabled", "budget_tokens": 2048},
                service_tier="auto", something_new={"x": 1})
    assert sent == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100,
                    "stream": False, "stop": ["END", "STOP"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                    "user": "user-7"}
    assert chat(stop_sequences=[], metadata={}) == chat()


def test_images_base64_and_url() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?", "cache_control": {"type": "ephemeral"}},
    ]
    assert chat(messages=[{"role": "user", "content": content}])["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]}]


def test_tool_use_and_tool_result_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "station"}, {"type": "text", "text": "offline"}]},
        ]},
    ]
    assert chat(messages=messages, tools=[WEATHER])["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "station\noffline"},
        {"role": "user", "content": "Here you go."},
    ]


def test_tool_result_alone_and_with_an_image() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}}
    messages = [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "plot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "plot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2",
                                      "content": [{"type": "text", "text": "done"}, image]}]},
    ]
    call = {"type": "function", "function": {"name": "plot", "arguments": "{}"}}
    assert chat(messages=messages)["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", **call}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t2", **call}]},
        {"role": "tool", "tool_call_id": "t2", "content": "done"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}}]},
    ]


def test_tools_and_tool_choice_variants() -> None:
    function = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                 "parameters": WEATHER["input_schema"]}}
    assert chat(tools=[{**WEATHER, "type": "custom", "cache_control": {"type": "ephemeral"}}])["tools"] == [function]
    bare = {"name": "noop", "input_schema": {"type": "object"}}
    assert chat(tools=[bare])["tools"] == [{"type": "function",
                                            "function": {"name": "noop", "parameters": {"type": "object"}}}]
    choices = {
        "auto": {"tool_choice": "auto"},
        "any": {"tool_choice": "required"},
        "none": {"tool_choice": "none"},
    }
    for kind, expected in choices.items():
        sent = chat(tools=[WEATHER], tool_choice={"type": kind})
        assert {name: sent[name] for name in ("tool_choice",)} == expected
        assert "parallel_tool_calls" not in sent
    sent = chat(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == (
        {"type": "function", "function": {"name": "get_weather"}}, False)
    sent = chat(tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    sent = chat(tools=[WEATHER], tool_choice={"type": "none", "disable_parallel_tool_use": True})
    assert "parallel_tool_calls" not in sent
    assert "tools" not in chat(tools=[])


BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({"model": None}, "model", "model: Field required (a string)"),
    ({"max_tokens": None}, "max_tokens", "max_tokens: Field required"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens: Input should be a positive integer"),
    ({"max_tokens": 1.5}, "max_tokens", "max_tokens: Input should be a positive integer"),
    ({"max_tokens": True}, "max_tokens", "max_tokens: Input should be a positive integer"),
    ({"messages": []}, "messages", "messages: Field required (a non-empty list of messages)"),
    ({"messages": "hi"}, "messages", "messages: Field required (a non-empty list of messages)"),
    ({"messages": ["hi"]}, "messages.0", "messages.0: Input should be an object"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role",
     "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "messages.0.content: Field required"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "messages.0.content: Input should be a valid string or list of content blocks"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0",
     "messages.0.content.0: Input should be a content block with a type"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0",
     "messages.0.content.0.text: Field required (a string)"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.0.type",
     "messages.0.content.0.type: 'document' blocks are not supported in a user message here "
     "(text, image, tool_result)"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages.0.content.0.type",
     "messages.0.content.0.type: 'tool_use' blocks are not supported in a user message here "
     "(text, image, tool_result)"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content.0.type",
     "messages.0.content.0.type: 'image' blocks are not supported in an assistant message here (text, tool_use)"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "messages.0.content.0.source",
     "messages.0.content.0.source: Field required (an object)"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages.0.content.0.source.type", "messages.0.content.0.source.type: Input should be 'base64' or 'url'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]},
     "messages.0.content.0.source.media_type", "messages.0.content.0.source.media_type: Field required"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]},
     "messages.0.content.0.source.data", "messages.0.content.0.source.data: Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]},
     "messages.0.content.0.source.url", "messages.0.content.0.source.url: Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
     "messages.0.content.0.tool_use_id", "messages.0.content.0.tool_use_id: Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "document"}]}]}]},
     "messages.0.content.0.content.0.type",
     "messages.0.content.0.content.0.type: 'document' is not supported in a tool_result here (text and image only)"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]},
     "messages.0.content.0.id", "messages.0.content.0.id: Field required"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]}]},
     "messages.0.content.0.name", "messages.0.content.0.name: Field required"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}]}]},
     "messages.0.content.0.input", "messages.0.content.0.input: Input should be an object"),
    ({"system": 5}, "system", "system: Input should be a valid string or list of text blocks"),
    ({"system": [{"type": "image"}]}, "system.0.type", "system.0.type: Input should be 'text'"),
    ({"tools": {"name": "f"}}, "tools", "tools: Input should be a valid list"),
    ({"tools": ["f"]}, "tools.0", "tools.0: Input should be an object"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type",
     "tools.0.type: server tools ('web_search_20250305') are not supported; only custom tools "
     "(name, description, input_schema) are"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type",
     "tools.0.type: server tools ('bash_20250124') are not supported; only custom tools "
     "(name, description, input_schema) are"),
    ({"tools": [{"input_schema": {}}]}, "tools.0.name", "tools.0.name: Field required"),
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema", "tools.0.input_schema: Field required (a JSON schema object)"),
    ({"tools": [{"name": "f", "input_schema": {}, "description": 3}]}, "tools.0.description",
     "tools.0.description: Input should be a valid string"),
    ({"tool_choice": "auto"}, "tool_choice", "tool_choice: Input should be an object with a type"),
    ({"tool_choice": {"type": "required"}}, "tool_choice.type",
     "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name", "tool_choice.name: Field required"),
    ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}, "tool_choice.disable_parallel_tool_use",
     "tool_choice.disable_parallel_tool_use: Input should be a valid boolean"),
    ({"stop_sequences": "END"}, "stop_sequences", "stop_sequences: Input should be a valid list of strings"),
    ({"temperature": 1.5}, "temperature", "temperature: Input should be between 0 and 1"),
    ({"temperature": "hot"}, "temperature", "temperature: Input should be a valid number"),
    ({"top_p": -0.1}, "top_p", "top_p: Input should be between 0 and 1"),
    ({"top_k": -1}, "top_k", "top_k: Input should be a non-negative integer"),
    ({"top_k": 2.5}, "top_k", "top_k: Input should be a non-negative integer"),
    ({"metadata": "x"}, "metadata", "metadata: Input should be an object"),
    ({"metadata": {"user_id": 7}}, "metadata.user_id", "metadata.user_id: Input should be a valid string"),
    ({"stream": "yes"}, "stream", "stream: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("fields", "param", "message"), BAD_REQUESTS, ids=[case[1] for case in BAD_REQUESTS])
def test_every_refusal_names_its_field(fields: dict[str, Any], param: str, message: str) -> None:
    request = {name: value for name, value in body(**fields).items() if value is not None}
    with pytest.raises(InvalidRequest) as caught:
        translate(request)
    assert caught.value.status == 400
    assert (caught.value.message, caught.value.extra) == (message, {"param": param})


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate([])  # type: ignore[arg-type]
    assert caught.value.extra == {"param": "body"}


# --- chat completions → Anthropic messages ----------------------------------------------------------------------


def completion(message: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}


def answer(doc: dict[str, Any]) -> dict[str, Any]:
    raw = translate(body()).answer(doc)
    message = orjson.loads(raw)
    MESSAGE.validate_json(raw)  # the SDK's own model of a Message accepts it
    assert message.pop("id").startswith("msg_")
    return dict(message)


USAGE = {"input_tokens": 12, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def test_text_answer() -> None:
    assert answer(completion({"role": "assistant", "content": "Hello!"}, "stop")) == {
        "type": "message", "role": "assistant", "model": MODEL, "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": USAGE}


def test_tool_calls_answer() -> None:
    reply = {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}},
    ]}
    assert answer(completion(reply, "tool_calls")) == {
        "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": USAGE}


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                               ("tool_calls", "tool_use"), ("content_filter", "refusal"),
                                               (None, "end_turn"), ("weird", "end_turn")])
def test_stop_reasons(finish: str | None, stop: str) -> None:
    assert answer(completion({"role": "assistant", "content": "x"}, finish))["stop_reason"] == stop


def test_empty_and_odd_answers_never_crash() -> None:
    empty = answer(completion({"role": "assistant", "content": None}, "stop"))
    assert empty["content"] == []
    odd = answer({"choices": [], "model": 7})
    assert odd == {"type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": {**USAGE, "input_tokens": 0, "output_tokens": 0}}


# --- Anthropic's error shape -----------------------------------------------------------------------------------


class PaymentRequired(ApiError):
    status = 402


class Overloaded529(ApiError):
    status = 529


class Gateway502(ApiError):
    status = 502


ERRORS: list[tuple[ApiError, str]] = [
    (InvalidRequest("max_tokens: Field required", extra={"param": "max_tokens"}), "invalid_request_error"),
    (AuthenticationFailed("Invalid API key."), "authentication_error"),
    (PaymentRequired("Pay up."), "billing_error"),
    (PermissionDenied("Not this model.", reason="model_not_allowed"), "permission_error"),
    (ModelNotFound("model: nope"), "not_found_error"),
    (MethodNotAllowed("POST JSON."), "invalid_request_error"),
    (RequestTooLarge("Too large."), "request_too_large"),
    (RateLimited("Slow down.", limit="requests_per_minute", retry_after=2), "rate_limit_error"),
    (InternalError("Oops."), "api_error"),
    (Gateway502("Bad gateway."), "api_error"),
    (ServiceUnavailable("Overloaded."), "overloaded_error"),
    (Overloaded529("Overloaded."), "overloaded_error"),
]


@pytest.mark.parametrize(("error", "kind"), ERRORS, ids=[str(error.status) for error, _ in ERRORS])
def test_error_body_per_status(error: ApiError, kind: str) -> None:
    assert orjson.loads(error_body(error)) == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_error_body_bytes() -> None:
    assert error_body(InvalidRequest("max_tokens: Field required")) == (
        b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}')


# --- count_tokens -----------------------------------------------------------------------------------------------


def test_count_tokens_validates_like_translate() -> None:
    with pytest.raises(InvalidRequest) as caught:
        count_tokens({"messages": HI})
    assert caught.value.extra == {"param": "model"}
    with pytest.raises(InvalidRequest) as caught:
        count_tokens({"model": MODEL, "messages": HI, "tools": [{"type": "bash_20250124", "name": "bash"}]})
    assert caught.value.extra == {"param": "tools.0.type"}
    assert count_tokens({"model": MODEL, "messages": HI}) > 0  # max_tokens is not asked for
