"""The official openai Python client's Responses API and legacy completions against the gateway, on real sockets.

The Responses API is served by translating onto chat completions upstream (the demo upstream here), so
every answer is checked against the chat answer the same conversation gets: same words, same token counts,
same credits. What the gateway does not do (stored responses) must surface as the SDK's own error classes.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from clexproxy.demo.recorder import DemoRecorder

from .conftest import RunningGateway

MODEL = "meta/llama-3.3-70b-instruct"  # large: 3 credits
CHEAP = "meta/llama-3.1-8b-instruct"  # cheap: 1 credit
EMBEDDING = "nvidia/nv-embedqa-e5-v5"  # not a chat model: never flagged for legacy completions
PROMPT = "Hello there!"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


async def chat_text(client: openai.AsyncOpenAI, messages: list[dict[str, Any]], model: str = MODEL) -> str:
    """The chat answer the same conversation gets: what a translated Responses call must say too."""
    completion = await client.chat.completions.create(model=model, messages=messages, stream=False)  # type: ignore[arg-type]
    content = completion.choices[0].message.content
    assert content
    return content


async def test_create_text(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    response = await client.responses.create(model=MODEL, input=PROMPT, instructions="Be brief.", max_output_tokens=50)
    sent = recorder.requests[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert sent["max_tokens"] == 50 and sent["stream"] is False
    expected = await chat_text(client, sent["messages"])
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == MODEL
    assert response.output_text == expected
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert item.content[0].type == "output_text" and item.content[0].text == expected
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (4, 8, 12)
    assert response.instructions == "Be brief." and response.store is False


async def test_create_stream_event_sequence(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    expected = await chat_text(client, [{"role": "user", "content": PROMPT}])
    stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True)
    events = [event async for event in stream]
    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert 1 <= len(deltas) <= 8  # a read's pieces of text go out as one delta: at most one per demo token
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in deltas) == expected
    done = next(event for event in events if event.type == "response.output_text.done")
    assert done.text == expected
    completed = events[-1]
    assert completed.type == "response.completed"
    final = completed.response
    assert final.status == "completed" and final.output_text == expected
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (2, 8)
    assert events[0].type == "response.created" and events[0].response.id == final.id


async def test_stream_helper_final_response(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    expected = await chat_text(client, [{"role": "user", "content": PROMPT}])
    texts: list[str] = []
    async with client.responses.stream(model=MODEL, input=PROMPT) as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(texts) == expected
    assert final.output_text == expected
    assert final.usage is not None and final.usage.output_tokens == 8


async def test_function_tool_round_trip(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = await client.responses.create(model=MODEL, input=[question], tools=[WEATHER_TOOL], tool_choice="auto")
    sent = recorder.requests[-1].body
    assert sent["tools"] == [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER_TOOL["parameters"],
            "strict": True,
        },
    }]
    assert sent["tool_choice"] == "auto"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    call = calls[0]
    assert call.call_id and call.arguments == '{"city":"alpha"}'  # the demo upstream's deterministic call
    assert first.usage is not None and first.usage.output_tokens == 8
    # The client runs the tool and sends the whole conversation back (responses are not stored).
    second = await client.responses.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
    )
    sent = recorder.requests[-1].body
    assert sent["messages"] == [
        question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{
                "id": call.call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"},
    ]
    assert second.status == "completed" and second.output_text
    assert [item.type for item in second.output] == ["message"]


async def test_json_schema_format(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    response = await client.responses.create(
        model=MODEL,
        input=PROMPT,
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}},
    )
    assert recorder.requests[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": True},
    }
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.output_text  # the demo upstream answers words, not JSON: the format is the provider's job


async def test_previous_response_id_is_a_clear_400(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    before = len(recorder.requests)
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=MODEL, input=PROMPT, previous_response_id="resp_123")
    error = info.value.response.json()["error"]
    assert "does not store responses" in error["message"]
    assert error["param"] == "previous_response_id"
    assert len(recorder.requests) == before  # refused before any upstream call
    assert info.value.response.headers["X-Clex-Credits-Remaining"] == "2000"  # nothing charged


async def test_retrieve_is_not_found(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.retrieve("resp_x")
    assert info.value.response.json()["error"]["message"]


async def test_credits_charged_per_call(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    raw = await client.responses.with_raw_response.create(model=MODEL, input=PROMPT)
    assert raw.headers["X-Clex-Credits-Remaining"] == "1997"
    assert raw.headers["X-Clex-Credits-Limit"] == "2000"
    assert raw.headers["x-ratelimit-remaining-requests"] == "199"
    assert raw.parse().output_text
    async with client.responses.with_streaming_response.create(model=MODEL, input=PROMPT, stream=True) as streamed:
        assert streamed.headers["X-Clex-Credits-Remaining"] == "1994"
        assert streamed.headers["Content-Type"].startswith("text/event-stream")
        body = await streamed.read()
    assert b"event: response.completed" in body
    raw = await client.responses.with_raw_response.create(model=CHEAP, input=PROMPT)
    assert raw.headers["X-Clex-Credits-Remaining"] == "1993"


async def test_legacy_completions(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    client = gw.client(key)
    raw = await client.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    completion = raw.parse()
    assert raw.headers["X-Clex-Credits-Remaining"] == "1997"
    assert recorder.requests[-1].path == "/v1/completions"
    assert completion.object == "text_completion"
    text = completion.choices[0].text
    assert len(text.split()) == 5 and completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    stream = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(choice.text for chunk in chunks for choice in chunk.choices) == text


async def test_legacy_completions_refused_for_a_model_not_flagged(
    gw: RunningGateway, key: str, recorder: DemoRecorder
) -> None:
    client = gw.client(key)
    before = len(recorder.requests)
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model=EMBEDDING, prompt="Once upon a time", max_tokens=5)
    error = info.value.response.json()["error"]
    assert EMBEDDING in error["message"]
    assert len(recorder.requests) == before


async def test_streamed_function_call(gw: RunningGateway, key: str) -> None:
    client = gw.client(key)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    async with client.responses.stream(model=MODEL, input=[question], tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
        events = [event async for event in stream]
        final = await stream.get_final_response()
    types = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(deltas) == '{"city":"alpha"}'  # the demo upstream's call, sent in fragments
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"alpha"}'
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 8
