"""Golden tests of the Responses API translation: requests to chat bodies, chat completions to Response objects.

Every answer is also parsed by the openai SDK's own `Response` model, as `client.responses.create` does.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from clexproxy.errors import InvalidRequest
from clexproxy.protocols.chunks import Translation, random_hex
from clexproxy.protocols.responses import ResponsesCall, translate

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def counter_ids() -> Any:
    """Deterministic ids: the prefix and a running number (resp_0, msg_1, ...)."""
    numbers = itertools.count()
    return lambda prefix: f"{prefix}{next(numbers)}"


def test_a_call_is_a_translation() -> None:
    call: Translation = translate({"model": "m", "input": "hi"})
    assert isinstance(call, ResponsesCall)
    assert (call.model, call.stream) == ("m", False)


def test_string_input_and_instructions() -> None:
    call = translate({"model": "meta/llama-3.3-70b-instruct", "input": "Hello!", "instructions": "Be brief.",
                      "stream": True, "max_output_tokens": 50, "temperature": 0.2, "top_p": 1, "store": True,
                      "metadata": {"ticket": "42"}, "user": "u-1"})
    assert call.stream is True
    assert call.body == {
        "model": "meta/llama-3.3-70b-instruct",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        "stream": True,
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 1,
        "user": "u-1",
    }


def test_no_sampling_defaults_and_stream_absent_is_false() -> None:
    assert translate({"model": "m", "input": "hi"}).body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert translate({"model": "m", "input": "hi", "stream": None, "temperature": None}).body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_function_call_round_trip_items() -> None:
    """A second turn: the model's calls (merged into one assistant message) and the client's outputs."""
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "Use the tools."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "get_weather",
             "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "21C"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Paris 18C, Rome 21C.",
                                               "annotations": []}]},
            {"role": "user", "content": "Thanks"},
        ],
    }
    assert translate(body).body["messages"] == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "21C"},
        {"role": "assistant", "content": "Paris 18C, Rome 21C."},
        {"role": "user", "content": "Thanks"},
    ]


def test_a_call_after_assistant_text_joins_that_message() -> None:
    body = {"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]}
    assert translate(body).body["messages"][1] == {
        "role": "assistant", "content": "Let me look.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def test_images() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
    ]}]}
    assert translate(body).body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]


def test_tools_tool_choice_and_parallel_calls() -> None:
    body = {
        "model": "m",
        "input": "Weather?",
        "tools": [{"type": "function", "name": "get_weather", "description": "The weather.", "parameters": WEATHER,
                   "strict": True}, {"type": "function", "name": "now"}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
    }
    chat = translate(body).body
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather.", "parameters": WEATHER,
                                          "strict": True}},
        {"type": "function", "function": {"name": "now"}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    for choice in ("auto", "none", "required"):
        assert translate({**body, "tool_choice": choice}).body["tool_choice"] == choice


def test_parallel_tool_calls_without_tools_is_not_sent() -> None:
    assert "parallel_tool_calls" not in translate({"model": "m", "input": "hi", "parallel_tool_calls": True}).body


def test_text_formats_and_reasoning() -> None:
    schema = {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True, "description": "A city."}
    assert translate({"model": "m", "input": "x", "text": {"format": schema}}).body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER, "strict": True, "description": "A city."},
    }
    assert translate({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}).body[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in translate({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}).body
    body = translate({"model": "m", "input": "x", "reasoning": {"effort": "low", "summary": "auto"},
                      "safety_identifier": "hash-1", "truncation": "disabled", "include": [], "top_logprobs": 0}).body
    assert body["reasoning_effort"] == "low" and body["user"] == "hash-1"
    # Codex's request: `include` names what a stateless gateway never produces; accepted, nothing sent upstream.
    codex = translate({"model": "m", "input": "x", "store": False, "include": ["reasoning.encrypted_content"]}).body
    assert codex == {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}


STATELESS = "This gateway does not store responses: '{}' is not supported; send the whole conversation in 'input'."


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": "hi"}, "model", "Missing required parameter: 'model'."),
        ({"model": 5, "input": "hi"}, "model", "Invalid type for 'model': expected a non-empty string, got number."),
        ({"model": "m"}, "input", "Missing required parameter: 'input'."),
        ({"model": "m", "input": []}, "input", "'input' must be a non-empty string or array."),
        ({"model": "m", "input": 3}, "input", "Invalid type for 'input': expected a string or an array, got number."),
        ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id",
         STATELESS.format("previous_response_id")),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation", STATELESS.format("conversation")),
        ({"model": "m", "input": "hi", "background": True}, "background",
         "'background' is not supported: this gateway does not store responses; send the request with "
         "'background': false (streaming it if it is long)."),
        ({"model": "m", "input": "hi", "truncation": "auto"}, "truncation",
         "Invalid value for 'truncation': only 'disabled' is supported."),
        ({"model": "m", "input": "hi", "include": "reasoning.encrypted_content"}, "include",
         "Invalid type for 'include': expected an array of strings, got string."),
        ({"model": "m", "input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input",
         "'input' holds no message to answer (reasoning items alone are not one)."),
        ({"model": "m", "input": "hi", "top_logprobs": 2}, "top_logprobs",
         "'top_logprobs' is not supported by this gateway."),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream",
         "Invalid type for 'stream': expected a boolean, got string."),
        ({"model": "m", "input": "hi", "temperature": 3}, "temperature",
         "'temperature' must be between 0 and 2, got 3."),
        ({"model": "m", "input": "hi", "top_p": 1.5}, "top_p", "'top_p' must be between 0 and 1, got 1.5."),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens",
         "'max_output_tokens' must be a positive integer, got 0."),
        ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type",
         "Invalid value for 'tools[0].type': 'web_search'. This gateway serves function tools only (type 'function'); "
         "hosted tools such as web_search, file_search and computer_use are not available."),
        ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name",
         "Missing required parameter: 'tools[0].name'."),
        ({"model": "m", "input": "hi", "tool_choice": {"type": "file_search"}}, "tool_choice",
         "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
         "{\"type\": \"function\", \"name\": ...} (this gateway serves function tools only)."),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
         "Missing required parameter: 'text.format.schema'."),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "grammar"}}}, "text.format.type",
         "Invalid value for 'text.format.type': 'grammar'. Supported: text, json_object, json_schema."),
        ({"model": "m", "input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata",
         "'metadata' may hold at most 16 pairs, got 17."),
        ({"model": "m", "input": "hi", "metadata": {"k": 1}}, "metadata",
         "Invalid value for 'metadata.k': keys are strings of at most 64 characters, values strings of at most 512."),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role",
         "Invalid value for 'input[0].role': 'tool'. Supported roles: assistant, developer, system, user."),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type",
         STATELESS.format("input[0].type: item_reference")),
        ({"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type",
         "Invalid value for 'input[0].type': 'web_search_call'. This gateway accepts message, function_call, "
         "function_call_output and reasoning items."),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments",
         "Missing required parameter: 'input[0].arguments'."),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output",
         "Missing required parameter: 'input[0].output'."),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
         "input[0].content[0].file_id",
         "'input[0].content[0].file_id' is not supported: this gateway stores no files; send the image as "
         "'image_url' (a URL or a data: URL)."),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}]},
         "input[0].content[0].type",
         "Invalid value for 'input[0].content[0].type': 'input_file'. Supported content parts: input_text, "
         "output_text, input_image."),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate(body)
    assert caught.value.status == 400
    assert caught.value.body()["error"] == {
        "message": message, "type": "invalid_request_error", "code": "invalid_request_error", "status": 400,
        "param": param}


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON object, got array"):
        translate([])  # type: ignore[arg-type]


def chat_doc(message: dict[str, Any], finish_reason: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": "meta/llama-3.3-70b-instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                  "prompt_tokens_details": {"cached_tokens": 4}},
    }


USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
         "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19}


def echoed(**fields: Any) -> dict[str, Any]:
    return {
        "instructions": None, "metadata": {}, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
        "max_output_tokens": None, "text": {"format": {"type": "text"}}, "reasoning": {"effort": None, "summary": None},
        "truncation": "disabled", "store": False, "background": False, "previous_response_id": None, "user": None,
        "temperature": None, "top_p": None, **fields,
    }


def test_text_answer() -> None:
    call = translate({"model": "meta/llama-3.3-70b-instruct", "input": "hi", "instructions": "Be brief.",
                      "metadata": {"ticket": "42"}, "max_output_tokens": 50})
    call.new_id = counter_ids()
    call.body["temperature"] = 0.7  # the handler's SPEC defaults, added after translate: echoed as sent
    doc = orjson.loads(call.answer(chat_doc({"content": "Hello there."}, "stop")))
    assert doc == {
        "id": "resp_1", "object": "response", "created_at": 1_700_000_000, "status": "completed", "error": None,
        "incomplete_details": None, "model": "meta/llama-3.3-70b-instruct",
        "output": [{"id": "msg_0", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello there.", "annotations": [], "logprobs": []}]}],
        "usage": USAGE,
        **echoed(instructions="Be brief.", metadata={"ticket": "42"}, max_output_tokens=50, temperature=0.7),
    }
    response = Response.model_validate(doc)
    assert response.output_text == "Hello there."


def test_tool_call_answer() -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}
    call = translate({"model": "m", "input": "Weather?", "tools": [tool], "tool_choice": "required"})
    call.new_id = counter_ids()
    doc = orjson.loads(call.answer(chat_doc({"content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
    ]}, "tool_calls")))
    assert doc["status"] == "completed"
    assert doc["output"] == [
        {"id": "fc_0", "type": "function_call", "status": "completed", "call_id": "call_a", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}"},
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_b", "name": "get_weather",
         "arguments": "{\"city\":\"Rome\"}"},
    ]
    assert doc["tools"] == [{**tool, "description": None}] and doc["tool_choice"] == "required"
    response = Response.model_validate(doc)
    assert [item.call_id for item in response.output if item.type == "function_call"] == ["call_a", "call_b"]


@pytest.mark.parametrize(("finish_reason", "reason"), [("length", "max_output_tokens"),
                                                        ("content_filter", "content_filter")])
def test_incomplete_answers(finish_reason: str, reason: str) -> None:
    call = translate({"model": "m", "input": "hi", "max_output_tokens": 7})
    call.new_id = counter_ids()
    doc = orjson.loads(call.answer(chat_doc({"content": "Once upon a"}, finish_reason)))
    assert (doc["status"], doc["incomplete_details"]) == ("incomplete", {"reason": reason})
    assert doc["output"][0]["status"] == "incomplete"
    Response.model_validate(doc)


def test_json_schema_answer_echoes_the_format() -> None:
    text = {"format": {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}}
    call = translate({"model": "m", "input": "x", "text": text})
    doc = orjson.loads(call.answer(chat_doc({"content": "{\"city\":\"Paris\"}"}, "stop")))
    assert doc["text"] == text
    assert doc["id"].startswith("resp_") and len(doc["id"]) == 5 + 32
    assert doc["output"][0]["id"].startswith("msg_") and len(doc["output"][0]["id"]) == 4 + 32
    Response.model_validate(doc)


def test_answer_ids_are_hex_of_their_length_and_differ_across_forked_workers() -> None:
    """The ids' generator is seeded once per process: a worker forked from the supervisor draws its own."""
    ids = {random_hex(32) for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(random_hex(24)) == 24
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, random_hex(32).encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(theirs) == 32 and theirs != random_hex(32)
